"""aesthetic: a tiny random open_clip model and a random LAION-layout MLP head, built here, checked against a direct
torch computation; the rule, frame sampling, error isolation, the registry's missing-model error, offline loading."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from pipeline.clip import Clip, sample_indices
from pipeline.errors import UserError
from pipeline.executor import StageRunner, decode_clips, encode_row
from fixtures_aesthetic import LAION_HEAD_SHAPES, make_tiny_aesthetic
from stages.aesthetic import CLIP_ARTIFACT, HEAD_ARTIFACT, AestheticParams, AestheticStage

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Files on disk as a user would have them: a tiny open_clip config + checkpoint, and a head .pth."""
    return make_tiny_aesthetic(tmp_path_factory.mktemp("aesthetic"))


@pytest.fixture
def registry_dirs(monkeypatch, tiny, tmp_path):
    """The head found through ACTCURATE_MODELS (the registry's model folder); an empty cache."""
    monkeypatch.setenv("ACTCURATE_MODELS", str(tiny["models_dir"]))
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path / "cache"))
    return tiny


def tiny_params(tiny, **overrides) -> AestheticParams:
    params = dict(clip_model=str(tiny["config"]), clip_weights=str(tiny["checkpoint"]), device="cpu", batch_size=3)
    params.update(overrides)
    return AestheticParams(**params)


@pytest.fixture(scope="module")
def loaded(tiny):
    """One stage with models loaded (setup once for the module), under a socket guard: loading must not touch the
    network."""
    import os

    saved = {k: os.environ.get(k) for k in ("ACTCURATE_MODELS", "ACTCURATE_CACHE")}
    os.environ["ACTCURATE_MODELS"] = str(tiny["models_dir"])
    attempts = []
    real_connect = socket.socket.connect

    def guard(self, address):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    socket.socket.connect = guard
    try:
        stage = AestheticStage(tiny_params(tiny))
        stage.preflight()
        stage.setup()
    finally:
        socket.socket.connect = real_connect
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert attempts == []
    return stage


def reference_scores(tiny, frames: np.ndarray) -> np.ndarray:
    """Direct computation: open_clip's full model from the checkpoint, its eval transform, encode_image,
    L2-normalise, then the head's layers written out as plain matrix products (dropout is identity at eval)."""
    from PIL import Image

    model, _, transform = open_clip.create_model_and_transforms(
        "actcurate-tiny-clip", pretrained=str(tiny["checkpoint"]), force_quick_gelu=True)
    model.eval()
    x = torch.stack([transform(Image.fromarray(f)) for f in frames])
    with torch.no_grad():
        e = model.encode_image(x)
        e = e / e.norm(dim=-1, keepdim=True)
        for key in LAION_HEAD_SHAPES:
            e = e @ tiny["head_state"][f"{key}.weight"].T + tiny["head_state"][f"{key}.bias"]
    return e.squeeze(-1).numpy()


def make_clip(name: str, n: int, fps: float = 1.0, height: int = 120, width: int = 200, seed: int = 0) -> Clip:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    # smooth images score differently from noise: blend in a gradient so frames differ in content
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    frames = (0.5 * frames + 0.5 * ramp * rng.random()).astype(np.uint8)
    return Clip(video_id=name, video_uri=f"/x/{name}.mp4", shard_id="s", start_s=0.0, end_s=n / fps,
                frames=frames, frame_times=[i / fps for i in range(n)])


def test_scores_match_a_direct_torch_computation(loaded, tiny):
    clips = [make_clip("a", 4, seed=1), make_clip("b", 1, seed=2, height=90, width=160), make_clip("c", 3, seed=3)]
    expected = {c.video_id: reference_scores(tiny, c.frames) for c in clips}
    out = loaded.process(clips)  # 8 frames across 3 clips in forward passes of 3: batches straddle clips
    assert [c.video_id for c in out] == ["a", "b", "c"]
    for clip in out:
        cols, want = clip.columns, expected[clip.video_id]
        assert clip.status == "accepted"
        np.testing.assert_allclose(cols["aesthetic_frame_scores"], want, atol=1e-5, rtol=0)
        assert cols["aesthetic_mean"] == pytest.approx(float(np.mean(want)), abs=1e-5)
        assert cols["aesthetic_min"] == pytest.approx(float(np.min(want)), abs=1e-5)
        assert cols["aesthetic_score"] == cols["aesthetic_mean"]
        assert cols["aesthetic_frames"] == len(want) and cols["aesthetic_frame_times"] == clip.frame_times
    spread = np.ptp(np.concatenate(list(expected.values())))
    assert spread > 0.05  # the check means something: frames really score differently


