"""Motion facts from synthetic keypoint tracks: limbs, directions, raises, bends, turns, crouches, repetitions."""

from __future__ import annotations

import math

import numpy as np

from stages.pose.motion_facts import describe_motion, episodes
from fixtures_pose import FPS, Scripted, box_of, person, run, skeleton


def facts(poses: list[np.ndarray], to_first=None, scores=None):
    kp = np.stack(poses)
    n = len(kp)
    s = np.full((n, 17), 0.9) if scores is None else scores
    boxes = np.stack([box_of(k) for k in kp])
    return describe_motion([t / FPS for t in range(n)], kp, s, np.ones(n, bool), boxes, to_first, 0.5)


def find(events, **match):
    return [e for e in events if all(e[k] == v for k, v in match.items())]


def test_waving_the_left_arm_three_times():
    poses = [skeleton(160, 20, 200, left_arm=110 + 60 * math.sin(2 * math.pi * t / 6)) for t in range(18)]
    events, sentences = facts(poses)
    (arm,) = find(events, part="left arm", action="moves")
    assert (arm["direction"], arm["count"]) == ("up and down", 3)
    assert not find(events, part="right arm", action="moves")
    assert "left arm moves up and down 3 times" in " | ".join(sentences)


def test_raising_the_right_hand_above_the_head_then_lowering_it():
    angles = [10] * 4 + [60, 120, 175, 175, 175, 120, 60] + [10] * 4
    events, sentences = facts([skeleton(160, 20, 200, right_arm=a) for a in angles])
    (up,) = find(events, part="right hand", action="raises")
    (down,) = find(events, part="right hand", action="lowers")
    assert up["direction"] == "above the head" and up["start_s"] < down["start_s"]
    assert 0.8 <= up["start_s"] <= 1.2 and 1.6 <= down["start_s"] <= 2.2
    (arm,) = find(events, part="right arm", action="moves")
    assert arm["direction"] == "up and down" and arm["count"] == 1  # there and back once
    assert any(s.startswith("raises the right hand above the head") for s in sentences)


def test_arm_raised_sideways_only_to_the_shoulder():
    angles = [10] * 3 + [50, 95, 100, 100, 100, 100]
    events, _ = facts([skeleton(160, 20, 200, left_arm=a) for a in angles])
    (up,) = find(events, part="left hand", action="raises")
    assert up["direction"] == "above the shoulder"
    (arm,) = find(events, part="left arm", action="moves")
    assert arm["direction"] == "up" and arm["count"] == 1  # it stays up: a net direction


def test_repeated_elbow_bends_are_counted():
    poses = [skeleton(160, 20, 200, left_arm=20, left_elbow=0 if t % 4 < 2 else 120) for t in range(16)]
    events, _ = facts(poses)
    (bend,) = find(events, part="left elbow", action="bends")
    assert bend["count"] == 4


def test_crouching_and_standing_up():
    crouch = [0, 0, 0, 0.5, 1, 1, 1, 1, 0.5, 0, 0, 0]
    events, sentences = facts([skeleton(160, 20, 200, crouch=c) for c in crouch])
    (down,) = find(events, action="crouches")
    (up,) = find(events, action="stands up")
    assert down["start_s"] < up["start_s"]
    assert "crouches" in " ".join(sentences)


def test_turning_around():
    facing = [1, 1, 1, 0.6, 0, -0.6, -1, -1, -1]
    events, sentences = facts([skeleton(160, 20, 200, facing=f) for f in facing])
    assert find(events, action="faces", direction="facing the camera")
    turns = [e["direction"] for e in find(events, action="turns")]
    assert turns == ["sideways", "away from the camera"]
    events, _ = facts([skeleton(160, 20, 200, facing=f) for f in [1, 1, 1, -1, -1, -1]])
    assert [e["direction"] for e in find(events, action="turns")] == ["around"]


def test_walking_across_the_frame_and_closer():
    events, _ = facts([skeleton(60 + 15 * t, 20, 200) for t in range(12)])
    (walk,) = find(events, part="body", action="moves")
    assert walk["direction"] == "toward the right of the frame"
    events, _ = facts([skeleton(160, 20 - 4 * t, 100 + 10 * t) for t in range(10)])
    assert find(events, part="body", action="moves", direction="closer to the camera")


def test_a_camera_that_follows_the_walker_does_not_hide_the_walk():
    """The person stays in the middle of the picture; the camera pans with them (the background moves left)."""
    n = 12
    to_first = [np.array([[1, 0, 15.0 * t], [0, 1, 0], [0, 0, 1]]) for t in range(n)]  # frame t -> frame 0 pixels
    events, _ = facts([skeleton(160, 20, 200) for _ in range(n)], to_first=to_first)
    assert find(events, part="body", action="moves", direction="toward the right of the frame")
    events, sentences = facts([skeleton(160, 20, 200) for _ in range(n)])
    assert sentences == ["starts facing the camera (at 0.0 s)", "stays still (0.0-2.2 s)"]


def test_jumping_jacks_counts_jumps_and_arm_cycles():
    poses = []
    for t in range(20):
        up = t % 4 in (1, 2)
        poses.append(skeleton(160, 40 - (35 if up else 0), 180, left_arm=170 if up else 10, right_arm=170 if up else 10))
    events, _ = facts(poses)
    (jumps,) = find(events, action="jumps")
    assert jumps["count"] == 5
    (arms,) = find(events, part="left hand", action="raises")
    assert arms["count"] == 5


def test_occluded_limbs_give_no_facts_and_output_is_deterministic():
    poses = [skeleton(160, 20, 200, left_arm=110 + 60 * math.sin(t)) for t in range(12)]
    scores = np.full((12, 17), 0.9)
    scores[:, [7, 9]] = 0.1  # the waving arm is hidden
    events, _ = facts(poses, scores=scores)
    assert not find(events, part="left arm") and not find(events, part="left hand")
    assert facts(poses) == facts(poses)


def test_episodes_hysteresis():
    x = np.array([0, 0.5, 1.0, 0.7, 0.9, 0.2, np.nan, 1.0, 0.0])
    assert episodes(x, 0.8, 0.3) == [(2, 5), (7, 8)]
    assert episodes(np.array([1.0, 1.0, 0.0]), 0.8, 0.3) == [(0, 2)]
    assert episodes(np.array([0.0, 1.0]), 0.8, 0.3) == [(1, None)]


def test_the_stage_stores_facts_and_events():
    poses = [[person(skeleton(160, 20, 200, left_arm=110 + 60 * math.sin(2 * math.pi * t / 5)))] for t in range(15)]
    clip = run(Scripted(poses))
    c = clip.columns
    assert any("left arm moves up and down 3 times" in s for s in c["pose_motion_facts"])
    assert find(c["pose_motion_events"], part="left arm", count=3)
    clip = run(Scripted(poses), motion_facts=False)
    assert "pose_motion_facts" not in clip.columns
