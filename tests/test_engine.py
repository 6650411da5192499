"""The engine's contract v2 and its regressions: no phantom rows when a video leaves the splitting stage in parts,
progress counts equal to the audit funnel, declared requirements, the rule helpers, batch isolation, the README's
example stage, and audit/status that never import a stage module."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

import media
from fixtures_run import clip_rows, engine_recipe
from manifests.audit import audit
from pipeline.clip import Clip
from pipeline.errors import UserError
from pipeline.executor import StageRunner, decode_clips, encode_row
from pipeline.recipe import StageSpec, build_recipe, check_requirements, load_recipe
from pipeline.run import RunOptions, run
from pipeline.stage import FrameRequest, RunContext, Stage, StageParams

REPO = Path(__file__).resolve().parents[1]


def readme_example_namespace() -> dict:
    """The README's example stage, executed as written."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Writing a stage"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def frames_clip(n: int, level: int, fps: float = 4.0) -> Clip:
    clip = Clip(video_id=f"v{level}", video_uri=f"/v{level}.mp4", shard_id="s", start_s=0, end_s=n / fps)
    clip.frames = np.full((n, 16, 16, 3), level, np.uint8)
    clip.frame_times = [i / fps for i in range(n)]
    return clip


# -- regressions through Ray -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_single_shot_leaving_scenes_in_parts_makes_no_phantom_row_and_progress_equals_the_funnel(ray_local,
                                                                                                     tmp_path):
    # 12 s of 1280x720 with no cut: the quickstart recipe cuts 10 s + 2 s windows; with small parts the last part
    # of the scenes stage was empty and the next stage invented an error row with no video_uri.
    media.make_video(tmp_path / "in" / "hd single shot.mp4", width=1280, height=720, fps=30, segments=(360,))
    media.make_video(tmp_path / "in" / "cuts.mp4", segments=(75, 75, 75), fps=25)
    result = run(RunOptions(recipe=engine_recipe(), input=str(tmp_path / "in"),
                            output=str(tmp_path / "out"), progress=False, chunk_bytes=1_000_000))
    rows = clip_rows(str(tmp_path / "out"))
    assert all(r["video_uri"] for r in rows)
    assert len({(r["video_id"], r["clip_index"]) for r in rows}) == len(rows)
    assert not [r for r in rows if r["status"] == "error"], [r["error_message"] for r in rows]
    hd = [r for r in rows if r["video_uri"].endswith("hd single shot.mp4")]
    assert [(r["start_s"], r["end_s"]) for r in hd] == [(0.0, 6.0), (6.0, 12.0)]  # equal windows of <= 10 s
    report = audit(str(tmp_path / "out"))
    funnel = {f["stage"]: (f["in"], f["out"]) for f in report["funnel"]}
    order = [f["stage"] for f in report["funnel"]]
    for before, after in zip(order, order[1:]):
        assert funnel[before][1] == funnel[after][0]  # clips out of a stage = clips into the next
    assert {stage: tuple(counts) for stage, counts in result.stage_counts.items()} == funnel


# -- the runner without Ray ------------------------------------------------------------------------------------------
class _Drops(Stage):
    """A broken stage that loses one clip: the engine must turn the loss into that clip's own error row."""

    name = "drops"

    def process(self, clips):
        return [c for c in clips if c.clip_index != 1]


def test_a_clip_a_stage_loses_becomes_its_own_error_row_and_empty_parts_pass_through():
    clips = [Clip(video_id="v", video_uri="/v.mp4", shard_id="s", clip_index=i, start_s=i, end_s=i + 1)
             for i in range(3)]
    rows = [encode_row("s", "v", 3, False, clips), encode_row("s", "v", 4, True, [])]
    out = [r for batch in StageRunner(_Drops, {}).run_rows(rows) for r in batch]
    assert [(r["part"], r["last"]) for r in out] == [(3, False), (4, True)]  # parts keep their numbers
    got = {c.clip_index: c for c in decode_clips(out[0]["clips"])}
    assert decode_clips(out[1]["clips"]) == []  # an empty final part stays empty: no phantom row
    assert sorted(got) == [0, 1, 2] and got[1].video_uri == "/v.mp4"
    assert (got[1].status, got[1].error_stage) == ("error", "drops")
    assert "produced no rows" in got[1].error_message