def test_head_file_has_the_public_layout(loaded, tiny):
    state = torch.load(tiny["head"], weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items() if k.endswith(".weight")} == \
        {f"{k}.weight": s for k, s in LAION_HEAD_SHAPES.items()}
    assert loaded._scorer.head.layers[0].in_features == 768


def test_batched_normalisation_equals_open_clips_transform(loaded):
    """The stage runs open_clip's PIL steps per frame and its ToTensor + Normalize batched: the same values."""
    from PIL import Image

    scorer = loaded._scorer
    assert scorer.pil_steps is not None and len(scorer.tensor_steps) == 1
    frames = make_clip("a", 3, height=101, width=173).frames
    pixels = scorer.preprocess(list(frames))
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, 3, 64, 64)
    batched = scorer.tensor_steps[0](pixels.contiguous().float().div(255))
    per_frame = torch.stack([scorer.transform(Image.fromarray(f)) for f in frames])
    assert torch.equal(batched, per_frame)


def test_rule_rejects_below_the_threshold_with_value_and_threshold(loaded, tiny):
    clips = [make_clip("a", 3, seed=1), make_clip("b", 3, seed=5)]
    loaded.process([make_clip("probe", 1)])  # warm
    scores = {c.video_id: c.columns["aesthetic_mean"] for c in loaded.process([make_clip("a", 3, seed=1),
                                                                               make_clip("b", 3, seed=5)])}
    low, high = sorted(scores, key=scores.get)
    threshold = (scores[low] + scores[high]) / 2
    strict = AestheticStage(tiny_params(tiny, min_aesthetic=threshold))
    strict._scorer = loaded._scorer  # same models; only the rule differs
    out = {c.video_id: c for c in strict.process(clips)}
    assert out[high].status == "accepted"
    rejected = out[low]
    assert (rejected.status, rejected.reject_stage, rejected.reject_rule) == ("rejected", "aesthetic", "min_aesthetic")
    assert rejected.reject_value == pytest.approx(scores[low]) and rejected.reject_threshold == threshold
    assert rejected.frames is None  # a rejected clip carries no frames on
    assert rejected.columns["aesthetic_frame_scores"]  # but keeps its scores for the audit


def test_reduce_min_checks_the_worst_frame(loaded, tiny):
    clip = make_clip("a", 4, seed=7)
    (scored,) = loaded.process([make_clip("a", 4, seed=7)])
    worst, mean = scored.columns["aesthetic_min"], scored.columns["aesthetic_mean"]
    assert worst < mean
    stage = AestheticStage(tiny_params(tiny, reduce="min", min_aesthetic=(worst + mean) / 2))
    stage._scorer = loaded._scorer
    (out,) = stage.process([clip])
    assert out.reject_rule == "min_aesthetic" and out.reject_value == pytest.approx(worst)
    assert out.columns["aesthetic_score"] == pytest.approx(worst)


def test_frames_are_thinned_to_the_stage_rate_and_capped():
    times = [i * 0.25 for i in range(20)]  # the scenes stage kept 4 fps for another stage
    assert sample_indices(times, 1.0) == [0, 4, 8, 12, 16]
    assert sample_indices(times, 4.0) == list(range(20))
    stage = AestheticStage(AestheticParams(fps=1.0, max_frames=3))
    clip = Clip(video_id="v", video_uri="/v.mp4", shard_id="s", frames=np.zeros((20, 8, 8, 3), np.uint8),
                frame_times=times)
    assert stage.frames(clip, max_frames=3).indices == [0, 8, 16]
    assert stage.frame_request().fps == 1.0 and stage.frame_request().max_side == 448


