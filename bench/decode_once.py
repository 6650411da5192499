"""CPU cost of probe+scenes (one decode pass, frame sampling on) against a bare decode and PySceneDetect's CLI.

For every video it measures CPU seconds of
  ours:        ProbeStage + ScenesStage(keep_fps=2, keep_max_side=512, min_clip_s=2, max_clip_s=10), no Ray, with
               the threads a worker of --worker-cpus CPUs runs (1: a scenes task on Ray, the default);
  decode:      a plain PyAV decode of every frame on the same threads: the floor;
  decode_auto: the same decode on every core (thread_type AUTO; ours' threading before worker threads);
  scenedetect: `scenedetect -i VIDEO -b pyav -m 15 -q detect-content` as a subprocess (and the opencv backend;
               both decode on every core, PySceneDetect's default).
It also checks that our cut frames agree with PySceneDetect's within CUT_TOLERANCE frames.

Inputs are the shared real clips (--videos) plus generated longer videos, written once into --cache and reused.
The last printed line is one JSON object with ratio_vs_decode and ratio_vs_scenedetect (sums of CPU seconds).

    .venv/bin/python bench/decode_once.py [--quick] [--repeats N] [--no-opencv] [--detect-input exact|checked|sampled]
        [--worker-cpus N]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.clip import Clip, video_id_for  # noqa: E402
from stages.probe import ProbeStage  # noqa: E402
from pipeline.video import set_decoder_threads  # noqa: E402
from stages.scenes import ScenesParams, ScenesStage  # noqa: E402

SCENEDETECT = str(Path(sys.executable).with_name("scenedetect"))
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov"}
CUT_TOLERANCE = 2  # frames: the two detectors downscale slightly differently, so scores differ a little
OURS_PARAMS = ScenesParams(keep_fps=2.0, keep_max_side=512, min_clip_s=2.0, max_clip_s=10.0)
# PySceneDetect's CLI defaults to -m 0.6s; give it our detector's 15 frames so both run the same detector.
MIN_SCENE_LEN = str(OURS_PARAMS.min_scene_len_frames)


# -- generated videos -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenSpec:
    width: int
    height: int
    fps: int
    seconds: int
    seed: int

    @property
    def name(self) -> str:
        return f"gen_{self.width}x{self.height}_{self.fps}fps_{self.seconds}s_s{self.seed}.mp4"

    def scene_frames(self) -> list[int]:
        """Frames per scene: irregular lengths of 3-15 s, so cuts fall at no fixed period."""
        rng = np.random.default_rng(self.seed)
        total, lengths = self.seconds * self.fps, []
        while sum(lengths) < total:
            lengths.append(int(rng.uniform(3, 15) * self.fps))
        lengths[-1] -= sum(lengths) - total
        if lengths[-1] < 2 * self.fps:  # a stub of a last scene would be a cut too close to the end
            lengths[-2] += lengths.pop()
        return lengths

    def cuts(self) -> list[int]:
        return [int(c) for c in np.cumsum(self.scene_frames())[:-1]]


GENERATED = [GenSpec(640, 360, 25, 60, seed=1), GenSpec(1280, 720, 30, 60, seed=2)]
GENERATED_QUICK = [GenSpec(640, 360, 25, 20, seed=1)]


def _scene_canvas(rng: np.random.Generator, width: int, height: int, index: int) -> np.ndarray:
    """An RGB texture larger than the frame, to pan across: smooth blobs plus finer detail, like real footage.

    Neighbouring scenes differ by 60 degrees of hue and in brightness, so every scene change is a hard cut.
    """
    coarse = cv2.resize(rng.random((height // 48 + 2, width // 48 + 2), np.float32), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.random((height // 4, width // 4), np.float32), (width, height),
                      interpolation=cv2.INTER_LINEAR)
    hsv = np.empty((height, width, 3), np.uint8)
    hsv[..., 0] = ((index * 60 + 30 * coarse) % 180).astype(np.uint8)
    hsv[..., 1] = np.clip(110 + 110 * fine, 0, 255).astype(np.uint8)
    brightness = 200 if index % 2 == 0 else 120
    hsv[..., 2] = np.clip(brightness * (0.55 + 0.35 * coarse + 0.2 * fine), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _bounce(t: float, span: int) -> int:
    """A position moving back and forth over [0, span] with no jumps (a jump would be a fake cut)."""
    phase = t % 2.0
    return int(span * (phase if phase < 1.0 else 2.0 - phase))


def _render_scene(spec: GenSpec, index: int, frames: int, rng: np.random.Generator):
    """Frames of one scene: a panning camera, three moving discs and sensor-like grain (real decode work)."""
    w, h = spec.width, spec.height
    margin = w // 8
    canvas = _scene_canvas(rng, w + 2 * margin, h + 2 * margin, index)
    grain = [rng.integers(0, 7, (h, w, 3), np.uint8) for _ in range(6)]
    discs = [(rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5), tuple(int(c) for c in rng.integers(0, 256, 3)))
             for _ in range(3)]
    for i in range(frames):
        t = i / spec.fps
        x = int(margin * (1 + math.sin(2 * math.pi * t / 8)))
        y = int(margin * (1 + math.sin(2 * math.pi * t / 11)))
        image = canvas[y : y + h, x : x + w].copy()
        for speed_x, speed_y, color in discs:
            center = (_bounce(t * speed_x, w), _bounce(t * speed_y, h))
            cv2.circle(image, center, h // 10, color, -1, cv2.LINE_AA)
        image = cv2.subtract(cv2.add(image, grain[i % 6]), grain[(i * 5 + 3) % 6])
        yield image


def write_generated(spec: GenSpec, path: Path) -> None:
    """Encode the video with PyAV (h264 yuv420p); written under a temporary name so an interrupted run leaves none."""
    rng = np.random.default_rng(spec.seed)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=spec.fps, options={"preset": "medium", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        for index, frames in enumerate(spec.scene_frames()):
            for image in _render_scene(spec, index, frames, rng):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)


def generated_videos(specs: list[GenSpec], cache: Path) -> list[tuple[Path, list[int]]]:
    """The generated videos with their true cut frames, writing those not yet in the cache."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for spec in specs:
        path = cache / spec.name
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            write_generated(spec, path)
        out.append((path, spec.cuts()))
    return out