# -- declared requirements -------------------------------------------------------------------------------------------
class _Needs(Stage):
    name = "needs"
    requires = ("pose_keyframe_indices",)


def test_requirements_are_checked_by_stage_or_column_with_one_line():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {}}})
    specs = recipe.stages + [StageSpec("needs", _Needs, StageParams())]
    with pytest.raises(UserError, match=r"'needs' needs 'pose_keyframe_indices' before it, and no stage"):
        check_requirements(specs, "r.yaml")
    with pytest.raises(UserError, match=r"'scenes' needs 'probe' before it, but 'probe' comes after it"):
        build_recipe({"stages": {"scenes": {}, "probe": {}}})
    with pytest.raises(UserError, match=r"'ocr' reads frames, which only 'scenes' decodes"):
        build_recipe({"stages": {"probe": {}, "ocr": {}}})
    haic = load_recipe("haic")
    pose_cols = [s for s in haic.stages if s.name == "pose"]
    check_requirements(haic.stages[:3] + pose_cols + [StageSpec("needs", _Needs, StageParams())], "ok")


def test_frame_requests_reach_the_provider_without_naming_it():
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {"fps": 2, "max_side": 640},
                                      "motion": {"fps": 4, "working_side": 256}}})
    scenes = recipe.stages[1].build()
    # one level per requested size (its own rate); a recipe that fixes keep_fps keeps one level for all
    assert scenes.keep_requests() == [FrameRequest(4, 256), FrameRequest(2, 640)]
    fixed = build_recipe({"stages": {"probe": {}, "scenes": {"keep_fps": 3}, "ocr": {"fps": 2, "max_side": 640},
                                     "motion": {"fps": 4, "working_side": 256}}})
    assert fixed.stages[1].build().keep_requests() == [FrameRequest(3, 640)]


# -- rule helpers and isolation --------------------------------------------------------------------------------------
class _Rules(Stage):
    name = "rules"
    rules: ClassVar[dict[str, str]] = {"low": "value low", "high": "value high"}


def test_at_least_and_at_most_skip_a_none_threshold_and_record_the_audit_fields():
    stage = _Rules()
    clip = Clip(video_id="v", video_uri="/v", shard_id="s")
    assert stage.at_least(clip, "low", 0.1, None) and stage.at_most(clip, "high", 99, None)
    assert stage.at_least(clip, "low", 2, 2) and stage.at_most(clip, "high", 2, 2)
    assert not stage.at_least(clip, "low", 2, 2, strict=True)
    assert (clip.status, clip.reject_stage, clip.reject_rule, clip.reject_value, clip.reject_threshold) == \
        ("rejected", "rules", "low", 2.0, 2.0)
    missing = Clip(video_id="v", video_uri="/v", shard_id="s")
    assert not stage.at_most(missing, "high", None, 1)  # nothing measured fails an active rule
    with pytest.raises(AssertionError, match="no rule 'undeclared'"):
        stage.at_most(Clip(video_id="v", video_uri="/v", shard_id="s"), "undeclared", 5, 1)
    assert "no_frames" in _Rules.rule_meanings()  # one name for one cause, shared by every stage


class _Batched(Stage):
    """Batches work across clips; any batch holding clip 'bad' raises."""

    name = "batched"
    columns: ClassVar[dict[str, pa.DataType]] = {"batched_n": pa.int32()}
    calls: list[int] = []

    def process(self, clips):
        self.calls.append(len(clips))
        if any(c.video_id == "bad" for c in clips):
            raise RuntimeError("model failed on this batch")
        for c in clips:
            self.set(c, n=len(clips))
        return clips


