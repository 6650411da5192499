"""Peak memory of `actcurate audit`, `audit --html` and `actcurate export` against the size of the run.

A finished haic run of N accepted clips (25 two-second clips a video, 64 videos a shard, each clip with a 600-character
caption, a caption model and scores; no per-frame lists), committed through the engine's commit path with the test
fixture `accepted_run`, cached under bench/.cache/audit_export/. Each command runs in its own process; the figure is
that process's peak RSS (GNU time's %M) and its wall time. `--code DIR` runs the commands from
another checkout of the project (to compare with an earlier commit). The last line is one JSON object.

    .venv/bin/python bench/audit_export_memory.py [--clips 20000,200000] [--code DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
CACHE = REPO / "bench" / ".cache" / "audit_export"
CLIPS_PER_VIDEO = 25
SHARD_SIZE = 64
CAPTION = "A man in a grey shirt lifts a barbell from the floor to his shoulders, pauses, then presses it up. " * 6


def columns(video: int, clip: int) -> dict:
    return {"caption_text": f"{video}/{clip} {CAPTION}", "caption_model": "Qwen/Qwen2.5-VL-7B-Instruct",
            "aesthetic_score": 4.0 + (video * 7 + clip) % 30 / 10, "motion_score": 0.01 * (1 + clip % 9),
            "ocr_text_boxes": clip % 3, "probe_width": 1280, "probe_height": 720, "probe_fps_avg": 30.0}


def finished_run(clips: int) -> Path:
    out = CACHE / f"run-{clips}" / "out"
    if (out / "run.json").exists():
        return out
    from fixtures_run import accepted_run

    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    start = time.perf_counter()
    accepted_run(str(out), out.parent, clips // CLIPS_PER_VIDEO, SHARD_SIZE, CLIPS_PER_VIDEO, columns)
    print(f"made a run of {clips} clips in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


def measure(code: Path, *args: str) -> dict:
    """One CLI command in a fresh process: its wall time and its own peak RSS. GNU time reports it: a child forked
    from this (large) process would inherit this process's high-water mark in its own ru_maxrss."""
    if not Path("/usr/bin/time").exists():
        raise SystemExit("this bench needs GNU time (/usr/bin/time; Debian package `time`)")
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "pipeline.cli", *args], cwd=code,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(code)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr[-500:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(int(proc.stderr.split()[-1]) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", default="20000,200000")
    parser.add_argument("--code", default=str(REPO), help="a checkout whose CLI to measure")
    args = parser.parse_args()
    code = Path(args.code).resolve()
    figures: dict = {"code": str(code)}
    for clips in sorted(int(c) for c in args.clips.split(",")):
        out = finished_run(clips)
        with tempfile.TemporaryDirectory(prefix="acs-export-") as tmp:
            row = {
                "audit": measure(code, "audit", str(out), "--json"),
                "audit_html": measure(code, "audit", str(out), "--html", f"{tmp}/report.html"),
                "export_haic": measure(code, "export", str(out), "--format", "haic", "--to", f"{tmp}/haic"),
                "export_parquet": measure(code, "export", str(out), "--format", "parquet", "--to", f"{tmp}/pq"),
            }
        figures[clips] = row
        print(f"{clips} clips: " + ", ".join(f"{k} {v['peak_rss_mb']} MB / {v['seconds']} s" for k, v in row.items()),
              file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
