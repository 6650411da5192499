"""Pose rules and measures on synthetic keypoint tracks: the models are replaced by scripted detections, so each
case (one person, two people, static with a camera pan, slideshow, occluded, ...) sets exactly what the stage sees."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipeline.clip import Clip
from fixtures_pose import W, H, FPS, skeleton, Scripted, person, clip_of, run, waving, HMI, HAIC
from stages.pose import PoseParams, PoseStage


# -- one person, two people ------------------------------------------------------------------------------------------
def test_one_moving_person_passes_the_hmi_rules_and_gets_every_column():
    clip = run(Scripted(waving(20)), **HMI)
    c = clip.columns
    assert clip.status == "accepted", (clip.reject_rule, clip.reject_value)
    assert c["pose_persons_per_frame"] == [1] * 20 and c["pose_single_person_ratio"] == 1.0
    assert c["pose_visible_keypoints"] == 17 and c["pose_main_coverage"] == 1.0 and c["pose_tracks"] == 1
    assert c["pose_motion"] > 0.08  # one arm waving: about a tenth of the body size per second
    assert len(c["pose_keyframe_indices"]) == 8 and c["pose_keyframe_times"] == [t / FPS for t in c["pose_keyframe_indices"]]
    assert set(PoseStage.columns) <= set(c)  # every declared column was written
    (first, *_) = c["pose_record"]
    (main,) = first["persons"]
    assert main["track"] == 0 and len(main["keypoints"]) == 17 and all(len(k) == 3 for k in main["keypoints"])
    assert all(0 <= v <= 1 for k in main["keypoints"] for v in k[:2])  # normalised to the frame


def test_two_people_fail_single_person_ratio_but_pass_haic():
    frames = [[person(skeleton(90, 20, 200, left_arm=100 + 60 * math.sin(t))), person(skeleton(230, 30, 180))]
              for t in range(15)]
    clip = run(Scripted(frames), **HMI)
    assert (clip.status, clip.reject_rule, clip.reject_value, clip.reject_threshold) == \
        ("rejected", "single_person_ratio", 0.0, 0.9)
    assert clip.columns["pose_persons_per_frame"] == [2] * 15 and clip.frames is None
    clip = run(Scripted(frames), **HAIC, max_persons=4)
    assert clip.status == "accepted" and clip.columns["pose_tracks"] == 2
    clip = run(Scripted(frames), max_persons=1)
    assert (clip.reject_rule, clip.reject_value, clip.reject_threshold) == ("max_persons", 2.0, 1.0)


def test_detection_rules_reject_before_the_pose_model_runs():
    script = Scripted([[person(skeleton(90, 20, 200)), person(skeleton(230, 30, 180))] for _ in range(10)])
    clip = run(script, **HMI)
    assert clip.reject_rule == "single_person_ratio" and script.pose_jobs == 0
    assert "pose_visible_keypoints" not in clip.columns  # pose measures exist only where the pose ran


def test_min_persons_and_empty_frames_with_frame_share():
    frames = waving(20)
    for t in (3, 11):
        frames[t] = []  # the detector missed the person twice
    assert run(Scripted(frames), min_persons=1, frame_share=0.9).status == "accepted"
    clip = run(Scripted(frames), min_persons=1, frame_share=1.0)
    assert (clip.reject_rule, clip.reject_value, clip.reject_threshold) == ("min_persons", 0.0, 1.0)
    assert clip.columns["pose_persons_per_frame"][3] == 0


def test_small_person_fails_min_person_area_and_tiny_bystanders_can_be_ignored():
    small = [[person(skeleton(160, 20, 60, left_arm=100 + 60 * math.sin(t)))] for t in range(10)]
    clip = run(Scripted(small), **HAIC)
    assert clip.reject_rule == "min_person_area" and clip.reject_value < 0.05 and clip.reject_threshold == 0.05
    crowd = [[person(skeleton(160, 20, 200, left_arm=100 + 60 * math.sin(t))), person(skeleton(290, 150, 30))]
             for t in range(10)]
    assert run(Scripted(crowd), **HMI).reject_rule == "single_person_ratio"
    clip = run(Scripted(crowd), **HMI, ignore_person_area=0.01)
    assert clip.status == "accepted" and clip.columns["pose_single_person_ratio"] == 1.0


# -- occlusion -------------------------------------------------------------------------------------------------------
def test_occluded_person_fails_min_visible_keypoints():
    upper = range(11)  # legs and hips hidden: 11 body keypoints visible
    frames = [[person(skeleton(160, 20, 200, left_arm=100 + 60 * math.sin(t)), visible=upper)] for t in range(15)]
    clip = run(Scripted(frames), **HMI)
    assert (clip.reject_rule, clip.reject_value, clip.reject_threshold) == ("min_visible_keypoints", 11.0, 12.0)
    assert clip.columns["pose_visible_keypoints_per_frame"] == [11] * 15


def test_brief_occlusion_is_tolerated_on_the_frame_share():
    frames = waving(20)
    frames[7] = [person(frames[7][0][0], visible=range(5))]
    assert run(Scripted(frames), **HMI).status == "accepted"
    clip = run(Scripted(frames), **HMI | {"frame_share": 1.0})
    assert (clip.reject_rule, clip.reject_value) == ("min_visible_keypoints", 5.0)


# -- movement: static, camera pan, slideshow -------------------------------------------------------------------------
def test_static_person_fails_min_motion():
    frames = [[person(skeleton(160, 20, 200, left_arm=30))] for _ in range(15)]
    clip = run(Scripted(frames), **HMI)
    assert (clip.reject_rule, clip.reject_value, clip.reject_threshold) == ("min_motion", 0.0, 0.05)


def textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 255, (H // 8 + 10, (W + 200) // 8, 3), dtype=np.uint8)
    return cv2.resize(noise, ((W + 200) // 8 * 8, (H // 8 + 10) * 8), interpolation=cv2.INTER_NEAREST)


@pytest.mark.parametrize("pan", [4.0, -6.0])
def test_static_person_under_a_camera_pan_fails_min_motion_after_compensation(pan):
    """The camera pans; the person stands still in the world, so in the picture moves with the background."""
    n = 15
    frames = [[person(skeleton(160 - pan * t, 20, 200, left_arm=30))] for t in range(n)]
    clip = run(Scripted(frames), clip_of(n, textured(), pan), **HMI)
    assert clip.reject_rule == "min_motion" and clip.reject_value < 0.01
    assert clip.columns["pose_camera_motion"] == pytest.approx(abs(pan) * FPS / math.hypot(W, H), rel=0.05)
    # without compensation the pan looks like movement
    clip = run(Scripted(frames), clip_of(n, textured(), pan), **HMI, camera_compensation="none")
    assert clip.status == "accepted" and clip.columns["pose_motion"] > 0.05


def test_moving_person_under_a_camera_pan_passes():
    n = 15
    pan = 5.0
    frames = [[person(skeleton(160 - pan * t, 20, 200, left_arm=100 + 60 * math.sin(2 * math.pi * t / 5)))]
              for t in range(n)]
    clip = run(Scripted(frames), clip_of(n, textured(), pan), **HMI)
    assert clip.status == "accepted" and clip.columns["pose_motion"] > 0.1


def test_keypoint_compensation_removes_a_pan_shared_by_two_still_people():
    n = 12
    frames = [[person(skeleton(90 - 5 * t, 20, 200, left_arm=40)), person(skeleton(230 - 5 * t, 30, 180))]
              for t in range(n)]
    clip = run(Scripted(frames), camera_compensation="keypoints", min_motion=0.05)
    assert clip.reject_rule == "min_motion" and clip.reject_value < 1e-3
    assert run(Scripted(frames), camera_compensation="none", min_motion=0.05).status == "accepted"


def test_slideshow_of_still_poses_fails_min_motion_though_it_jumps():
    """Four photographs, each held for five frames: large jumps between them, nothing moves within them."""
    poses = [skeleton(100, 20, 200, left_arm=20), skeleton(200, 30, 180, left_arm=170, right_arm=90),
             skeleton(140, 10, 210, right_arm=150), skeleton(180, 25, 190, left_arm=90, facing=-1)]
    frames = [[person(poses[t // 5])] for t in range(20)]
    clip = run(Scripted(frames), **HMI)
    assert (clip.reject_rule, clip.reject_value) == ("min_motion", 0.0)
    steps = clip.columns["pose_motion_per_step"]
    assert sum(s > 0.5 for s in steps) >= 2 and sum(s == 0 for s in steps) >= 12  # jumps, then stillness
    # the same poses reached by continuous movement pass
    smooth = [[person(skeleton(100 + 5 * t, 20, 200, left_arm=20 + 8 * t))] for t in range(20)]
    assert run(Scripted(smooth), **HMI).status == "accepted"


def test_max_motion_is_an_optional_upper_bound():
    clip = run(Scripted(waving(15)), max_motion=0.1)
    assert clip.reject_rule == "max_motion" and clip.reject_value > 0.1


# -- frames, errors, records -----------------------------------------------------------------------------------------
def test_clip_without_frames_is_rejected_and_dead_clips_pass_untouched():
    stage = PoseStage(PoseParams())
    stage.detector = stage.pose = Scripted([])
    empty = Clip(video_id="v", video_uri="/x.mp4", shard_id="s")
    dead = Clip(video_id="w", video_uri="/y.mp4", shard_id="s", status="rejected", reject_rule="min_fps")
    out = stage.process([empty, dead])
    assert (out[0].status, out[0].reject_rule) == ("rejected", "no_frames")
    assert out[1].reject_rule == "min_fps" and not out[1].columns


def test_frames_kept_faster_than_asked_are_thinned_to_the_stage_rate():
    script = Scripted(waving(20))
    clip = clip_of(20)
    clip.frame_times = [t / 10 for t in range(20)]  # scenes kept 10 fps; pose asks 5
    out = run(script, clip)
    assert out.columns["pose_frame_times"] == pytest.approx([t / 5 for t in range(10)])
    assert all(i % 2 == 0 for i in out.columns["pose_keyframe_indices"])  # indices into the kept frames


def test_a_failing_clip_errors_alone():
    good = clip_of(10)
    bad = clip_of(10)
    bad.frame_times = bad.frame_times[:3]  # inconsistent: fewer times than frames
    bad.frames = bad.frames[:, :, :, :2]  # and not RGB: the detector input cannot be built
    script = Scripted(waving(10))

    class Picky(Scripted):
        def detect(self, frames, params):
            if any(f.shape[-1] != 3 for f in frames):
                raise ValueError("frame is not RGB")
            return super().detect(frames, params)

    script = Picky(waving(10))
    stage = PoseStage(PoseParams(fps=FPS))
    stage.detector = stage.pose = script
    out = stage.process([good, bad])
    assert out[0].status == "accepted" and out[0].columns["pose_persons_per_frame"] == [1] * 10
    assert (out[1].status, out[1].error_stage, out[1].error_type) == ("error", "pose", "ValueError")


def test_record_all_frames_and_several_persons_on_request():
    frames = [[person(skeleton(90, 20, 200, left_arm=100 + 60 * math.sin(t))), person(skeleton(230, 30, 150))]
              for t in range(10)]
    clip = run(Scripted(frames), record_frames="all", record_persons=2, keyframes=3)
    record = clip.columns["pose_record"]
    assert [r["frame_index"] for r in record] == list(range(10))
    assert all([p["track"] for p in r["persons"]] == [0, 1] for r in record)
    assert len(clip.columns["pose_keyframe_indices"]) == 3


def test_manifest_columns_are_parquet_ready():
    import pyarrow as pa

    clip = run(Scripted(waving(12)))
    schema = pa.schema([pa.field(k, t) for k, t in PoseStage.columns.items()])
    table = pa.Table.from_pylist([{k: clip.columns.get(k) for k in PoseStage.columns}], schema=schema)
    assert table.num_rows == 1 and table.column("pose_motion_events")[0].as_py()
