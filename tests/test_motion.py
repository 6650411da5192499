"""motion: the flow score in frame diagonals per second, on synthetic frames and through the real scenes stage."""

from __future__ import annotations

import math
import sys
import types

import cv2
import numpy as np
import pytest

import media
from pipeline.clip import Clip, sample_indices
from pipeline.errors import UserError
from pipeline.recipe import build_recipe
from stages.motion import MotionParams, MotionStage
from stages.probe import ProbeStage
from stages.scenes import ScenesParams, ScenesStage


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (blobs about 1/20 of the height across) that flow can follow."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((max(2, height // 12), max(2, width // 12), 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def pan_frames(width: int, height: int, px_per_s: float, times: list[float], seed: int = 0) -> np.ndarray:
    """Windows of one wide texture, moving left by px_per_s; the texture scales with the resolution."""
    span = int(math.ceil(px_per_s * max(times))) + width + 2
    base = texture(360, int(math.ceil(span * 360 / height)), seed)
    big = cv2.resize(base, (span, height), interpolation=cv2.INTER_AREA)
    frames = []
    for t in times:
        x = px_per_s * t
        shift = np.float32([[1, 0, -x]])
        shift = np.vstack([shift, [0, 1, 0]]).astype(np.float32)
        frames.append(cv2.warpAffine(big, shift, (width, height), flags=cv2.INTER_LINEAR))
    return np.stack(frames)


def write_video(path, frames: np.ndarray, fps: int = 30):
    return media.write_frames(path, frames, fps=fps, crf=18)


def through_scenes(path, keep_fps: float = 4.0, keep_max_side: int = 960) -> list[Clip]:
    (clip,) = ProbeStage().process([Clip(video_id="v", video_uri=str(path), shard_id="s")])
    scenes = ScenesStage(ScenesParams(keep_fps=keep_fps, keep_max_side=keep_max_side))
    return [c for c in scenes.iter_process([clip])]


def motion(clip: Clip, **params) -> Clip:
    stage = MotionStage(MotionParams(**params))
    stage.setup()
    (out,) = stage.process([clip])
    return out


def clip_of(frames: np.ndarray, times: list[float]) -> Clip:
    return Clip(video_id="v", video_uri="mem", shard_id="s", frames=frames, frame_times=list(times))


# -- synthetic frames -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width, height", [(320, 180), (1280, 720)])
def test_pan_scores_its_speed_in_diagonals_per_second_at_any_resolution(width, height):
    speed = 0.12  # diagonals per second
    px_per_s = speed * math.hypot(width, height)
    times = [k / 4 for k in range(9)]
    out = motion(clip_of(pan_frames(width, height, px_per_s, times), times))
    c = out.columns
    assert out.status == "accepted" and c["motion_pairs"] == 8
    assert c["motion_score"] == pytest.approx(speed, rel=0.05)
    assert c["motion_score_median"] == pytest.approx(speed, rel=0.05)
    # A pan is camera motion: the affine part carries it, almost nothing is left for objects.
    assert c["motion_camera_score"] == pytest.approx(speed, rel=0.05)
    assert c["motion_object_score"] < 0.1 * speed


def test_score_does_not_depend_on_the_sampling_rate():
    speed, width, height = 0.05, 480, 270
    px_per_s = speed * math.hypot(width, height)
    scores = []
    for fps in (2, 4, 8):
        times = [k / fps for k in range(2 * fps + 1)]
        scores.append(motion(clip_of(pan_frames(width, height, px_per_s, times), times), fps=fps)
                      .columns["motion_score"])
    assert scores == pytest.approx([speed] * 3, rel=0.06)


def test_fast_pan_beyond_dis_range_is_measured_with_the_global_seed():
    # 20 % of the width between kept frames: DIS alone follows about 6 %; the phase-correlation seed recovers it.
    width, height = 320, 180
    px_per_s = 0.2 * width * 4
    times = [k / 4 for k in range(5)]
    frames = pan_frames(width, height, px_per_s, times)
    expected = px_per_s / math.hypot(width, height)
    seeded = motion(clip_of(frames, times)).columns["motion_score"]
    unseeded = motion(clip_of(frames, times), global_init=False).columns["motion_score"]
    assert seeded == pytest.approx(expected, rel=0.08)
    assert unseeded < 0.7 * expected  # what the seed is for


