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
from pathlib import Path

import av
import numpy as np
import pytest

import media
from fixtures_run import clip_rows
from fixtures_vlm import VlmServer
from manifests import reviews
from manifests.export import MAPPING, ExportOptions, export, mapping_rows, split_of, video_fraction
from pipeline.storage import Store

pytestmark = pytest.mark.slow
ACTCURATE = [sys.executable, "-m", "pipeline.cli"]
KEY = "sk-test-export-1234567890"
RECIPE = """
name: exporttest
stages:
  probe: {}
  scenes: {min_clip_s: 1.0}
  motion: {fps: 5.0}
  caption: {style: haic, max_frames: 4, concurrency: 4, batch_size: 2}
  mome: {style: haic, concurrency: 4, batch_size: 2}
"""
# Keyframes every 20 frames: both 40-frame scenes start on one (copy is exact); every 30: the second does not (copy
# falls back to encoding); x264's defaults: keyframes where it decides.
GOPS = {"studio/a.mp4": 20, "studio/b.mp4": 30, "street/c.mp4": None, "street/d.mp4": None}


def cli(*args, env=None):
    return subprocess.run([*ACTCURATE, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    for i, (name, gop) in enumerate(GOPS.items()):
        media.make_video(root / "videos" / name, segments=(40, 40), fps=25, gop=gop, seed=i)
    (root / "videos" / "list.csv").write_text(
        "uri,license,source\nstudio/a.mp4,CC BY 4.0,Studio set\nstudio/b.mp4,CC BY 4.0,Studio set\n"
        "street/c.mp4,CC0,\nstreet/d.mp4,,\n")
    (root / "r.yaml").write_text(RECIPE)
    out = root / "out"
    with VlmServer(api_key=KEY) as server:
        done = cli("run", "--recipe", root / "r.yaml", "--input", root / "videos" / "list.csv", "--output", out,
                   "--shard-size", "2", "--no-progress",
                   env={"ACTCURATE_VLM_BASE_URL": server.url, "ACTCURATE_VLM_API_KEY": KEY})
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def rows(run_out) -> list[dict]:
    return clip_rows(str(run_out))


@pytest.fixture(scope="module")
def share(rows) -> float:
    """A --test-share that puts two of the four videos in test (video ids follow the temporary folder's path)."""
    places = sorted({video_fraction(r["video_id"]) for r in rows})
    return round((places[1] + places[2]) / 2, 6)


def accepted(rows):
    return [r for r in rows if r["status"] == "accepted"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_files(folder: Path, stem: str, ext: str = "jsonl") -> dict[str, Path]:
    return {s: folder / f"{stem}.{s}.{ext}" for s in ("train", "test") if (folder / f"{stem}.{s}.{ext}").exists()}


def test_run_has_what_the_export_tests_need(rows, share):
    assert len(rows) == 8 and len(accepted(rows)) == 8
    assert sorted(split_of(r["video_id"], share) for r in rows).count("test") == 4
