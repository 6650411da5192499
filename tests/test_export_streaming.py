"""`actcurate export` of a large run holds one shard's rows at a time (and the card's audit only counts): its Python
memory grows by a few numbers a clip, not by the clips' rows, and what it writes (records in order across shards,
counts, the card) is what holding every row gave."""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

import manifests.audit
import manifests.export
from fixtures_run import accepted_run
from manifests.audit import audit
from manifests.export import ExportOptions, export

CAPTION_PAD = "x" * 2000  # a long caption, so that held rows would show in the peak
CLIPS_PER_VIDEO = 25
SHARD_SIZE = 4
TEST_SHARE = 0.3


def caption_columns(video: int, clip: int) -> dict:
    return {"caption_text": f"video {video} clip {clip} {CAPTION_PAD}", "caption_model": "Qwen/Qwen2.5-VL-7B-Instruct",
            "aesthetic_score": 5.0 + clip / 100}


def exported(tmp_path: Path, videos: int, fmt: str) -> tuple[Path, int]:
    """A run of `videos` videos exported in `fmt`: the export folder and the export's peak of Python memory."""
    run = tmp_path / f"run{videos}"
    if not run.exists():
        run.mkdir()
        accepted_run(str(run / "out"), run, videos, SHARD_SIZE, CLIPS_PER_VIDEO, caption_columns)
    to = tmp_path / f"{fmt}{videos}"
    tracemalloc.start()
    try:
        export(ExportOptions(output=str(run / "out"), fmt=fmt, to=str(to), test_share=TEST_SHARE))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return to, peak