def shared_videos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        print(f"note: {folder} is absent; benchmarking generated videos only")
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)


# -- measurements -----------------------------------------------------------------------------------------------------
def cpu_ours(path: Path, probe: ProbeStage, scenes: ScenesStage) -> tuple[float, list[Clip]]:
    """Process CPU time (every thread, FFmpeg's decoder threads included) of probe then scenes on one video."""
    start = time.process_time()
    clip = Clip(video_id=video_id_for(str(path)), video_uri=str(path), shard_id="bench")
    probed = probe.process([clip])
    clips = list(scenes.iter_process(probed))
    return time.process_time() - start, clips


def cpu_decode(path: Path, threads: int) -> tuple[float, int]:
    start = time.process_time()
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        set_decoder_threads(stream, threads)
        for _ in container.decode(stream):
            frames += 1
    return time.process_time() - start, frames


def scenedetect_command(path: Path, backend: str, *extra: str) -> list[str]:
    return [SCENEDETECT, "-i", str(path), "-b", backend, "-m", MIN_SCENE_LEN, "-q", "detect-content", *extra]


def run_quietly(command: list[str]) -> None:
    """Run a command, its output discarded unless it fails: then its stderr ends the benchmark."""
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def cpu_child(command: list[str]) -> float:
    """User+system CPU seconds of one child process, from the RUSAGE_CHILDREN delta around its run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_quietly(command)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scenedetect_cuts(path: Path, backend: str) -> list[int]:
    """PySceneDetect's cut frames (0-based), from the CSV of one untimed run with list-scenes."""
    with tempfile.TemporaryDirectory() as tmp:
        run_quietly(scenedetect_command(path, backend, "list-scenes", "-s", "-o", tmp, "-f", "scenes.csv"))
        with open(Path(tmp) / "scenes.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    # The CSV's "Start Frame" is 1-based; a cut is the first frame of every scene after the first.
    return [int(row["Start Frame"]) - 1 for row in rows[1:]]


def our_cuts(clips: list[Clip]) -> list[int]:
    """Cut frames from our clips: the first frame of each scene after the first.

    Windows split long scenes but keep the scene index, so the timed run's clips give the cuts without a rerun.
    """
    first_frame: dict[int, int] = {}
    for clip in clips:
        index = clip.columns.get("scenes_scene_index")
        if index:
            first_frame.setdefault(index, clip.columns["scenes_start_frame"])
    return sorted(first_frame.values())


def cuts_agree(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= CUT_TOLERANCE for x, y in zip(a, b))


def best_interleaved(repeats: int, measures: dict[str, Callable[[], tuple]]) -> dict[str, tuple]:
    """Each measurement's run with the least CPU time (noise only ever adds time). The measurements take turns
    every round, so a burst of load from other processes hits all of them alike, not whichever ran during it."""
    best: dict[str, tuple] = {}
    for _ in range(repeats):
        for name, measure in measures.items():
            result = measure()
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    return best


# -- report -----------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    size: str
    frames: int
    ours_s: float
    decode_s: float
    decode_auto_s: float
    scenedetect_s: float
    scenedetect_opencv_s: float | None
    clips: int
    errors: int
    cuts_ours: list[int]
    cuts_scenedetect: list[int]
    cuts_expected: list[int] | None

    def as_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        out.update(ratio_vs_decode=_ratio(self.ours_s, self.decode_s),
                   ratio_vs_decode_auto=_ratio(self.ours_s, self.decode_auto_s),
                   ratio_vs_scenedetect=_ratio(self.ours_s, self.scenedetect_s),
                   cuts_agree=cuts_agree(self.cuts_ours, self.cuts_scenedetect))
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def measure_video(path: Path, expected: list[int] | None, args, probe, scenes) -> Row:
    measures = {
        "ours": lambda: cpu_ours(path, probe, scenes),
        "decode": lambda: cpu_decode(path, scenes.worker_threads()),
        "decode_auto": lambda: cpu_decode(path, 0),
        "pyav": lambda: (cpu_child(scenedetect_command(path, "pyav")),),
    }
    if args.opencv:
        measures["opencv"] = lambda: (cpu_child(scenedetect_command(path, "opencv")),)
    best = best_interleaved(args.repeats, measures)
    (ours_s, clips), (decode_s, frames), (sd_s,) = best["ours"], best["decode"], best["pyav"]
    decode_auto_s = best["decode_auto"][0]
    sd_cv_s = best["opencv"][0] if args.opencv else None
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        size = f"{ctx.width}x{ctx.height}"
    return Row(
        name=path.name, size=size, frames=frames, ours_s=ours_s, decode_s=decode_s, decode_auto_s=decode_auto_s,
        scenedetect_s=sd_s,
        scenedetect_opencv_s=sd_cv_s, clips=len(clips), errors=sum(c.status == "error" for c in clips),
        cuts_ours=our_cuts(clips), cuts_scenedetect=scenedetect_cuts(path, "pyav"), cuts_expected=expected,
    )


def print_table(rows: list[Row], totals: dict) -> None:
    header = (f"{'video':<46} {'size':>9} {'frames':>6} {'ours s':>7} {'decode s':>8} {'auto s':>7} "
              f"{'sd-pyav s':>9} {'sd-cv s':>7} {'/decode':>7} {'/auto':>5} {'/sd-pyav':>8} {'/sd-cv':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        cv_ratio = _ratio(r.ours_s, r.scenedetect_opencv_s) if r.scenedetect_opencv_s else None
        print(f"{r.name[:46]:<46} {r.size:>9} {r.frames:>6} {r.ours_s:>7.3f} {r.decode_s:>8.3f} "
              f"{r.decode_auto_s:>7.3f} {r.scenedetect_s:>9.3f} {_fmt(r.scenedetect_opencv_s):>7} "
              f"{_ratio(r.ours_s, r.decode_s):>7.2f} {_ratio(r.ours_s, r.decode_auto_s):>5.2f} "
              f"{_ratio(r.ours_s, r.scenedetect_s):>8.2f} {_fmt(cv_ratio, 2):>6}")
    print("-" * len(header))
    t = totals
    print(f"{'TOTAL':<46} {'':>9} {t['frames']:>6} {t['ours_s']:>7.3f} {t['decode_s']:>8.3f} "
          f"{t['decode_auto_s']:>7.3f} {t['scenedetect_s']:>9.3f} {_fmt(t.get('scenedetect_opencv_s')):>7} "
          f"{t['ratio_vs_decode']:>7.2f} {t['ratio_vs_decode_auto']:>5.2f} "
          f"{t['ratio_vs_scenedetect']:>8.2f} {_fmt(t.get('ratio_vs_scenedetect_opencv'), 2):>6}")


def print_cuts(rows: list[Row]) -> None:
    print(f"\ncut frames, ours vs scenedetect (pyav backend), agreement within {CUT_TOLERANCE} frames:")
    for r in rows:
        verdict = "ok" if cuts_agree(r.cuts_ours, r.cuts_scenedetect) else "DIFFER"
        line = f"  {r.name[:46]:<46} {verdict:<6} ours={r.cuts_ours} scenedetect={r.cuts_scenedetect}"
        if r.cuts_expected is not None:
            line += f" true={r.cuts_expected}"
        if r.errors:
            line += f"  ({r.errors} error rows!)"
        print(line)


def totals_of(rows: list[Row], startup_s: float) -> dict:
    total = {key: sum(getattr(r, key) for r in rows)
             for key in ("frames", "ours_s", "decode_s", "decode_auto_s", "scenedetect_s")}
    total["ratio_vs_decode"] = _ratio(total["ours_s"], total["decode_s"])
    total["ratio_vs_decode_auto"] = _ratio(total["ours_s"], total["decode_auto_s"])
    total["ratio_vs_scenedetect"] = _ratio(total["ours_s"], total["scenedetect_s"])
    # The CLI pays an interpreter start and imports per video that a long-lived worker does not; this ratio
    # takes that fixed cost out, to show how the per-frame work compares.
    total["scenedetect_startup_s"] = startup_s
    total["ratio_vs_scenedetect_excl_startup"] = _ratio(total["ours_s"],
                                                        total["scenedetect_s"] - startup_s * len(rows))
    if all(r.scenedetect_opencv_s is not None for r in rows):
        total["scenedetect_opencv_s"] = sum(r.scenedetect_opencv_s for r in rows)
        total["ratio_vs_scenedetect_opencv"] = _ratio(total["ours_s"], total["scenedetect_opencv_s"])
    return total


def code_versions() -> dict[str, str]:
    """Short hashes of the measured stages' sources: others edit them meanwhile, so tie figures to a version."""
    return {name: hashlib.sha1((REPO / name).read_bytes()).hexdigest()[:12]
            for name in ("stages/probe.py", "stages/scenes.py")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache")
    parser.add_argument("--quick", action="store_true", help="one short generated video, one repeat")
    parser.add_argument("--repeats", type=int, help="runs per measurement, best kept (default 3, --quick 1)")
    parser.add_argument("--no-opencv", dest="opencv", action="store_false", help="skip scenedetect's opencv backend")
    parser.add_argument("--detect-input", choices=["exact", "checked", "sampled"], default=ScenesParams().detect_input,
                        help="ScenesParams.detect_input of ours (default: the stage's; exact: PySceneDetect's own "
                             "image)")
    parser.add_argument("--worker-cpus", type=float, default=1.0,
                        help="CPUs the engine gives ours' worker (1: a scenes task on Ray; 0: outside the engine, "
                             "every core)")
    args = parser.parse_args()
    versions = code_versions()  # now, as the stages were imported: an edit during the run must not relabel it
    args.repeats = args.repeats or (1 if args.quick else 3)
    if not shutil.which(SCENEDETECT):
        sys.exit(f"no scenedetect console script at {SCENEDETECT}")

    inputs = [(p, None) for p in shared_videos(args.videos)]
    inputs += generated_videos(GENERATED_QUICK if args.quick else GENERATED, args.cache)
    probe = ProbeStage()
    scenes = ScenesStage(OURS_PARAMS.model_copy(update={"detect_input": args.detect_input}))
    for stage in (probe, scenes):
        stage.use_worker_cpus(args.worker_cpus or None)  # as the engine's StageRunner does
        stage.setup()
    smallest = min((p for p, _ in inputs), key=lambda p: p.stat().st_size)
    # Warm up once so one-time costs (lazy imports, OpenCV's first calls) land in no measurement.
    cpu_ours(smallest, probe, scenes)
    cpu_decode(smallest, 0)
    # The CLI's fixed cost per video: start, imports and opening the file, detecting on one frame only.
    startup_s = min(cpu_child([SCENEDETECT, "-i", str(smallest), "-b", "pyav", "-q", "time", "-e", "1",
                               "detect-content"]) for _ in range(args.repeats))

    print(f"{len(inputs)} videos, best of {args.repeats}, {os.cpu_count()} CPUs, "
          f"scenedetect backend pyav (opencv as an extra column), CPU seconds = user + system, all threads\n")
    rows = []
    for path, expected in inputs:
        rows.append(measure_video(path, expected, args, probe, scenes))
        print(f"  measured {path.name}", file=sys.stderr, flush=True)
    totals = totals_of(rows, startup_s)
    print_table(rows, totals)
    print(f"\nscenedetect CLI fixed cost per run (start, imports, open, 1 frame): {startup_s:.3f} s; "
          f"ratio vs scenedetect without it: {_fmt(totals['ratio_vs_scenedetect_excl_startup'], 2)}")
    print_cuts(rows)
    result = {
        "ratio_vs_decode": round(totals["ratio_vs_decode"], 4),
        "ratio_vs_decode_auto": round(totals["ratio_vs_decode_auto"], 4),
        "ratio_vs_scenedetect": round(totals["ratio_vs_scenedetect"], 4),
        "worker_cpus": args.worker_cpus,
        "scenedetect_backend": "pyav",
        "detect_input": args.detect_input,
        "repeats": args.repeats,
        "statistic": "min",
        "cpus": os.cpu_count(),
        "code": versions,
        "cuts_agree_all": all(cuts_agree(r.cuts_ours, r.cuts_scenedetect) for r in rows),
        "totals": {k: round(v, 4) if isinstance(v, float) else v for k, v in totals.items()},
        "videos": [r.as_json() for r in rows],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