def test_static_frames_score_zero_and_flicker_is_not_motion():
    times = [k / 4 for k in range(9)]
    still = np.stack([texture(180, 320)] * len(times))
    assert motion(clip_of(still, times)).columns["motion_score"] < 1e-4
    # Brightness and contrast jump every frame (gain 0.5..1.3 plus an offset), nothing moves.
    gains = [0.5, 1.3, 0.7, 1.2, 0.6, 1.1, 0.5, 1.3, 0.8]
    flicker = np.stack([np.clip(f.astype(np.float32) * g + 20 * (k % 2), 0, 255).astype(np.uint8)
                        for k, (f, g) in enumerate(zip(still, gains))])
    out = motion(clip_of(flicker, times), min_flow=0.0015)
    assert out.status == "rejected" and out.reject_rule == "min_flow"
    assert out.reject_value < 0.0015 / 3
    # A black frame (the first frame of a fade-in) has nothing to measure: its pairs count as still.
    faded = still.copy()
    faded[0] = 0
    assert motion(clip_of(faded, times)).columns["motion_score"] < 1e-4


def test_object_motion_on_a_still_background_is_object_not_camera():
    times = [k / 4 for k in range(9)]
    background = texture(180, 320)
    frames = []
    for t in times:
        frame = background.copy()
        x = int(20 + 80 * t)
        frame[60:120, x:x + 60] = texture(60, 60, seed=3)  # a textured square moving 80 px/s
        frames.append(frame)
    c = motion(clip_of(np.stack(frames), times)).columns
    expected = (60 * 60) / (320 * 180) * 80 / math.hypot(320, 180)  # the square's share of the frame x its speed
    assert 0.5 * expected < c["motion_score"] < 1.1 * expected
    assert c["motion_object_score"] > 3 * c["motion_camera_score"]


def test_rules_and_too_few_frames():
    times = [k / 4 for k in range(5)]
    frames = pan_frames(320, 180, 0.1 * math.hypot(320, 180), times)
    low = motion(clip_of(frames, times), min_flow=0.2)
    assert (low.status, low.reject_stage, low.reject_rule, low.reject_threshold) == ("rejected", "motion", "min_flow", 0.2)
    assert low.reject_value == pytest.approx(0.1, rel=0.05) and low.frames is None
    high = motion(clip_of(frames, times), max_flow=0.06)
    assert (high.reject_rule, high.reject_threshold) == ("max_flow", 0.06)
    assert motion(clip_of(frames, times), min_flow=0.0015, max_flow=0.5).status == "accepted"
    # One frame: no pair. With a rule set that is a rejection; score-only it is an empty measurement.
    single = motion(clip_of(frames[:1], times[:1]), min_flow=0.0015)
    assert (single.reject_rule, single.reject_value, single.reject_threshold) == ("too_few_frames", 1, 2)
    none = motion(clip_of(frames[:1], times[:1]))
    assert none.status == "accepted" and none.columns["motion_pairs"] == 0
    empty = motion(Clip(video_id="v", video_uri="mem", shard_id="s"), max_flow=0.06)
    assert (empty.reject_rule, empty.reject_value, empty.reject_threshold) == ("no_frames", 0, 1)


def test_sampling_grid_matches_the_scenes_stage():
    kept = [round(i / 30, 4) for i in range(0, 300, 8)]  # 3.75 fps kept by scenes at keep_fps=4 on 30 fps
    assert sample_indices(kept, 4.0) == list(range(len(kept)))
    times = [k / 4 for k in range(16)]
    assert sample_indices(times, 1.0) == [0, 4, 8, 12]
    assert sample_indices(times, 2.0) == [0, 2, 4, 6, 8, 10, 12, 14]


# -- through the real scenes stage ------------------------------------------------------------------------------------
@pytest.mark.parametrize("width, height, px_per_frame", [(320, 180, 2), (640, 360, 4)])
def test_encoded_pan_through_scenes(tmp_path, width, height, px_per_frame):
    """The same pan at two resolutions: px_per_frame scales with the size, so the score is the same."""
    fps = 30
    times = [i / fps for i in range(90)]
    path = write_video(tmp_path / "pan.mp4", pan_frames(width, height, px_per_frame * fps, times), fps)
    (clip,) = through_scenes(path)
    out = motion(clip)
    expected = px_per_frame * fps / math.hypot(width, height)  # 0.163 diagonals per second
    assert out.columns["motion_score"] == pytest.approx(expected, rel=0.05)
    assert out.columns["motion_pairs"] == len(clip.frame_times) - 1 >= 10


