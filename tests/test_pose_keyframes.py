"""M-ACM's keyframe sampling (papers_spec §3.4): the properties of the rule, and the stage's use of it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.pose.keyframes import keyframe_sequence, normalise_poses, pose_distances, pose_keyframes, select_keyframes
from fixtures_pose import FPS, Scripted, person, run, skeleton


def random_distances(rng, n: int) -> np.ndarray:
    points = rng.normal(size=(n, 6))
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


@pytest.mark.parametrize("seed", range(25))
def test_the_rule_holds_on_random_distance_matrices(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    k = int(rng.integers(1, 12))
    d = random_distances(rng, n)
    seq = keyframe_sequence(d, k)
    assert len(seq) == min(k, n) and len(set(seq)) == len(seq)
    assert seq[0] == int(np.argmax(d.mean(axis=1)))  # k1: largest mean distance to all frames
    for prev, nxt in zip(seq, seq[1:]):  # then: the frame farthest from the previous keyframe, among the rest
        rest = [t for t in range(n) if t not in seq[: seq.index(nxt)]]
        assert d[prev, nxt] == pytest.approx(max(d[prev, t] for t in rest))
    assert select_keyframes(d, k) == sorted(seq)  # returned in time order
    assert select_keyframes(d, k) == select_keyframes(d.copy(), k)  # deterministic


def test_k_larger_than_the_clip_and_k_zero():
    d = random_distances(np.random.default_rng(0), 5)
    assert select_keyframes(d, 8) == [0, 1, 2, 3, 4]
    assert select_keyframes(d, 0) == []
    assert select_keyframes(np.zeros((0, 0)), 3) == []


def test_still_poses_spread_the_keyframes_over_time():
    assert keyframe_sequence(np.zeros((21, 21)), 3) == [0, 20, 10]
    assert select_keyframes(np.zeros((30, 30)), 4) == [0, 8, 15, 29] or \
        np.diff(select_keyframes(np.zeros((30, 30)), 4)).min() >= 7


def test_frames_without_the_person_are_chosen_only_to_fill_k():
    d = random_distances(np.random.default_rng(1), 12)
    candidates = np.zeros(12, bool)
    candidates[[2, 5, 6, 9]] = True
    assert set(select_keyframes(d, 3, candidates)) <= {2, 5, 6, 9}
    six = select_keyframes(d, 6, candidates)
    assert {2, 5, 6, 9} <= set(six) and len(six) == 6
    assert select_keyframes(d, 3, np.zeros(12, bool)) == [0, 6, 11]  # nobody at all: spread in time


def test_distances_ignore_position_and_size_and_count_shared_joints_only():
    base = skeleton(100, 20, 200, left_arm=150)
    moved = skeleton(250, 60, 120, left_arm=150)  # the same pose elsewhere and smaller
    other = skeleton(100, 20, 200, left_arm=10)
    kp = np.stack([base, moved, other])
    boxes = np.concatenate([kp.min(axis=1), kp.max(axis=1)], axis=1)
    poses = normalise_poses(kp, boxes)
    vis = np.ones((3, 17), bool)
    d = pose_distances(poses, vis)
    assert d[0, 1] == pytest.approx(0, abs=1e-9) and d[0, 2] > 0.1
    vis[2, 12:] = False  # legs unseen in frame 2: the arm still makes the difference, rescaled to 17 joints
    d2 = pose_distances(poses, vis)
    shared = ((poses[0, :12] - poses[2, :12]) ** 2).sum()
    assert d2[0, 2] == pytest.approx(math.sqrt(shared * 17 / 12), rel=1e-9)
    assert d2[0, 1] == d[0, 1]


def test_pose_keyframes_pick_the_extreme_poses_of_an_arm_raise():
    """The arm goes up from hanging to overhead and back: the two extremes must be among the keyframes."""
    angles = [10, 40, 80, 120, 170, 120, 80, 40, 10, 10]
    kp = np.stack([skeleton(160, 20, 200, left_arm=a) for a in angles])
    from fixtures_pose import box_of

    boxes = np.stack([box_of(k) for k in kp])
    chosen = pose_keyframes(kp, np.full((10, 17), 0.9), boxes, np.ones(10, bool), 2, 0.5)
    assert 4 in chosen and any(angles[i] == 10 for i in chosen)


def test_the_stage_records_keyframe_times_and_poses():
    angles = [10 + 16 * t for t in range(10)] + [170 - 16 * t for t in range(10)]
    script = Scripted([[person(skeleton(160, 20, 200, left_arm=a))] for a in angles])
    clip = run(script, keyframes=4)
    c = clip.columns
    idx = c["pose_keyframe_indices"]
    assert len(idx) == 4 and idx == sorted(idx) and c["pose_keyframe_times"] == [i / FPS for i in idx]
    assert [r["frame_index"] for r in c["pose_record"]] == idx
    assert 9 in idx or 10 in idx  # the overhead pose, the farthest from everything else
