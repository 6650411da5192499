"""The pose stage behind the real probe and scenes stages on generated videos, with the fixture models found through
the registry (ACTCURATE_MODELS); and one run through Ray with the manifests written."""

from __future__ import annotations

import numpy as np
import pytest

import fixtures_models as fm
import media
from pipeline.clip import Clip
from pipeline.recipe import build_recipe
from pipeline.stage import FrameRequest

RULES = dict(min_single_person_ratio=0.9, min_visible_keypoints=12, min_motion=0.05)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fm.make_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture
def registry(model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ACTCURATE_MODELS", str(model_dir))
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path / "cache"))
    return model_dir


def square_at(frame_index: int, width: int = 320, height: int = 240) -> tuple[int, int]:
    """Top-left corner of media.make_video's moving white square at a frame (its _draw_square)."""
    size = min(width, height) // 5

    def tri(t, span):
        t %= 2 * span
        return t if t <= span else 2 * span - t

    return tri(3 * frame_index, width - size), tri(2 * frame_index, height - size)


def through_scenes(path, **pose_params) -> list[Clip]:
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {"min_clip_s": 1.0}, "pose": {**RULES, **pose_params}}})
    probe, scenes, pose = (s.build() for s in recipe.stages)
    assert scenes.keep_requests() == [pose.frame_request()] == [FrameRequest(5.0, 640)]
    pose.preflight()
    clips = list(probe.process([Clip(video_id="v", video_uri=str(path), shard_id="s")]))
    clips = list(scenes.iter_process(clips))
    return pose.process(clips)


def test_moving_person_through_scenes_is_found_where_it_is(registry, tmp_path):
    path = media.make_video(tmp_path / "moving.mp4", segments=(60, 45), fps=30)
    clips = through_scenes(path, record_frames="all")
    assert len(clips) == 2 and all(c.status == "accepted" for c in clips), [(c.reject_rule, c.reject_value) for c in clips]
    for clip in clips:
        c = clip.columns
        assert c["pose_frame_times"] == c["scenes_kept_frame_times"]
        assert set(c["pose_persons_per_frame"]) == {1} and c["pose_visible_keypoints"] == 17
        assert c["pose_motion"] > 0.5  # the square crosses its own size in well under a second
        assert set(c["pose_keyframe_times"]) <= set(c["scenes_kept_frame_times"])
        for rec in c["pose_record"]:
            x0, y0 = square_at(round(rec["time_s"] * 30))
            kp = np.array(rec["persons"][0]["keypoints"])[:, :2] * [320, 240]
            # the square's 48 px box, padded 1.25 and widened to 3:4, fills the 288 px input: 4.8 input px a pixel
            expect = np.array([x0, y0]) + fm.default_offsets()[:17] / 4.8
            assert np.abs(kp - expect).max() < 2.5  # h264 blurs the square's edges by a pixel or two
        assert any("moves toward the" in f for f in c["pose_motion_facts"])


def test_still_person_through_scenes_fails_min_motion(registry, tmp_path):
    path = media.make_video(tmp_path / "still.mp4", segments=(60,), fps=30, moving=False)
    (clip,) = through_scenes(path)
    assert (clip.status, clip.reject_stage, clip.reject_rule) == ("rejected", "pose", "min_motion")
    assert clip.reject_value == pytest.approx(0.0, abs=1e-3) and clip.reject_threshold == 0.05
    assert clip.columns["pose_motion_facts"][-1].startswith("stays still")


def test_frame_request_reaches_scenes_and_a_faster_request_is_thinned(registry, tmp_path):
    path = media.make_video(tmp_path / "a.mp4", segments=(60,), fps=30)
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {"keep_fps": 10}, "pose": {"fps": 5}}})
    probe, scenes, pose = (s.build() for s in recipe.stages)
    clips = list(scenes.iter_process(probe.process([Clip(video_id="v", video_uri=str(path), shard_id="s")])))
    (clip,) = pose.process(clips)
    kept, used = clip.columns["scenes_kept_frame_times"], clip.columns["pose_frame_times"]
    assert len(kept) == 20 and len(used) == 10 and set(used) <= set(kept)


@pytest.mark.slow
def test_ray_run_writes_pose_columns_to_the_manifest(ray_local, model_dir, tmp_path):
    from fixtures_run import clip_rows
    from pipeline.run import RunOptions, run

    media.make_video(tmp_path / "in" / "moving.mp4", segments=(60,), fps=30)
    media.make_video(tmp_path / "in" / "still.mp4", segments=(60,), fps=30, moving=False)
    pose = {**RULES, "det_model": str(model_dir / "yolox_l.onnx"), "pose_model": str(model_dir / "dw-ll_ucoco_384.onnx")}
    recipe = build_recipe({"name": "pose-test", "stages": {"probe": {}, "scenes": {}, "pose": pose}})
    result = run(RunOptions(recipe=recipe, output=str(tmp_path / "out"), input=str(tmp_path / "in"), progress=False))
    assert not result.shards_pending
    rows = {r["video_uri"].rsplit("/", 1)[1]: r for r in clip_rows(str(tmp_path / "out"))}
    moving, still = rows["moving.mp4"], rows["still.mp4"]
    assert moving["status"] == "accepted" and moving["pose_single_person_ratio"] == 1.0
    assert len(moving["pose_keyframe_times"]) == 8 and moving["pose_record"][0]["persons"][0]["track"] == 0
    assert moving["pose_motion_events"] and isinstance(moving["pose_motion_facts"][0], str)
    assert (still["status"], still["reject_stage"], still["reject_rule"]) == ("rejected", "pose", "min_motion")