def test_static_and_moving_generated_videos(tmp_path):
    (still,) = through_scenes(media.make_video(tmp_path / "still.mp4", segments=(60,), moving=False))
    assert motion(still).columns["motion_score"] < 1e-3
    # make_video's small square moves 3 px right and 2 px down a frame on a still background.
    (moving,) = through_scenes(media.make_video(tmp_path / "moving.mp4", segments=(60,), moving=True))
    c = motion(moving).columns
    assert c["motion_score"] > 0.005 and c["motion_object_score"] > c["motion_camera_score"]


def test_recipe_asks_scenes_for_motion_frames():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "motion": {"fps": 4, "working_side": 256}}})
    (scenes,) = recipe.stages[1].build().keep_requests()
    assert (scenes.fps, scenes.max_side) == (4, 256)


def test_shared_clip_scores_are_ordered(shared_videos):
    """Static camera, one person doing tai chi: low, and all object motion. The basketball clip's pan at the end:
    high, and mostly camera motion."""
    (tai_chi,) = through_scenes(shared_videos / "stgcn_kinetics_tai_chi.mp4", keep_max_side=256)
    basketball = through_scenes(shared_videos / "mmaction2_basketball_structuralize.mp4", keep_max_side=256)
    calm = motion(tai_chi).columns
    assert 0 < calm["motion_score"] < 0.01 and calm["motion_camera_score"] < 0.1 * calm["motion_object_score"]
    pan = motion(basketball[-1], max_flow=0.06)
    assert pan.reject_rule == "max_flow" and pan.reject_value > 0.06
    assert pan.columns["motion_camera_score"] > pan.columns["motion_object_score"]


# -- the RAFT backend's start-up checks ----------------------------------------------------------------------------------
def test_raft_without_torch_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "torchvision") else real(name, *a))
    with pytest.raises(UserError, match="needs torch and torchvision"):
        MotionStage(MotionParams(backend="raft")).preflight()


def test_raft_without_gpu_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in ("torch", "torchvision") else real(name, *a))
    fake_torch = types.ModuleType("torch")
    fake_torch.cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    with pytest.raises(UserError, match="sees no CUDA device"):
        MotionStage(MotionParams(backend="raft", device="cuda")).preflight()
    assert MotionStage(MotionParams()).preflight() is None  # the CPU default needs nothing
    # The engine places a RAFT worker on a GPU (and refuses a cluster without one before any video is touched).
    assert MotionStage(MotionParams(backend="raft", device="cuda", gpu_share=0.5)).resources_for(0).gpus == 0.5
    assert MotionStage(MotionParams(backend="raft", device="cpu")).resources_for(8).gpus == 0
    assert MotionStage(MotionParams(backend="raft")).resources_for(8).gpus == 0.25  # auto on a GPU cluster
    # DIS runs on the CPU whatever the cluster has
    assert MotionStage(MotionParams()).resources_for(8).gpus == 0 and MotionStage.resources.gpus == 0


def test_raft_backend_runs_on_local_weights(tmp_path):
    """The RAFT path end to end on the CPU, with random raft_small weights saved locally (no download): shapes,
    batching and the scaling back to the working size. The flow of random weights means nothing."""
    torch = pytest.importorskip("torch")
    optical_flow = pytest.importorskip("torchvision.models.optical_flow")
    torch.manual_seed(0)
    weights = tmp_path / "raft_small_random.pth"
    torch.save(optical_flow.raft_small(weights=None).state_dict(), weights)
    params = dict(backend="raft", raft_model="raft_small", raft_weights=str(weights), device="cpu", raft_iters=2,
                  raft_batch_pairs=2)
    MotionStage(MotionParams(**params)).preflight()
    with pytest.raises(UserError, match="weights file not found"):
        MotionStage(MotionParams(**{**params, "raft_weights": str(tmp_path / "missing.pth")})).preflight()
    times = [k / 4 for k in range(5)]
    frames = pan_frames(320, 180, 0.1 * math.hypot(320, 180), times)
    frames[2] = 0  # a black frame: its two pairs are not sent to the model
    out = motion(clip_of(frames, times), **params)
    c = out.columns
    assert out.status == "accepted" and c["motion_pairs"] == 4
    assert c["motion_pair_scores"][1:3] == [0.0, 0.0]
    assert all(math.isfinite(s) for s in c["motion_pair_scores"])