def test_export_memory_does_not_grow_with_the_clips(tmp_path):
    small, small_peak = exported(tmp_path, 8, "haic")
    large, large_peak = exported(tmp_path, 80, "haic")
    # What grows with the run is the audit's numeric scores (about 40 numbers a clip for the card's funnel and
    # histograms). Holding every row, as export and audit did, grew 9 KB a clip here (18.4 against 2.4 MB).
    growth_per_clip = (large_peak - small_peak) / (72 * CLIPS_PER_VIDEO)
    assert growth_per_clip < 1024, (small_peak, large_peak)

    summary = json.loads((large / "export.json").read_text())
    records = [json.loads(line) for split in ("train", "test") if (large / f"haic_captions.{split}.jsonl").exists()
               for line in (large / f"haic_captions.{split}.jsonl").read_text().splitlines()]
    assert len(records) == 80 * CLIPS_PER_VIDEO
    for split in ("train", "test"):
        in_split = [r for r in records if r["split"] == split]
        assert summary["splits"][split] == {"clips": len(in_split), "videos": len(in_split) // CLIPS_PER_VIDEO}
        assert summary["written"][f"haic_captions.{split}.jsonl"] == len(in_split)
        # the whole run's order, across shards: by video, then by start
        keys = [(r["video"], r["start"]) for r in in_split]
        assert keys == sorted(keys)
    assert not {r["video"] for r in records if r["split"] == "train"} & {r["video"] for r in records
                                                                        if r["split"] == "test"}
    assert {r["caption"].split(" x")[0] for r in records} == {f"video {v} clip {c}" for v in range(80)
                                                              for c in range(CLIPS_PER_VIDEO)}
    card = (large / "README.md").read_text()
    assert "| `caption_model` | Qwen/Qwen2.5-VL-7B-Instruct | 2000 |" in card
    assert f"| data | {summary['splits']['train']['videos'] + summary['splits']['test']['videos']} |" in card


def test_parquet_export_of_a_large_run_has_every_clip_once(tmp_path):
    folder, _ = exported(tmp_path, 80, "parquet")
    tables = {split: pq.read_table(folder / "parquet" / f"{split}.parquet") for split in ("train", "test")}
    ids = [i for t in tables.values() for i in t.column("clip_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 80 * CLIPS_PER_VIDEO
    for split, table in tables.items():
        assert set(table.column("split").to_pylist()) == {split}
        starts = list(zip(table.column("video_uri").to_pylist(), table.column("start_s").to_pylist()))
        assert starts == sorted(starts)
    assert tables["train"].column("caption").to_pylist()[0].endswith(CAPTION_PAD)


def test_the_card_is_audited_on_the_exports_own_pass_over_the_manifests(tmp_path, monkeypatch):
    """Each committed manifest is read once by an export, its card's audit included (it read them all again), and
    the card's funnel is the audit's."""
    reads: Counter = Counter()
    read_manifest = manifests.export.read_manifest

    def counted(store, shard_id):
        reads[shard_id] += 1
        return read_manifest(store, shard_id)

    monkeypatch.setattr(manifests.export, "read_manifest", counted)
    monkeypatch.setattr(manifests.audit, "read_manifest", counted)
    folder, _ = exported(tmp_path, 8, "haic")
    assert reads == {"shard-000000": 1, "shard-000001": 1}
    card = (folder / "README.md").read_text()
    for step in audit(str(tmp_path / "run8" / "out"))["funnel"]:
        assert f"| {step['stage']} | {step['in']} | {step['out']} |" in card


def test_the_review_records_are_read_once_by_an_export_and_once_by_an_audit(tmp_path, monkeypatch):
    """Export applied the reviews, its card's audit read them again and the audit's review summary a third time."""
    from manifests import reviews
    from pipeline.storage import Store

    run = tmp_path / "run8"
    run.mkdir()
    accepted_run(str(run / "out"), run, 8, SHARD_SIZE, CLIPS_PER_VIDEO, caption_columns)
    store = Store(str(run / "out"))
    first, second = (r["clip_id"] for r in pq.read_table(run / "out" / "manifests" / "shard-000000.parquet")
                     .select(["clip_id"]).to_pylist()[:2])
    reviews.append_reviews(store, [{"clip_id": first, "reviewer": "ana", "verdict": "reject",
                                    "reason": "text_or_watermark"}])
    reviews.append_reviews(store, [{"clip_id": second, "reviewer": "ben", "verdict": "caption", "caption": "edited"}])
    reads: Counter = Counter()
    read_bytes = Store.read_bytes

    def counted(self, name):
        if name.startswith(reviews.REVIEW_DIR + "/"):
            reads[name] += 1
        return read_bytes(self, name)

    monkeypatch.setattr(Store, "read_bytes", counted)
    to = tmp_path / "haic8"
    export(ExportOptions(output=str(run / "out"), fmt="haic", to=str(to), test_share=TEST_SHARE))
    assert len(reads) == 2 and set(reads.values()) == {1}
    summary = json.loads((to / "export.json").read_text())
    assert summary["left_out"]["review_rejected"] == 1 and summary["review_caption_edits"] == 1
    reads.clear()
    report = audit(str(run / "out"))
    assert len(reads) == 2 and set(reads.values()) == {1}
    assert report["reviews"]["records"] == 2 and report["reviews"]["accepted_review_rejected"] == 1


def test_status_and_the_audit_read_no_video_list_and_export_reads_it_once(tmp_path, monkeypatch):
    """A plan of a million videos is about 260 MB as Python objects: status and the audit take its counts from
    plan.json, export reads the list's licence and source columns once."""
    from manifests.audit import status
    from pipeline.plan import PLAN_VIDEOS
    from pipeline.storage import Store

    run = tmp_path / "run6"
    run.mkdir()
    accepted_run(str(run / "out"), run, 6, SHARD_SIZE, CLIPS_PER_VIDEO, caption_columns)
    reads: Counter = Counter()
    read_bytes = Store.read_bytes

    def counted(self, name):
        reads[name] += 1
        return read_bytes(self, name)

    monkeypatch.setattr(Store, "read_bytes", counted)
    report = status(str(run / "out"))
    assert report["videos"] == {"total": 6, "done": 6}
    assert report["shards"] == {"total": 2, "committed": 2, "pending": 0} and report["pending_shards"] == []
    assert audit(str(run / "out"))["videos"]["total"] == 6
    assert reads[PLAN_VIDEOS] == 0
    export(ExportOptions(output=str(run / "out"), fmt="haic", to=str(tmp_path / "haic6"), test_share=TEST_SHARE))
    assert reads[PLAN_VIDEOS] == 1
