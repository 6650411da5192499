"""`actcurate export` on a real run (generated videos, captions and MoME from the local test VLM server): every format
field by field, parquet through `datasets`, webdataset through `webdataset`, clip files that decode to the manifest's
spans, byte-identical re-exports, an export to a moto S3 server, and review verdicts that later exports honour."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

import media
from fixtures_run import clip_rows
from fixtures_vlm import VlmServer
from manifests import reviews
from manifests.export import (MAPPING, ExportOptions, export, mapping_markdown, mapping_rows, split_of,
                              video_fraction)
from pipeline.storage import Store

pytestmark = pytest.mark.slow
ACTCURATE = [sys.executable, "-m", "pipeline.cli"]
GENERATOR, BLIND, VISION = "Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"
JUDGE, EXPERT_B = "meta-llama/Llama-3.1-70B-Instruct", "OpenGVLab/InternVL3-8B"
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "api_key_env": None}
# Keyframes every 20 frames: both 40-frame scenes start on one (copy is exact); every 30: the second does not (copy
# falls back to encoding); x264's defaults: keyframes where it decides.
GOPS = {"studio/a.mp4": 20, "studio/b.mp4": 30, "street/c.mp4": None, "street/d.mp4": None}
LIST = ("uri,license,source\nstudio/a.mp4,CC BY 4.0,Studio set\nstudio/b.mp4,CC BY 4.0,Studio set\n"
        "street/c.mp4,CC0,\nstreet/d.mp4,,\n")
HAIC_QUESTIONS = [
    {"category": "Action Details", "question": "What does the man do with his right hand at {caption_sha}?",
     "correct_answer": "He raises it", "distractors": ["He lowers it", "He swings it", "He hides it"]},
    {"category": "Count", "question": "How many times does the man clap at {caption_sha}?",
     "correct_answer": "Two", "distractors": ["One", "Three", "Four"]},
]
HMI_QUESTIONS = [{"dimension": "Details of Movements", "type": "open", "question": "How does he move {caption_sha}?",
                  "answer": "He raises the right arm"},
                 {"dimension": "Character Attributes", "type": "true_false", "question": "Is he in red {caption_sha}?",
                  "answer": "true"}]
ACTIONART_QUESTIONS = [{"subtask": "direction", "question": "Where does the arm go {caption_sha}?",
                        "correct_answer": "up", "distractors": ["down", "left", "right"]}]
TRIPLETS = [{"person": "the man in grey", "verb": "lift", "object": "a bar"},
            {"person": "the man in grey", "verb": "hold", "object": "a cup"}]


def endpoint(server, model, **extra):
    return {"model": model, "base_url": server.url, **FAST, **extra}


def recipe_doc(server, style: str, mome: bool, annotate: bool) -> dict:
    stages = {"probe": {}, "scenes": {"min_clip_s": 1.0},
              "caption": {"style": style, **endpoint(server, VISION), "max_frames": 3, "batch_size": 4}}
    if style in ("haic", "hoigen"):  # motion_score: hoigen's `flow`, and a scalar column of the flat formats
        stages = {**{k: stages[k] for k in ("probe", "scenes")}, "motion": {"fps": 5.0}, "caption": stages["caption"]}
    if mome:
        stages["mome"] = {"style": style, **endpoint(server, EXPERT_B), "batch_size": 4,
                          "judge": endpoint(server, JUDGE), "third": endpoint(server, "llava-hf/llava-ov")}
    if annotate:
        stages["annotate"] = {"style": style, **endpoint(server, GENERATOR), "batch_size": 4, "max_frames": 3,
                              "blind": None if style == "hoigen" else endpoint(server, BLIND),
                              "vision": endpoint(server, VISION)}
    return {"name": f"export-{style}", "stages": stages}


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory) -> dict[str, Path]:
    """haic (caption, MoME, annotate) over four generated videos listed with licences and sources; hmi, actionart
    and hoigen (caption, annotate) over two of them; and a run with captions and no annotate stage."""
    from pipeline.recipe import build_recipe
    from pipeline.run import RunOptions, run

    root = tmp_path_factory.mktemp("export")
    for i, (name, gop) in enumerate(GOPS.items()):
        media.make_video(root / "videos" / name, segments=(40, 40), fps=25, gop=gop, seed=i)
    (root / "videos" / "list.csv").write_text(LIST)
    (root / "videos" / "two.txt").write_text("studio/a.mp4\nstreet/c.mp4\n")
    media.make_video(root / "videos" / "street" / "gone.mp4", segments=(40, 40), fps=25, seed=9)
    (root / "videos" / "plain.txt").write_text("studio/a.mp4\nstreet/c.mp4\nstreet/gone.mp4\nstreet/missing.mp4\n")
    outs = {}
    with VlmServer() as server:
        server.rules([
            {"model": GENERATOR, "text": "HAICBench", "set": {"questions": HAIC_QUESTIONS}},
            {"model": GENERATOR, "text": "fine-grained multiple-choice", "set": {"questions": ACTIONART_QUESTIONS}},
            {"model": GENERATOR, "text": "(?i)true/false|true_false|open-ended", "set": {"questions": HMI_QUESTIONS}},
            {"model": GENERATOR, "text": "(?i)triplet", "set": {"triplets": TRIPLETS}},
            # the blind model answers B to both haic questions: right on some, wrong on others
            {"model": BLIND, "text": "clap", "set": {"answers": ["B", "B"]}},
            # MoME's judge calls expert B's caption the richer one in both orders: the final caption is B's
            {"model": JUDGE, "text": r"Caption A:\n[^\n]*\n[^\n]*Qwen", "set": {"richer": "B"}},
            {"model": JUDGE, "text": r"Caption A:\n[^\n]*\n[^\n]*InternVL", "set": {"richer": "A"}},
        ])
        for name, style, listing, mome, annotate in (
                ("haic", "haic", "list.csv", True, True), ("hmi", "hmi", "two.txt", False, True),
                ("actionart", "actionart", "two.txt", False, True), ("hoigen", "hoigen", "two.txt", False, True),
                ("plain", "haic", "plain.txt", False, False)):
            outs[name] = root / name
            run(RunOptions(recipe=build_recipe(recipe_doc(server, style, mome, annotate)), output=str(outs[name]),
                           input=str(root / "videos" / listing), shard_size=2, progress=False))
    (root / "videos" / "street" / "gone.mp4").unlink()  # a source deleted after the run: its clip files fail
    return outs


@pytest.fixture(scope="module")
def rows(runs) -> dict[str, list[dict]]:
    return {name: clip_rows(str(out)) for name, out in runs.items()}


@pytest.fixture(scope="module")
def share(rows) -> float:
    """A --test-share that puts two of the four videos in test (video ids follow the temporary folder's path)."""
    places = sorted({video_fraction(r["video_id"]) for r in rows["haic"]})
    return round((places[1] + places[2]) / 2, 6)


def do_export(out: Path, fmt: str, to: Path | str, share: float = 0.1, **options):
    return export(ExportOptions(output=str(out), fmt=fmt, to=str(to), test_share=share, **options))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(folder: Path, stem: str) -> list[dict]:
    """Both splits' records of one file kind, each split's file holding only its split."""
    found = []
    for split in ("train", "test"):
        path = folder / f"{stem}.{split}.jsonl"
        if path.exists():
            part = read_jsonl(path)
            assert part and {r["split"] for r in part} == {split}
            found += part
    return found


def by_clip(rows: list[dict]) -> dict[str, dict]:
    return {r["clip_id"]: r for r in rows}


def test_runs_have_what_the_export_tests_need(rows, share):
    assert [r["status"] for r in rows["haic"]] == ["accepted"] * 8, [r["error_message"] for r in rows["haic"]]
    assert sorted(split_of(r["video_id"], share) for r in rows["haic"]).count("test") == 4
    assert {r["mome_source"] for r in rows["haic"]} == {"b"}  # MoME chose expert B: not the caption stage's text
    for name in ("hmi", "actionart", "hoigen"):
        assert [r["status"] for r in rows[name]] == ["accepted"] * 4, [r["error_message"] for r in rows[name]]
        assert {r["annotate_style"] for r in rows[name]} == {name}


def test_haic_field_by_field(runs, rows, share, tmp_path):
    result = do_export(runs["haic"], "haic", tmp_path, share)
    manifest = by_clip(rows["haic"])
    captions = records(tmp_path, "haic_captions")
    assert sorted(r["clip_id"] for r in captions) == sorted(manifest)
    for rec in captions:
        row = manifest[rec["clip_id"]]
        assert list(rec) == ["video", "caption", "clip_id", "split", "start", "end"]
        assert rec["caption"] == row["mome_caption"] and rec["caption"] != row["caption_text"]
        assert rec["video"] == row["video_uri"] and (rec["start"], rec["end"]) == (row["start_s"], row["end_s"])
        assert rec["split"] == split_of(row["video_id"], share)
    assert len({r["split"] for r in captions}) == 2
    for video in {r["video"] for r in captions}:  # no video in two splits
        assert len({r["split"] for r in captions if r["video"] == video}) == 1
    qa = records(tmp_path, "haic_bench_qa")
    assert len(qa) == 8 * 2
    for rec in qa:
        row = manifest[rec["clip_id"]]
        assert list(rec) == ["video", "category", "question", "options", "answer", "guessable", "clip_id", "split"]
        source = next(q for q in json.loads(row["annotate_json"])["questions"] if q["question"] == rec["question"])
        assert rec["category"] == source["category"] and rec["answer"] == source["answer"]
        assert rec["options"] == [f"({letter}) {o}" for letter, o in zip("ABCD", source["options"], strict=True)]
        correct = rec["options"]["ABCD".index(rec["answer"])]
        assert correct.split(" ", 1)[1] in {q["correct_answer"] for q in HAIC_QUESTIONS}
        assert rec["guessable"] == source["guessable"] and rec["video"] == row["video_uri"]
    card = (tmp_path / "README.md").read_text()
    assert "| train | 4 | 2 |" in card and "| test | 4 | 2 |" in card
    assert "| Count | 8 |" in card and "| Action Details | 8 |" in card
    assert "| CC BY 4.0 | 2 |" in card and "| CC0 | 1 |" in card and "| not given | 1 |" in card
    assert "| Studio set | 2 |" in card and "| street | 2 |" in card  # list source, else the folder
    assert f"| `mome_judge_model` | {JUDGE} | 8 |" in card
    assert "| `annotate_model` | Qwen/Qwen2.5-7B-Instruct | 8 |" in card
    assert "min_clip_s=1.0" in card and "| scenes | 4 | 8 |" in card
    guessable = sum(r["guessable"] for r in qa)
    assert 0 < guessable < len(qa) and guessable == sum(r["answer"] == "B" for r in qa)
    assert f"Questions of `annotate` in the run: 16 kept on accepted clips, {guessable} of them marked guessable" in card
    # the card's header makes every file kind a `datasets` config with its splits
    import datasets

    bench = datasets.load_dataset(str(tmp_path), "haic_bench_qa", cache_dir=str(tmp_path.parent / "hf"))
    assert {s: bench[s].num_rows for s in bench} == {"train": 8, "test": 8}
    assert sorted(bench["test"][0]) == sorted(qa[0])
    dropped = do_export(runs["haic"], "haic", tmp_path / "dropped", share, drop_guessable=True)
    assert not any(r["guessable"] for r in records(tmp_path / "dropped", "haic_bench_qa"))
    assert dropped.stats["left_out"] == {"guessable_questions": guessable}
    assert result.stats["left_out"] == {}


def test_haic_of_a_run_without_annotations_writes_the_captions_and_says_qa_is_absent(runs, rows, tmp_path):
    result = do_export(runs["plain"], "haic", tmp_path, 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "export.json", "haic_captions.train.jsonl"]
    captions = read_jsonl(tmp_path / "haic_captions.train.jsonl")
    made = [r for r in rows["plain"] if r["status"] == "accepted"]
    assert [r["caption"] for r in captions] == [r["caption_text"] for r in made] and len(made) == 6  # no MoME
    card = (tmp_path / "README.md").read_text()
    assert "No clip carries `haic` annotations" in card
    assert "| pipeline_error | 1 | errors in the run |" in card  # the missing video: left out, counted
    assert result.stats["splits"]["test"] == {"clips": 0, "videos": 0}
    assert result.stats["left_out"] == {"pipeline_error": 1}


def test_hmi_field_by_field(runs, rows, tmp_path):
    do_export(runs["hmi"], "hmi", tmp_path, 0.5)
    manifest = by_clip(rows["hmi"])
    out = records(tmp_path, "hmi")
    assert sorted(r["clip_id"] for r in out) == sorted(manifest)
    for rec in out:
        row = manifest[rec["clip_id"]]
        assert list(rec) == ["video", "source", "start", "end", "keyframes", "caption", "qa", "keyframe_times",
                             "clip_id", "split"]
        assert rec["source"] == row["video_uri"].split("/")[-2]  # a .txt list has no source column: the folder
        assert (rec["start"], rec["end"], rec["caption"]) == (row["start_s"], row["end_s"], row["caption_text"])
        assert rec["keyframe_times"] == row["caption_frame_times"] and len(rec["keyframes"]) == 3
        # keyframes are frame numbers inside the clip (25 fps, the clip starts at frame 0)
        assert rec["keyframes"] == [round((t - row["start_s"]) * 25) for t in row["caption_frame_times"]]
        assert all(0 <= k < 40 for k in rec["keyframes"])
        questions = json.loads(row["annotate_json"])["questions"]
        assert rec["qa"] == [{"dimension": q["dimension"], "type": {"open": "open", "true_false": "tf"}[q["type"]],
                              "question": q["question"], "answer": q["answer"], "guessable": q["guessable"]}
                             for q in questions]
        assert {q["type"] for q in rec["qa"]} == {"open", "tf"}


def test_hoigen_csv_field_by_field(runs, rows, tmp_path):
    do_export(runs["hoigen"], "hoigen", tmp_path, 0.0)
    with open(tmp_path / "hoigen_caption_info.train.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert list(out[0]) == ["video_path", "caption", "hoi_categories", "source", "duration", "fps", "width", "height",
                            "aesthetic", "flow", "ocr_boxes", "moe_branch", "clip_id", "split", "start", "end"]
    manifest = by_clip(rows["hoigen"])
    assert sorted(r["clip_id"] for r in out) == sorted(manifest)
    for rec in out:
        row = manifest[rec["clip_id"]]
        assert rec["video_path"] == row["video_uri"] and rec["caption"] == row["caption_text"]
        assert rec["hoi_categories"] == "lift a bar; hold a cup"
        assert float(rec["duration"]) == pytest.approx(row["end_s"] - row["start_s"])
        assert float(rec["fps"]) == row["probe_fps_avg"] == 25
        assert (int(rec["width"]), int(rec["height"])) == (row["probe_width"], row["probe_height"]) == (320, 240)
        assert float(rec["flow"]) == row["motion_score"] > 0
        assert rec["aesthetic"] == rec["ocr_boxes"] == rec["moe_branch"] == ""  # stages that did not run: empty


def test_actionart_field_by_field(runs, rows, tmp_path):
    do_export(runs["actionart"], "actionart", tmp_path, 0.0)
    manifest = by_clip(rows["actionart"])
    pose = read_jsonl(tmp_path / "actionart_pose.train.jsonl")
    spatial = read_jsonl(tmp_path / "actionart_spatial.train.jsonl")
    qa = read_jsonl(tmp_path / "actionart_qa.train.jsonl")
    assert len(read_jsonl(tmp_path / "actionart_captions.train.jsonl")) == 4
    for clip_id, row in manifest.items():
        ann = json.loads(row["annotate_json"])
        assert [{k: r[k] for k in ("frame_index", "time", "text")} for r in pose if r["clip_id"] == clip_id] == \
            ann["pose_descriptions"] and ann["pose_descriptions"]
        assert [{k: r[k] for k in ("frame_a", "frame_b", "time_a", "time_b", "text")} for r in spatial
                if r["clip_id"] == clip_id] == ann["spatial_differences"]
        mine = [r for r in qa if r["clip_id"] == clip_id]
        assert [(r["subtask"], r["question"], r["answer"]) for r in mine] == \
            [(q["subtask"], q["question"], q["answer"]) for q in ann["questions"]]
        assert all(r["options"][0].startswith("(A) ") and len(r["options"]) == 4 for r in mine)
        assert all(r["video"] == row["video_uri"] for r in pose + spatial + qa if r["clip_id"] == clip_id)
    card = (tmp_path / "README.md").read_text()
    assert "| direction | 4 |" in card


def test_parquet_loads_with_datasets(runs, rows, share, tmp_path):
    import datasets

    do_export(runs["haic"], "parquet", tmp_path, share)
    loaded = datasets.load_dataset("parquet", data_files={s: str(tmp_path / "parquet" / f"{s}.parquet")
                                                           for s in ("train", "test")},
                                   cache_dir=str(tmp_path.parent / "hf"))
    assert {s: loaded[s].num_rows for s in loaded} == {"train": 4, "test": 4}
    manifest = by_clip(rows["haic"])
    for split in ("train", "test"):
        for rec in loaded[split]:
            row = manifest[rec["clip_id"]]
            assert rec["split"] == split and rec["caption"] == row["mome_caption"]
            assert rec["caption_source"] == "mome_caption" and rec["clip_method"] == "none"
            assert rec["annotate_json"] == row["annotate_json"] and rec["motion_score"] == row["motion_score"]
            assert rec["start_s"] == row["start_s"] and rec["duration_s"] == pytest.approx(row["end_s"] - row["start_s"])
            assert rec["license"] == {"a": "CC BY 4.0", "b": "CC BY 4.0", "c": "CC0", "d": None}[
                row["video_uri"][-5]]
            assert "status" not in rec and "scenes_kept_frame_times" not in rec  # flat: no per-frame lists


def frames_of(source, start: int | None = None, stop: int | None = None) -> list[np.ndarray]:
    with av.open(source) as container:
        frames = [f.to_ndarray(format="rgb24").astype(np.int16) for f in container.decode(video=0)]
    return frames[start:stop]


def check_clip_file(data: bytes, row: dict) -> None:
    """The clip decodes to the manifest's span: its frame count, its duration within one frame, and each frame the
    source's frame at that place (nearer to it than to the source's neighbouring frames)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        decoded = [(f.time, f.to_ndarray(format="rgb24").astype(np.int16)) for f in container.decode(stream)]
    n = row["scenes_end_frame"] - row["scenes_start_frame"]
    assert len(decoded) == n == row["scenes_frame_count"]
    assert decoded[0][0] == pytest.approx(0, abs=1e-6)
    assert abs(decoded[-1][0] + 1 / 25 - (row["end_s"] - row["start_s"])) < 1 / 25
    source = frames_of(row["video_uri"], max(0, row["scenes_start_frame"] - 1), row["scenes_end_frame"] + 1)
    offset = 1 if row["scenes_start_frame"] > 0 else 0
    for i, (_, image) in enumerate(decoded):
        diffs = {j: float(np.abs(image - source[i + offset + j]).mean()) for j in (-1, 0, 1)
                 if 0 <= i + offset + j < len(source)}
        assert min(diffs, key=diffs.get) == 0 and diffs[0] < 4, (row["clip_id"], i, diffs)


def test_webdataset_with_copied_clips_iterates_and_decodes_to_the_spans(runs, rows, share, tmp_path):
    import webdataset as wds

    result = do_export(runs["haic"], "webdataset", tmp_path, share, clips="copy", samples_per_shard=3)
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "webdataset").iterdir()) == [
        "webdataset/test-000000.tar", "webdataset/test-000001.tar", "webdataset/train-000000.tar",
        "webdataset/train-000001.tar"]
    manifest = by_clip(rows["haic"])
    seen = {}
    for split in ("train", "test"):
        urls = sorted(str(p) for p in (tmp_path / "webdataset").glob(f"{split}-*.tar"))
        for sample in wds.WebDataset(urls, shardshuffle=False).decode():
            meta = sample["json"]
            assert sample["__key__"] == meta["clip_id"] and meta["split"] == split
            assert meta["video"] == f"{meta['clip_id']}.mp4" and meta["caption"] == manifest[meta["clip_id"]][
                "mome_caption"]
            check_clip_file(sample["mp4"], manifest[meta["clip_id"]])
            seen[meta["clip_id"]] = meta["clip_method"]
    assert sorted(seen) == sorted(manifest)
    # a/b keyframes every 20/30 frames: a's two spans and b's first are copied exactly; b's second (frame 40 is no
    # keyframe) and c/d's are re-encoded (x264's own keyframes)
    methods = {(manifest[c]["video_uri"][-5], manifest[c]["start_s"]): m for c, m in seen.items()}
    assert methods[("a", 0.0)] == methods[("a", 1.6)] == "copy" and methods[("b", 1.6)] == "encode"
    assert result.stats["clip_methods"] == dict(sorted(Counter(seen.values()).items()))
    assert result.stats["copy_fallbacks"]["the span does not start on a keyframe"] >= 1


def test_encoded_clip_files_decode_to_the_spans(runs, rows, tmp_path):
    result = do_export(runs["plain"], "hmi", tmp_path, 0.0, clips="encode")
    recs = read_jsonl(tmp_path / "hmi.train.jsonl")
    manifest = by_clip(rows["plain"])
    assert len(recs) == 4 and not any("gone" in r["video"] for r in recs)
    assert result.stats["clip_methods"] == {"encode": 4}
    # the two clips whose source was deleted after the run: left out, counted, each with its reason
    assert result.stats["left_out"] == {"clip_file_error": 2, "pipeline_error": 1}
    assert [e["error"] for e in result.stats["clip_errors"]] == [f"FileNotFoundError: no such file: "
                                                                 f"{runs['plain'].parent}/videos/street/gone.mp4"] * 2
    assert "| clip_file_error | 2 | the clip file could not be cut |" in (tmp_path / "README.md").read_text()
    for rec in recs:
        assert rec["video"] == f"clips/{rec['clip_id']}.mp4"
        check_clip_file((tmp_path / rec["video"]).read_bytes(), manifest[rec["clip_id"]])


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_exports_are_byte_identical(runs, share, tmp_path):
    for fmt, clips in (("webdataset", "copy"), ("parquet", "encode")):
        first, second = tmp_path / f"{fmt}1", tmp_path / f"{fmt}2"
        do_export(runs["haic"], fmt, first, share, clips=clips)
        do_export(runs["haic"], fmt, second, share, clips=clips, workers=1)
        a, b = tree(first), tree(second)
        assert a.keys() == b.keys() and len(a) > 3
        assert [k for k in a if a[k] != b[k]] == []
        if fmt == "parquet":
            assert len([k for k in a if k.startswith("clips/")]) == 8
    # exporting again into the same folder replaces the earlier export, files it no longer makes included
    do_export(runs["haic"], "parquet", first, 0.0)
    assert sorted(tree(first)) == ["README.md", "export.json", "parquet/train.parquet"]


def test_export_to_s3_through_the_cli(runs, share, tmp_path, monkeypatch):
    from s3server import MotoServer

    with MotoServer() as s3:
        s3.create_bucket("datasets")
        done = subprocess.run([*ACTCURATE, "export", str(runs["haic"]), "--format", "haic", "--to",
                               "s3://datasets/haic v1", "--test-share", str(share), "--clips", "encode"],
                              capture_output=True, text=True, timeout=300, env={**os.environ, **s3.env})
        assert done.returncode == 0, done.stderr
        assert "exported 8 clips (train 4, test 4) as haic to s3://datasets/haic v1" in done.stdout
        client = s3.client()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="datasets")["Contents"])
        assert len([k for k in keys if k.startswith("haic v1/clips/")]) == 8
        assert {"haic v1/README.md", "haic v1/export.json", "haic v1/haic_captions.train.jsonl",
                "haic v1/haic_bench_qa.test.jsonl"} <= set(keys)
        body = client.get_object(Bucket="datasets", Key="haic v1/haic_captions.test.jsonl")["Body"].read()
        assert all(r["video"].startswith("clips/") for r in map(json.loads, body.decode().splitlines()))
        summary = json.loads(client.get_object(Bucket="datasets", Key="haic v1/export.json")["Body"].read())
        assert sorted(summary["files"]) == sorted(k.removeprefix("haic v1/") for k in keys)
        # webdataset shards go up from a spooled file; then both exports again to a local folder: the same files,
        # byte for byte
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        do_export(runs["haic"], "webdataset", "s3://datasets/wds", share, clips="copy", samples_per_shard=3)
        for prefix, fmt, clips in (("haic v1/", "haic", "encode"), ("wds/", "webdataset", "copy")):
            do_export(runs["haic"], fmt, tmp_path / fmt, share, clips=clips, samples_per_shard=3)
            local = tree(tmp_path / fmt)
            found = sorted(o["Key"] for o in client.list_objects_v2(Bucket="datasets", Prefix=prefix)["Contents"])
            assert sorted(local) == [k.removeprefix(prefix) for k in found] and len(found) > 3
            for key in found:
                assert client.get_object(Bucket="datasets", Key=key)["Body"].read() == local[key.removeprefix(prefix)]


def test_review_verdicts_leave_clips_out_and_edited_captions_win(runs, rows, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(runs["haic"], out)
    ids = sorted(r["clip_id"] for r in rows["haic"])
    store = Store(str(out))
    reviews.append_reviews(store, [{"clip_id": ids[0], "reviewer": "ana", "verdict": "reject",
                                    "reason": "no_action"}])
    reviews.append_reviews(store, [{"clip_id": ids[1], "reviewer": "ana", "verdict": "reject", "reason": "other"},
                                   {"clip_id": ids[2], "reviewer": "ben", "verdict": "caption",
                                    "caption": "A man claps twice, then waves.", "caption_version": 1}])
    reviews.append_reviews(store, [{"clip_id": ids[1], "reviewer": "ben", "verdict": "accept"}])  # the later wins
    result = do_export(out, "parquet", tmp_path / "x", 0.0)
    table = pq.read_table(tmp_path / "x" / "parquet" / "train.parquet").to_pylist()
    assert sorted(r["clip_id"] for r in table) == ids[1:]
    edited = next(r for r in table if r["clip_id"] == ids[2])
    assert (edited["caption"], edited["caption_source"]) == ("A man claps twice, then waves.", "review")
    assert result.stats["left_out"] == {"review_rejected": 1}
    card = (tmp_path / "x" / "README.md").read_text()
    assert "1 clips left out by review; 1 exported captions are reviewers' edits" in card


def test_user_errors_are_one_line(runs, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    busy = subprocess.run([*ACTCURATE, "export", str(runs["plain"]), "--format", "haic", "--to", tmp_path / "busy"],
                          capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and busy.stderr.strip().count("\n") == 0 and "not empty" in busy.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    missing = subprocess.run([*ACTCURATE, "export", str(tmp_path / "nope"), "--format", "haic", "--to",
                              tmp_path / "o"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "not an actcurate output" in missing.stderr and "Traceback" not in missing.stderr


def test_mapping_table_is_complete_and_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert mapping_markdown() in readme  # the README's table is the code's, row for row
    rows = mapping_rows()
    assert {r["format"] for r in rows} == {"haic", "hmi", "hoigen", "actionart", "webdataset", "parquet"}
    assert any(r["ours"] for r in rows) and any(not r["ours"] for r in rows)
    assert {spec.stem for specs in MAPPING.values() for spec in specs} >= {"haic_captions", "haic_bench_qa", "hmi",
                                                                             "hoigen_caption_info", "actionart_qa"}


def test_clip_files_keep_the_display_rotation(tmp_path):
    from manifests.export_clips import cut_clip

    source = media.make_video(tmp_path / "rot.mp4", segments=(40, 40), fps=25, gop=20, rotation=90)
    for method in ("copy", "encode"):
        made = cut_clip(str(source), 1.6, 3.2, method, 40)
        (tmp_path / f"{method}.mp4").write_bytes(made.data)
        assert made.method == method and made.frames == 40
        assert media.read_rotation(tmp_path / f"{method}.mp4") == 90  # a phone video stays upright
