"""Bounded memory: peak RSS of the driver and of every Ray process while the haic recipe (fixture models) runs a
generated one-hour 1080p video, and a batch of 4K clips, through the real engine.

    .venv/bin/python bench/memory.py [--quick] [--minutes 60] [--clips-4k 6] [--detector transnetv2|content|...]

Inputs are generated once into bench/.cache/ (git-ignored): 8 distinct 8 s scenes (textured backgrounds, a moving
bright square) encoded with x264 ultrafast, a keyframe every 2 s, then remuxed end to end up to the length, so an
hour costs seconds to write and cuts fall every 8 s (about 450 clips an hour). Each input runs in its own child
process (its own Ray), where a sampler thread reads the RSS of the driver and of every process under it (Ray's
raylet and GCS, and the workers: `ray::` processes) every --sample-s. Shared memory (Ray's object store) counts in
every process that maps it, so the sums overstate what the machine holds: the figures are upper bounds.

The haic recipe runs as written except: caption (and mome/annotate, where present) off (they need a VLM
endpoint), pose/aesthetic on fixture models (tests/fixtures_models.py, tests/fixtures_aesthetic.py), and every
reject rule off so every clip's frames travel through every stage (the worst case for memory). `--detector` swaps
the scene detector (haic's TransNetV2 costs about 20 ms of CPU a frame: 30 minutes for the hour on one core). The
stated cap: see `memory_cap_mb` below; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
CACHE = REPO / "bench" / ".cache" / "memory"
SCENE_S, GOP_S, FPS, SCENES = 8, 2, 25, 8
MB = 1024 * 1024
VLM_STAGES = ("caption", "mome", "annotate")  # off in the bench: they need a VLM endpoint


# -- inputs -----------------------------------------------------------------------------------------------------------
def _scene_segment(path: Path, index: int, width: int, height: int) -> Path:
    """One 8 s scene: a textured background of its own and a bright square crossing it (I420 built directly)."""
    import av
    import numpy as np

    if path.exists():
        return path
    rng = np.random.default_rng(index)
    y_bg = (rng.integers(30, 200, (height // 8, width // 8), dtype=np.uint8)
            .repeat(8, 0).repeat(8, 1)[:height, :width])
    u_val, v_val = (int(x) for x in rng.integers(60, 196, 2))
    square = max(16, height // 6)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(GOP_S * FPS), "keyint_min": str(GOP_S * FPS),
                          "sc_threshold": "0"}
        for t in range(SCENE_S * FPS):
            i420 = np.empty((height * 3 // 2, width), np.uint8)
            i420[:height] = y_bg
            i420[height:height + height // 4] = u_val
            i420[height + height // 4:] = v_val
            x = (t * (width - square)) // (SCENE_S * FPS)
            y = (height - square) // 2 + (index * 37) % max(1, (height - square) // 2)
            i420[y:y + square, x:x + square] = 235
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    tmp.rename(path)
    return path


def make_input(path: Path, seconds: float, width: int, height: int) -> Path:
    """The 8 scenes remuxed end to end (cycling) up to `seconds`: same encoder settings, so one stream."""
    import av

    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    segments = [_scene_segment(CACHE / f"scene{width}x{height}-{k}.mp4", k, width, height) for k in range(SCENES)]
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(segments[0])) as first, av.open(str(tmp), "w") as out:
        template = first.streams.video[0]
        stream = out.add_stream_from_template(template)
        offset, k = 0, 0
        total = round(seconds / SCENE_S)
        for n in range(total):
            with av.open(str(segments[n % SCENES])) as source:
                src = source.streams.video[0]
                last = 0
                for packet in source.demux(src):
                    if packet.dts is None:
                        continue
                    packet.pts += offset
                    packet.dts += offset
                    last = max(last, packet.pts + (packet.duration or 0))
                    packet.stream = stream
                    out.mux(packet)
                    k += 1
                offset = last
    tmp.rename(path)
    return path


# -- the measure (in a child process) ------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """Peak RSS of this process (the driver), of the `ray::` workers and of all processes under the driver; and
    the same without double counting: each process's private memory (RSS less its shared pages) plus the largest
    shared share of any one process (Ray's object store, mapped by every worker that touches it)."""

    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.every_s = psutil, every_s
        self.me = psutil.Process()
        self.peaks = {"driver": 0, "workers": 0, "total": 0, "private": 0, "shared": 0, "deduplicated": 0}
        self.series: list[tuple[float, int]] = []  # (elapsed s, total bytes)
        self.stop = threading.Event()
        self.started = time.monotonic()

    def sample(self) -> None:
        info = self.me.memory_info()
        driver, private, shared = info.rss, info.rss - info.shared, info.shared
        workers = others = 0
        for proc in self.me.children(recursive=True):
            try:
                info = proc.memory_info()
                name = proc.name()
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            if name.startswith("ray::"):
                workers += info.rss
            else:
                others += info.rss
            private += info.rss - info.shared
            shared = max(shared, info.shared)
        total = driver + workers + others
        for key, value in (("driver", driver), ("workers", workers), ("total", total), ("private", private),
                           ("shared", shared), ("deduplicated", private + shared)):
            self.peaks[key] = max(self.peaks[key], value)
        self.series.append((time.monotonic() - self.started, private + shared))

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()


def measure(input_dir: str, detector: str | None, chunk_mb: int, sample_s: float) -> dict:
    import yaml

    import fixtures_models as fm
    from fixtures_aesthetic import make_tiny_aesthetic
    from pipeline.recipe import build_recipe, recipe_path
    from pipeline.run import RunOptions, run

    with tempfile.TemporaryDirectory(prefix="acs-memory-") as tmp:
        tmp = Path(tmp)
        models = fm.make_model_dir(tmp / "models")
        (tmp / "aesthetic").mkdir()
        tiny = make_tiny_aesthetic(tmp / "aesthetic", "actcurate-tiny-clip-membench")
        doc = yaml.safe_load(recipe_path("haic").read_text())
        stages = doc["stages"]
        for name in VLM_STAGES:
            stages.pop(name, None)
        stages["probe"].update(min_short_side=None, min_duration_s=None)
        stages["scenes"].update(min_clip_s=0.0, **({"detector": detector} if detector else {}))
        stages["pose"].update(det_model=str(models / "yolox_l.onnx"), pose_model=str(models / "dw-ll_ucoco_384.onnx"),
                              min_persons=None, min_person_area=None, min_motion=None)
        stages["aesthetic"] = {**stages["aesthetic"], "clip_model": str(tiny["config"]),
                               "clip_weights": str(tiny["checkpoint"]), "head_weights": str(tiny["head"]),
                               "device": "cpu"}
        recipe = build_recipe(doc, source="haic (bench/memory.py)")
        sampler = Sampler(sample_s)
        sampler.sample()
        sampler.start()
        started = time.monotonic()
        # Ray explicitly: `auto` would run one pending video in this process, and the figure is the Ray engine's
        result = run(RunOptions(recipe=recipe, input=input_dir, output=str(tmp / "out"), progress=False,
                                chunk_bytes=chunk_mb * MB, executor="ray"))
        seconds = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
        from fixtures_run import clip_rows

        rows = clip_rows(str(tmp / "out"))
        levels = recipe.stages[1].build().keep_requests()
        import ray

        object_store = ray.cluster_resources().get("object_store_memory", 0.0)
    quarters = [0, 0, 0, 0]
    for t, total in sampler.series:
        q = min(3, int(4 * t / max(sampler.series[-1][0], 1e-9)))
        quarters[q] = max(quarters[q], total)
    return {
        "seconds": round(seconds, 1),
        "clips": len(rows),
        "accepted": sum(r["status"] == "accepted" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows),
        "pending_shards": len(result.shards_pending),
        "peak_rss_driver_mb": round(sampler.peaks["driver"] / MB),
        "peak_rss_workers_mb": round(sampler.peaks["workers"] / MB),
        "peak_total_mb": round(sampler.peaks["total"] / MB),
        "peak_private_mb": round(sampler.peaks["private"] / MB),
        "peak_shared_mb": round(sampler.peaks["shared"] / MB),
        "peak_deduplicated_mb": round(sampler.peaks["deduplicated"] / MB),
        # of private + shared, per quarter of the run: flat, not rising, when memory is bounded
        "peak_by_quarter_mb": [round(q / MB) for q in quarters],
        "levels": [[r.fps, r.max_side] for r in levels],
        "object_store_mb": round(object_store / MB),
    }


def frame_bytes_per_second(levels: list[list[float]], width: int, height: int) -> float:
    """Kept bytes per second of clip for a video of this size (the scenes stage's level sizes)."""
    from stages.scenes import _keep_size

    return sum(fps * 3 * (lambda s: s[0] * s[1])(_keep_size(width, height, 1.0, side)) for fps, side in levels)


def memory_cap_mb(levels: list[list[float]], chunk_mb: int, max_clip_s: float, fixed_mb: int,
                  object_store_mb: float) -> dict:
    """The stated cap. None of its terms grows with a video's length or its number of clips:
      fixed: Python, Ray's own processes and idle workers, the stage workers with their models (--fixed-mb; the
        4K batch, where few frames are in flight, measures it);
      object store: Ray Data lets the parts queued between stages take at most half of Ray's object store
        (ray.data ResourceManager.DEFAULT_OBJECT_STORE_MEMORY_LIMIT_FRACTION = 0.5; Ray sizes the store at 30% of
        the node's memory), whatever the input;
      worker heaps: scenes' open span (at most 2 x max_clip_s + 2 s of kept frames) and its part buffer (one part:
        chunk_bytes + one clip), and per frame-reading stage one batch of parts unpickled in and pickled out
        (2 x batch_size x part),
    at the kept sizes of a 4K input (kept frames are bounded by each level's max_side, so 1080p keeps almost as
    much)."""
    from pipeline.recipe import load_recipe

    per_s = frame_bytes_per_second(levels, 3840, 2160)
    part = chunk_mb * MB + max_clip_s * per_s
    recipe = load_recipe("haic")
    readers = [s for s in recipe.stages
               if s.build().frame_request() is not None and s.name not in VLM_STAGES]
    heaps = (2 * max_clip_s + 2) * per_s + part + sum(2 * s.build().resources.batch_size * part for s in readers)
    store = 0.5 * object_store_mb
    return {"fixed_mb": fixed_mb, "object_store_budget_mb": round(store), "worker_frames_mb": round(heaps / MB),
            "cap_mb": round(fixed_mb + store + heaps / MB), "kept_mb_per_clip_second": round(per_s / MB, 2)}


def child(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode:
        raise SystemExit(f"measure failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        input_dir, detector, chunk_mb, sample_s = sys.argv[2:6]
        print(json.dumps(measure(input_dir, detector or None, int(chunk_mb), float(sample_s))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a 10-minute video and two 16 s 4K clips")
    parser.add_argument("--minutes", type=float, default=None, help="length of the long 1080p video (60)")
    parser.add_argument("--clips-4k", type=int, default=None, help="4K clips in the batch (6; --quick 2)")
    parser.add_argument("--clip-4k-s", type=float, default=None, help="length of each 4K clip (20 s; --quick 16)")
    parser.add_argument("--detector", default="", help="scenes.detector override (default: haic's transnetv2)")
    parser.add_argument("--chunk-mb", type=int, default=64, help="the engine's part size (chunk_bytes)")
    parser.add_argument("--fixed-mb", type=int, default=4096, help="the cap's fixed allowance (see memory_cap_mb)")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--only", choices=["long", "4k"], default=None)
    args = parser.parse_args()
    minutes = args.minutes or (10 if args.quick else 60)
    clips_4k = args.clips_4k or (2 if args.quick else 6)
    clip_4k_s = args.clip_4k_s or (16 if args.quick else 20)

    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    long_dir = CACHE / f"long-{minutes:g}min"
    long_dir.mkdir(exist_ok=True)
    make_input(long_dir / "long1080p.mp4", minutes * 60, 1920, 1080)
    batch_dir = CACHE / f"4k-{clips_4k}x{clip_4k_s:g}s"
    batch_dir.mkdir(exist_ok=True)
    for k in range(clips_4k):
        make_input(batch_dir / f"clip{k}.mp4", clip_4k_s, 3840, 2160)
    print(f"inputs ready in {time.monotonic() - started:.0f} s (cached in {CACHE})", file=sys.stderr)

    figures: dict = {}
    inputs = {"long": (long_dir, f"{minutes:g}-minute 1920x1080 h264"),
              "4k": (batch_dir, f"{clips_4k} x {clip_4k_s:g} s 3840x2160 h264")}
    for name, (folder, label) in inputs.items():
        if args.only and name != args.only:
            continue
        figures[name] = child(str(folder), args.detector, str(args.chunk_mb), str(args.sample_s))
        f = figures[name]
        print(f"{label}: {f['clips']} clips in {f['seconds']} s; peak RSS driver {f['peak_rss_driver_mb']} MB, "
              f"workers {f['peak_rss_workers_mb']} MB, all processes {f['peak_total_mb']} MB (shared pages counted "
              f"in each); without double counting {f['peak_deduplicated_mb']} MB (private {f['peak_private_mb']} + "
              f"shared {f['peak_shared_mb']}; by quarter of the run: {f['peak_by_quarter_mb']})", file=sys.stderr)
    levels = next(iter(figures.values()))["levels"]
    object_store_mb = max(f["object_store_mb"] for f in figures.values())
    cap = memory_cap_mb(levels, args.chunk_mb, 30.0, args.fixed_mb, object_store_mb)
    peak_total = max(f["peak_total_mb"] for f in figures.values())
    peak = max(f["peak_deduplicated_mb"] for f in figures.values())
    print(f"cap {cap['cap_mb']} MB = fixed {cap['fixed_mb']} MB + Ray Data's object store budget "
          f"{cap['object_store_budget_mb']} MB + frames in worker heaps {cap['worker_frames_mb']} MB "
          f"({cap['kept_mb_per_clip_second']} MB kept per second of clip at levels {levels}); "
          f"peak {peak} MB: {'held' if peak <= cap['cap_mb'] else 'EXCEEDED'}", file=sys.stderr)
    print(json.dumps({
        "peak_rss_driver_mb": max(f["peak_rss_driver_mb"] for f in figures.values()),
        "peak_rss_workers_mb": max(f["peak_rss_workers_mb"] for f in figures.values()),
        "peak_total_mb": peak_total,
        "memory_cap_mb": cap["cap_mb"],
        "cap": cap,
        "peak_deduplicated_mb": peak,
        "held": peak <= cap["cap_mb"],
        "detector": args.detector or "transnetv2 (haic)",
        "chunk_mb": args.chunk_mb,
        "inputs": {name: {"label": inputs[name][1], **f} for name, f in figures.items()},
    }))


if __name__ == "__main__":
    main()
