"""Stage and executor logic without Ray: probe rules, VFR, bounded memory, parts, error isolation, redaction."""

from __future__ import annotations

import tracemalloc
from typing import ClassVar

import pyarrow as pa
import pytest

import media
from pipeline.clip import Clip
from pipeline.executor import StageRunner, decode_clips, source_row
from pipeline.plan import PlannedVideo
from pipeline.stage import FrameRequest, Stage
from stages.probe import ProbeParams, ProbeStage
from stages.scenes import ScenesParams, ScenesStage


def probe(path, **params) -> Clip:
    (clip,) = ProbeStage(ProbeParams(**params)).process([Clip(video_id="v", video_uri=str(path), shard_id="s")])
    return clip


def test_probe_facts(tmp_path):
    clip = probe(media.make_video(tmp_path / "a.mp4", width=320, height=240, fps=25, segments=(50,), audio=True))
    c = clip.columns
    assert clip.status == "accepted" and clip.end_s == pytest.approx(2.0, abs=0.05)
    assert (c["probe_width"], c["probe_height"], c["probe_codec"]) == (320, 240, "h264")
    assert c["probe_fps_avg"] == pytest.approx(25) and c["probe_frame_count"] == 50
    assert c["probe_has_audio"] is True and c["probe_rotation"] == 0 and not c["probe_variable_frame_rate"]


@pytest.mark.parametrize(
    "params, rule, value, threshold",
    [
        ({"max_pixels": 320 * 240 - 1}, "max_pixels", 320 * 240, 320 * 240 - 1),
        ({"min_duration_s": 3.0}, "min_duration", 2.0, 3.0),
        ({"max_duration_s": 1.0}, "max_duration", 2.0, 1.0),
        ({"min_short_side": 720}, "min_short_side", 240, 720),
        ({"min_fps": 30}, "min_fps", 25, 30),
    ],
)
def test_probe_rules_record_value_and_threshold(tmp_path, params, rule, value, threshold):
    clip = probe(media.make_video(tmp_path / "a.mp4", fps=25, segments=(50,)), **params)
    assert (clip.status, clip.reject_stage, clip.reject_rule) == ("rejected", "probe", rule)
    assert clip.reject_value == pytest.approx(value, abs=0.05) and clip.reject_threshold == threshold


def test_pixel_guard_runs_before_any_decode(tmp_path):
    clip = probe(media.make_video(tmp_path / "a.mp4", segments=(10,), rotation=90), max_pixels=100)
    assert clip.reject_rule == "max_pixels"
    assert clip.columns["probe_rotation"] == 0  # the first frame (which carries rotation) was never decoded


def test_variable_frame_rate_uses_timestamps(tmp_path):
    times = [i * 0.02 for i in range(50)] + [1.0 + i * 0.1 for i in range(20)]  # 50 fps, then 10 fps
    path = media.make_vfr_video(tmp_path / "vfr.mp4", frame_times=times, segments_at=(1.0,))
    clip = probe(path)
    assert clip.columns["probe_variable_frame_rate"]
    clips = list(ScenesStage(ScenesParams(keep_fps=5)).iter_process([clip]))
    assert [c.columns["scenes_start_frame"] for c in clips] == [0, 50]
    assert clips[1].start_s == pytest.approx(1.0, abs=1e-3)  # the cut's time comes from pts, not index / fps
    kept = clips[1].frame_times
    assert len(kept) == 10 and all(b - a >= 0.2 - 1e-6 for a, b in zip(kept, kept[1:]))


@pytest.mark.parametrize("keep, bytes_per_s", [
    ({"keep_fps": 4, "keep_max_side": 320}, 4 * 320 * 180 * 3),
    # several levels (stages asking for different sizes) keep the same bound
    ({"keep_levels": [FrameRequest(4, 160), FrameRequest(2, 320)]}, 4 * 160 * 90 * 3 + 2 * 320 * 180 * 3),
])
def test_long_video_memory_stays_bounded(tmp_path, keep, bytes_per_s):
    """A 5-minute single scene: frames of at most ~two windows are held at once, whatever the length."""
    path = media.make_long_video(tmp_path / "long.mp4", 300, fps=25, width=320, height=180)
    clip = probe(path)
    stage = ScenesStage(ScenesParams(**keep, max_clip_s=10.0))
    tracemalloc.start()
    total_frame_bytes, count = 0, 0
    for out in stage.iter_process([clip]):
        total_frame_bytes += out.frame_bytes
        count += 1
        out.drop_frames()  # a consumer (the executor) ships each clip on as soon as it arrives
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 30 and total_frame_bytes == 300 * bytes_per_s
    window_bytes = 10 * bytes_per_s
    assert peak < 4 * window_bytes < total_frame_bytes / 7


def test_long_video_leaves_the_stage_in_parts(tmp_path):
    path = media.make_long_video(tmp_path / "long.mp4", 60, fps=25, width=320, height=180, cut_every_s=5)
    row = source_row(PlannedVideo(str(path), "vid", "shard-000000", 0))
    (probed,) = [r for batch in StageRunner(ProbeStage, {}).run_rows([row]) for r in batch]
    runner = StageRunner(ScenesStage, {"keep_fps": 4.0}, chunk_bytes=2_000_000)
    parts = [r for batch in runner.run_rows([probed]) for r in batch]
    assert [p["part"] for p in parts] == list(range(len(parts))) and len(parts) > 3
    assert [p["last"] for p in parts] == [False] * (len(parts) - 1) + [True]
    clips = [c for p in parts for c in decode_clips(p["clips"])]
    assert [c.clip_index for c in clips] == list(range(12))


class _FailsOnSecond(Stage):
    """A stage whose work raises for one clip, to check that its siblings carry on."""

    name = "flaky"
    columns: ClassVar[dict[str, pa.DataType]] = {"flaky_ok": pa.bool_()}

    def process_clip(self, clip):
        if clip.video_id == "b":
            raise ValueError("token=abcdef123456 decoder exploded")
        self.set(clip, ok=True)


def test_one_bad_clip_fails_alone_and_secrets_are_redacted(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "abcdef123456")
    rows = [source_row(PlannedVideo(f"/x/{v}.mp4", v, "s", i)) for i, v in enumerate("abc")]
    out = [r for batch in StageRunner(_FailsOnSecond, {}).run_rows(rows) for r in batch]
    clips = {c.video_id: c for r in out for c in decode_clips(r["clips"])}
    assert clips["a"].columns["flaky_ok"] and clips["c"].columns["flaky_ok"]
    bad = clips["b"]
    assert (bad.status, bad.error_stage, bad.error_type) == ("error", "flaky", "ValueError")
    assert "abcdef123456" not in bad.error_message and "decoder exploded" in bad.error_message
    assert all("flaky" in c.timings for c in clips.values())


def test_rejected_rows_pass_later_stages_untouched(tmp_path):
    path = media.make_video(tmp_path / "a.mp4", segments=(30,))
    row = source_row(PlannedVideo(str(path), "vid", "s", 0))
    (probed,) = [r for b in StageRunner(ProbeStage, {"min_fps": 100}).run_rows([row]) for r in b]
    (after,) = [r for b in StageRunner(ScenesStage, {}).run_rows([probed]) for r in b]
    (clip,) = decode_clips(after["clips"])
    assert clip.reject_rule == "min_fps" and "scenes" not in clip.timings and clip.frames is None