def test_a_batch_failure_is_retried_one_clip_at_a_time_so_only_the_bad_clip_errors():
    clips = [Clip(video_id=v, video_uri=f"/{v}", shard_id="s") for v in ("a", "bad", "c")]
    dead = Clip(video_id="d", video_uri="/d", shard_id="s", status="rejected")
    _Batched.calls = []
    out = {c.video_id: c for c in _Batched().iter_process(clips + [dead])}
    assert _Batched.calls == [3, 1, 1, 1]
    assert out["a"].columns["batched_n"] == 1 and out["c"].columns["batched_n"] == 1
    assert (out["bad"].status, out["bad"].error_message) == ("error", "model failed on this batch")
    assert out["d"].status == "rejected" and "batched" not in out["d"].timings
    assert all("batched" in out[v].timings for v in ("a", "bad", "c"))


def test_the_frame_accessor_thins_on_the_keep_grid_and_caps_evenly():
    class Reader(Stage):
        name = "reader"

        def frame_request(self):
            return FrameRequest(2.0, 64)

    clip = frames_clip(20, 10, fps=4.0)
    assert Reader().frames(clip).indices == list(range(0, 20, 2))
    assert Reader().frames(clip, max_frames=3).indices == [0, 8, 18]  # kept 0, 2, ..., 18; evenly 3 of 10
    assert Reader().frames(Clip(video_id="v", video_uri="/v", shard_id="s")).indices == []
    clip.frame_times = clip.frame_times[:5]
    with pytest.raises(ValueError, match="20 frames but 5 frame times"):
        Reader().frames(clip)


def test_models_dir_reaches_stages_through_the_run_context(tmp_path, monkeypatch):
    monkeypatch.delenv("ACTCURATE_MODELS", raising=False)
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path / "empty cache"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "yolox_l.onnx").write_bytes(b"x")
    stage = _Rules(context=RunContext(models_dir=str(tmp_path / "models")))
    assert stage.model_path("dwpose-det") == tmp_path / "models" / "yolox_l.onnx"
    with pytest.raises(UserError, match="actcurate models pull dwpose-det"):
        _Rules().model_path("dwpose-det")


# -- the README's example --------------------------------------------------------------------------------------------
def test_the_readme_example_stage_runs_as_written():
    ns = readme_example_namespace()
    stage_cls, params_cls = ns["BrightnessStage"], ns["BrightnessParams"]
    stage = stage_cls(params_cls(fps=1.0, min_brightness=40))
    dark, bright, empty = frames_clip(8, 10), frames_clip(8, 200), Clip(video_id="e", video_uri="/e", shard_id="s")
    out = {c.video_id: c for c in stage.iter_process([dark, bright, empty])}
    assert (out["v10"].status, out["v10"].reject_rule, out["v10"].reject_value) == ("rejected", "min_brightness", 10)
    assert out["v200"].status == "accepted" and out["v200"].columns["brightness_mean"] == 200
    assert out["e"].reject_rule == "no_frames"
    rows = [encode_row("s", c.video_id, 0, True, [c]) for c in (frames_clip(8, 10), frames_clip(8, 200))]
    through_runner = [c for batch in StageRunner(stage_cls, {"min_brightness": 40}).run_rows(rows) for r in batch
                      for c in decode_clips(r["clips"])]
    assert Counter(c.status for c in through_runner) == {"rejected": 1, "accepted": 1}


