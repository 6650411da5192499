"""Clip files for `actcurate export`: seconds per clip and bytes of `copy` (stream copy where exact) against
`encode` (libx264 re-encode), on generated H.264 videos whose scenes start on keyframes (copy is exact for all).

    .venv/bin/python bench/export_clips.py [--videos N] [--repeats R]

Prints a table, then one JSON line: seconds per clip for each method, copy's speed-up over encode, and the size
ratio. Single-threaded encoder (fixed for byte-identical exports): run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import media  # noqa: E402
from manifests.export_clips import cut_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    fps, scene = 25, 100  # four 4 s scenes per video, a keyframe at every scene start
    with tempfile.TemporaryDirectory() as tmp:
        spans = []
        for i in range(args.videos):
            path = media.make_video(Path(tmp) / f"v{i}.mp4", width=640, height=360, fps=fps,
                                    segments=(scene,) * 4, gop=scene, seed=i)
            spans += [(str(path), k * scene / fps, (k + 1) * scene / fps) for k in range(4)]
        figures = {}
        for method in ("copy", "encode"):
            best, size, used = float("inf"), 0, set()
            for _ in range(args.repeats):
                started = time.perf_counter()
                files = [cut_clip(uri, a, b, method, scene) for uri, a, b in spans]
                best = min(best, time.perf_counter() - started)
                size, used = sum(len(f.data) for f in files), {f.method for f in files}
            figures[method] = {"s_per_clip": round(best / len(spans), 4), "bytes_per_clip": size // len(spans),
                               "methods": sorted(used)}
            print(f"{method:7s} {best / len(spans) * 1000:8.1f} ms/clip  {size // len(spans):9d} bytes/clip  "
                  f"used {sorted(used)}")
    result = {"clips": len(spans), "frames_per_clip": scene, "size": "640x360", **figures,
              "copy_speedup_vs_encode": round(figures["encode"]["s_per_clip"] / figures["copy"]["s_per_clip"], 1),
              "size_ratio_encode_vs_copy": round(figures["encode"]["bytes_per_clip"] / figures["copy"]["bytes_per_clip"], 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