def test_clip_without_frames_is_unscored_or_rejected_when_a_threshold_is_set(loaded, tiny):
    def empty():
        return Clip(video_id="e", video_uri="/e.mp4", shard_id="s", start_s=0, end_s=0.4)

    (scored_only,) = loaded.process([empty()])
    assert scored_only.status == "accepted" and scored_only.columns["aesthetic_score"] is None
    assert scored_only.columns["aesthetic_frames"] == 0
    strict = AestheticStage(tiny_params(tiny, min_aesthetic=4.5))
    strict._scorer = loaded._scorer
    (out,) = strict.process([empty()])
    assert (out.status, out.reject_rule) == ("rejected", "no_frames")


def test_a_bad_clip_fails_alone(loaded):
    bad = make_clip("bad", 2)
    bad.frames = bad.frames[..., 0]  # grey (N, H, W): not RGB
    out = {c.video_id: c for c in loaded.process([make_clip("a", 2), bad, make_clip("c", 1)])}
    assert out["bad"].status == "error" and out["bad"].error_stage == "aesthetic"
    assert "not uint8 (H, W, 3)" in out["bad"].error_message
    assert out["a"].status == out["c"].status == "accepted"
    assert out["a"].columns["aesthetic_frames"] == 2


def test_runs_through_the_stage_runner_and_skips_rejected_rows(registry_dirs, tiny):
    gone = make_clip("v", 2)
    gone.reject("scenes", "min_clip_length", 0.5, 1.0)
    clips = [make_clip("v", 3), gone]
    clips[0].clip_index, gone.clip_index = 0, 1
    runner = StageRunner(AestheticStage, tiny_params(tiny).model_dump())
    (rows,) = list(runner.run_rows([encode_row("s", "v", 0, True, clips)]))
    out = sorted(decode_clips(rows[0]["clips"]), key=lambda c: c.clip_index)
    assert out[0].columns["aesthetic_frames"] == 3 and "aesthetic" in out[0].timings
    assert out[1].reject_stage == "scenes" and "aesthetic_score" not in out[1].columns


def test_bf16_autocast_path_stays_close(registry_dirs, tiny):
    clip = make_clip("a", 2, seed=11)
    want = reference_scores(tiny, clip.frames)
    stage = AestheticStage(tiny_params(tiny, precision="bf16"))
    stage.setup()
    (out,) = stage.process([clip])
    np.testing.assert_allclose(out.columns["aesthetic_frame_scores"], want, atol=0.1)


def test_missing_weights_name_the_pull_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTCURATE_MODELS", str(tmp_path / "empty"))
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=f"fetch it with `actcurate models pull {HEAD_ARTIFACT}`"):
        AestheticStage(AestheticParams()).preflight()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sac+logos+ava1-l14-linearMSE.pth").write_bytes(b"x")
    with pytest.raises(UserError, match=f"model {CLIP_ARTIFACT} is missing.*actcurate models pull {CLIP_ARTIFACT}"):
        AestheticStage(AestheticParams()).preflight()
    with pytest.raises(UserError, match="which does not exist"):
        AestheticStage(AestheticParams(head_weights=str(tmp_path / "nope.pth"))).preflight()
    with pytest.raises(UserError, match="registry holds weights for ViT-L-14 only"):
        AestheticStage(AestheticParams(clip_model="ViT-B-32")).preflight()


def test_a_wrong_head_file_is_a_clear_error(tiny, tmp_path):
    wrong = tmp_path / "head.pth"
    torch.save({"fc.weight": torch.zeros(1, 768)}, wrong)
    with pytest.raises(UserError, match="not the improved-aesthetic-predictor MLP"):
        AestheticStage(tiny_params(tiny, head_weights=str(wrong))).setup()


def test_gpu_share_is_taken_for_cuda_and_for_auto_on_gpu_clusters_only():
    assert AestheticStage.resources.gpus == 0
    assert AestheticStage(AestheticParams(device="cuda")).resources_for(0).gpus == 0.25
    assert AestheticStage(AestheticParams(device="cuda", gpu_share=0.5)).resources_for(0).gpus == 0.5
    assert AestheticStage(AestheticParams(device="auto")).resources_for(0).gpus == 0
    assert AestheticStage(AestheticParams(device="auto")).resources_for(8).gpus == 0.25
    assert AestheticStage(AestheticParams(device="cpu")).resources_for(8).gpus == 0
    with pytest.raises(ValueError):
        AestheticParams(device="tpu")