# -- audit and status read run.json, not the stage modules ------------------------------------------------------------
@pytest.mark.slow
def test_audit_and_status_import_no_stage_module(ray_local, tmp_path):
    media.make_video(tmp_path / "in" / "a.mp4", segments=(75, 75), fps=25)
    run(RunOptions(recipe=engine_recipe(), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                   progress=False))
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["split_stage"] == "scenes" and "min_clip_length" in info["rules"]["scenes"]
    code = ("import json, sys; from manifests.audit import audit, status; "
            f"a = audit({str(tmp_path / 'out')!r}); s = status({str(tmp_path / 'out')!r}); "
            "heavy = [m for m in ('cv2', 'av', 'scenedetect', 'stages', 'ray', 'onnxruntime') if m in sys.modules]; "
            "print(json.dumps({'heavy': heavy, 'funnel': a['funnel']}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["heavy"] == []
    assert [f["unit_out"] for f in report["funnel"]] == ["videos", "clips", "clips", "clips"]


# -- a pool actor that dies ------------------------------------------------------------------------------------------
class _CrashParams(StageParams):
    marker: str = ""  # while this file exists, the worker dies hard on the video named "crash"


class _Crashes(Stage):
    """Dies like a segfaulting decoder (no exception, the process is gone) on one video."""

    name = "crashes"
    Params = _CrashParams
    actor = True

    def process_clip(self, clip):
        import os

        if "crash" in clip.video_uri and Path(self.params.marker).exists():
            os._exit(1)


class _CrashesInTask(_Crashes):
    """The same, as a task stage (as probe and scenes, which decode, run): Ray Data would retry its task for ever."""

    actor = False


@pytest.mark.slow
@pytest.mark.parametrize("crashing", [_Crashes, _CrashesInTask], ids=["actor", "task"])
def test_a_worker_that_dies_loses_only_its_own_video_which_becomes_an_error_row_to_redo(ray_local, tmp_path,
                                                                                        crashing):
    import ray.cloudpickle

    from pipeline.recipe import Recipe
    from stages.probe import ProbeStage

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    for name in ("a.mp4", "crash.mp4", "c.mp4"):
        media.make_video(tmp_path / "in" / name, segments=(30,))
    marker = tmp_path / "crash-now"
    marker.touch()
    specs = [StageSpec("probe", ProbeStage, ProbeStage.Params()),
             StageSpec("crashes", crashing, _CrashParams(marker=str(marker)))]
    recipe = Recipe("crash test", "", specs, "<test>")
    options = dict(recipe=recipe, output=str(tmp_path / "out"), progress=False)
    # the three videos share one batch of the pool actor, which dies with all three: the two innocent videos are
    # run again one at a time and kept; the one that kills its worker again becomes an error row
    first = run(RunOptions(input=str(tmp_path / "in"), shard_size=1, **options))
    assert first.shards_pending == [] and len(first.shards_committed_now) == 3
    rows = {r["video_uri"].rsplit("/", 1)[1]: r for r in clip_rows(str(tmp_path / "out"))}
    assert rows["a.mp4"]["status"] == rows["c.mp4"]["status"] == "accepted"
    lost = rows["crash.mp4"]
    assert (lost["status"], lost["error_stage"]) == ("error", "worker") and "died" in lost["error_message"]
    marker.unlink()
    second = run(RunOptions(redo_errors=True, **options))
    assert second.shards_pending == [] and second.videos_processed == 1
    assert all(r["status"] == "accepted" for r in clip_rows(str(tmp_path / "out")))


@pytest.mark.slow
def test_shared_clips_one_per_shard_every_row_named_unique_and_counted_alike(ray_local, shared_videos, tmp_path):
    """The issue's own check on real footage (films, AVIs, long HD): quickstart recipe, one video per shard."""
    result = run(RunOptions(recipe=load_recipe("quickstart"), input=str(shared_videos), output=str(tmp_path / "out"),
                            shard_size=1, progress=False))
    assert result.shards_pending == [] and result.shards_total == 10
    rows = clip_rows(str(tmp_path / "out"))
    assert all(r["video_uri"] for r in rows)
    assert len({(r["video_id"], r["clip_index"]) for r in rows}) == len(rows)
    for video in {r["video_id"] for r in rows}:  # a video's clips tile its decoded frames, in order
        spans = [(r["scenes_start_frame"], r["scenes_end_frame"]) for r in rows
                 if r["video_id"] == video and r["scenes_start_frame"] is not None]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and (not spans or spans[0][0] == 0)
    report = audit(str(tmp_path / "out"))
    funnel = {f["stage"]: (f["in"], f["out"]) for f in report["funnel"]}
    assert {stage: tuple(counts) for stage, counts in result.stage_counts.items()} == funnel
    assert funnel["probe"][0] == 10 and report["clips"]["total"] == len(rows)
