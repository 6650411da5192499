"""Frames per second per filter stage on the CPU, each against a baseline; one JSON object on the last line.

Sections, one per stage, each a clearly separated block with its own owner; `main()` runs the sections named on the
command line (default: all) and prints {section: figures} as the last line:
  aesthetic   AestheticStage (tiny fixture model; the real ViT-L/14 architecture with RANDOM weights) against the
              reference loop of improved-aesthetic-predictor (`--no-real` skips ViT-L/14, about a minute here)
  ocr         OcrStage detection only against detection plus recognition (ocr_det_speedup) and against rapidocr's
              out-of-the-box call, on 960x540 frames with rendered text (plus the shared overlay clip when present);
              the text-by-kind step's own cost against what recognition adds (ocr_kinds_ms)
  motion      MotionStage (DIS) at 256 and 960 px input against Data-Juicer's Farneback motion score

Random weights, written once into bench/.cache (git-ignored; the ViT-L/14 file is 1.7 GB): no model is downloaded.
CPU figures on a shared 2-core machine move a lot with other load: compare ratios, measured back to back.

    .venv/bin/python bench/filters.py [aesthetic|ocr|motion ...] [--quick] [--no-real] [--repeats N] [--videos DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.clip import Clip  # noqa: E402

CACHE = REPO / "bench" / ".cache"


# == aesthetic (owner: aesthetic stage) ================================================================================
# Frames per second of AestheticStage.process on the CPU (no Ray), frames as the scenes stage keeps them for it
# (16:9, long side 448), against a baseline: the direct reference computation on the same frames (open_clip's full
# model and eval transform, encode_image, L2-normalise, the MLP head), i.e. what improved-aesthetic-predictor's
# own script does per frame. Two models:
#   tiny:  the test fixture's tiny random open_clip ViT (width 64, 2 layers, 64 px input, 768-d embedding);
#   ViT-L-14 (RANDOM WEIGHTS): the real CLIP ViT-L/14 architecture with random weights (no real weights may be
#          downloaded here): its speed is the real model's, its scores mean nothing.
# Preprocessing alone (open_clip's PIL transform to 224 px) is reported too: on a GPU it bounds the stage's rate.
AESTHETIC_TINY_CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def _aesthetic_files(cache: Path, arch: str) -> tuple[str, Path, Path]:
    """(clip_model, checkpoint, head) for `arch` ("tiny" or "ViT-L-14"), random weights written once into cache."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from stages.aesthetic import build_head

    cache.mkdir(parents=True, exist_ok=True)
    if arch == "tiny":
        config = cache / "aesthetic-tiny-clip.json"
        config.write_text(json.dumps(AESTHETIC_TINY_CONFIG))
        open_clip.add_model_config(config)
        name, clip_model = config.stem, str(config)
    else:
        name = clip_model = arch
    checkpoint = cache / f"aesthetic-{arch}-random.safetensors"
    head = cache / "aesthetic-head-random.pth"
    if not checkpoint.exists():
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint) + ".tmp")
        os.replace(str(checkpoint) + ".tmp", checkpoint)
        del model
    if not head.exists():
        torch.manual_seed(1)
        torch.save(build_head(768).state_dict(), head)
    return clip_model, checkpoint, head


def _aesthetic_clips(n_clips: int, frames_per_clip: int, seed: int = 0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n_clips):
        frames = rng.integers(0, 256, size=(frames_per_clip, 252, 448, 3), dtype=np.uint8)
        clips.append(Clip(video_id=f"v{i}", video_uri=f"/bench/v{i}.mp4", shard_id="s", start_s=0.0,
                          end_s=float(frames_per_clip), frames=frames,
                          frame_times=[float(t) for t in range(frames_per_clip)]))
    return clips


def _aesthetic_reference(clip_model: str, checkpoint: Path, head: Path, clips: list[Clip]) -> Callable[[], None]:
    """The baseline: the reference computation, frame by frame as improved-aesthetic-predictor's script does."""
    import open_clip
    import torch
    from PIL import Image

    from stages.aesthetic import load_head

    name = Path(clip_model).stem if clip_model.endswith(".json") else clip_model
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint),
                                                                force_quick_gelu=True)
    model.eval()
    mlp = load_head(head)

    def run() -> None:
        with torch.no_grad():
            for clip in clips:
                for frame in clip.frames:
                    e = model.encode_image(transform(Image.fromarray(frame)).unsqueeze(0))
                    mlp(e / e.norm(dim=-1, keepdim=True))

    return run


def bench_aesthetic(cache: Path, real: bool = True, quick: bool = False, repeats: int = 3) -> dict:
    """Frames per second of the aesthetic stage (tiny model; ViT-L/14 with random weights) and of its baseline."""
    import torch
    from PIL import Image

    from stages.aesthetic import AestheticParams, AestheticStage

    out: dict = {"torch_threads": torch.get_num_threads(), "frame_size": [448, 252], "models": {}}
    runs = [("tiny", 8 if quick else 32, 4, 32, 1 if quick else repeats)]
    if real:  # the real architecture runs at about a second per frame on 2 CPU cores: 8 frames, once
        runs.append(("ViT-L-14", 2, 2 if quick else 4, 8, 1))
    for arch, n_clips, per_clip, batch_size, reps in runs:
        clip_model, checkpoint, head = _aesthetic_files(cache, arch)
        started = time.perf_counter()
        stage = AestheticStage(AestheticParams(clip_model=clip_model, clip_weights=str(checkpoint),
                                               head_weights=str(head), device="cpu", batch_size=batch_size))
        stage.setup()
        setup_s = time.perf_counter() - started
        stage.process(_aesthetic_clips(1, 1, seed=9))  # warm-up (first-call allocations)
        frames = n_clips * per_clip
        stage_wall, stage_cpu = _timed_min(lambda: stage.process(_aesthetic_clips(n_clips, per_clip)), reps)
        reference = _aesthetic_reference(clip_model, checkpoint, head, _aesthetic_clips(n_clips, per_clip))
        ref_wall, ref_cpu = _timed_min(reference, reps)
        transform = stage._scorer.transform
        sample = _aesthetic_clips(1, 16, seed=3)[0].frames
        pre_wall, _ = _timed_min(lambda: [transform(Image.fromarray(f)) for f in sample], reps)
        label = "tiny (test fixture, random)" if arch == "tiny" else "ViT-L-14 architecture, RANDOM WEIGHTS"
        out["models"][arch] = {
            "label": label,
            "frames": frames,
            "batch_size": batch_size,
            "setup_s": round(setup_s, 2),
            "stage_fps": round(frames / stage_wall, 3),
            "stage_cpu_s_per_frame": round(stage_cpu / frames, 4),
            "reference_fps": round(frames / ref_wall, 3),
            "reference_cpu_s_per_frame": round(ref_cpu / frames, 4),
            # ratio of CPU seconds, stage / baseline: below 1, the stage costs less than the reference loop
            "ratio_vs_reference": round(stage_cpu / ref_cpu, 3),
            "preprocess_ms_per_frame": round(pre_wall / len(sample) * 1000, 2),
        }
        print(f"aesthetic {label}: {frames / stage_wall:.2f} frames/s, {stage_cpu / frames * 1000:.1f} CPU ms/frame "
              f"(reference loop {frames / ref_wall:.2f} frames/s, {ref_cpu / frames * 1000:.1f} CPU ms/frame; ratio "
              f"{stage_cpu / ref_cpu:.2f}); setup {setup_s:.1f} s; preprocessing {pre_wall / len(sample) * 1000:.1f} "
              "ms/frame", flush=True)
    return out

# == end of aesthetic ==================================================================================================


def _run_aesthetic(args: argparse.Namespace) -> dict:
    return bench_aesthetic(args.cache, real=args.real, quick=args.quick, repeats=args.repeats)


# == ocr (owner: ocr stage) ============================================================================================
# Frames per second of OcrStage.process on the CPU (no Ray), on frames as the scenes stage keeps them for it (1 fps,
# long side 960: 960x540): half carry two rendered text lines and a corner watermark, half none; plus, where the
# shared clips are present, the "C&J 221 kg" clip's frames. Detection only (the default) against detection plus
# recognition (recognize: true), and both against rapidocr's out-of-the-box call (RapidOCR() defaults: det at min
# side 736, orientation classifier, recognition), the baseline a user would write first.
def _ocr_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        coarse = rng.integers(0, 256, size=(27, 48, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (960, 540), interpolation=cv2.INTER_CUBIC)
        if i % 2 == 0:
            cv2.putText(image, f"CLIP {i:03d} SCORE 221", (80, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (255, 255, 0), 3,
                        cv2.LINE_AA)
            cv2.putText(image, "subtitle: curate the clips", (120, 470), cv2.FONT_HERSHEY_SIMPLEX, 1.1,
                        (255, 255, 255), 2, cv2.LINE_AA)
            cv2.putText(image, "strateg.tv", (12, 525), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (230, 230, 230), 1, cv2.LINE_AA)
        frames.append(image)
    return frames


def _shared_ocr_frames(videos: Path) -> list[np.ndarray]:
    path = videos / "stgcn_kinetics_clean_and_jerk_textoverlay.mp4"
    if not path.exists():
        return []
    from stages.probe import ProbeStage
    from stages.scenes import ScenesParams, ScenesStage

    (clip,) = ProbeStage().process([Clip(video_id="b", video_uri=str(path), shard_id="s")])
    clips = ScenesStage(ScenesParams(keep_fps=1.0, keep_max_side=960)).process([clip])
    return [f for c in clips if c.frames is not None for f in c.frames]


def _as_clips(frames: list[np.ndarray], fps: float, per_clip: int = 10) -> list[Clip]:
    clips = []
    for i in range(0, len(frames), per_clip):
        chunk = frames[i:i + per_clip]
        clips.append(Clip(video_id=f"v{i}", video_uri=f"/bench/v{i}.mp4", shard_id="s", start_s=0.0,
                          end_s=len(chunk) / fps, frames=np.stack(chunk),
                          frame_times=[k / fps for k in range(len(chunk))]))
    return clips


def _timed_min(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of fn, the least of `repeats` runs each."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def bench_ocr(videos: Path, quick: bool = False, repeats: int = 3) -> dict:
    from rapidocr import RapidOCR

    from stages.ocr import OcrParams, OcrStage

    frames = _ocr_frames(6 if quick else 16)
    shared = _shared_ocr_frames(videos)[: 4 if quick else 10]
    reps = 1 if quick else repeats

    def clips() -> list[Clip]:  # the shared clip's frames (456x256) make clips of their own
        return _as_clips(frames, 1.0) + (_as_clips(shared, 1.0) if shared else [])

    total = len(frames) + len(shared)
    out: dict = {"frames": total, "frame_size": [960, 540], "shared_frames": len(shared)}
    for label, params in (("det", {}), ("det_rec", {"recognize": True})):
        stage = OcrStage(OcrParams(**params))
        started = time.perf_counter()
        stage.setup()
        setup_s = time.perf_counter() - started
        stage.process(_as_clips(frames[:2], 1.0))  # warm-up: onnxruntime's first run at a new input size
        wall, cpu = _timed_min(lambda: stage.process(clips()), reps)
        out[label] = {"fps": round(total / wall, 2), "cpu_ms_per_frame": round(cpu / total * 1000, 1),
                      "setup_s": round(setup_s, 2)}
    engine = RapidOCR(params={"Global.log_level": "error"})  # the out-of-the-box call: det + cls + rec
    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames + shared]
    engine(bgr[0])
    wall, cpu = _timed_min(lambda: [engine(f) for f in bgr], reps)
    out["rapidocr_default"] = {"fps": round(total / wall, 2), "cpu_ms_per_frame": round(cpu / total * 1000, 1)}
    det, both, default = out["det"], out["det_rec"], out["rapidocr_default"]
    # Text by kind (stages/ocr_kinds.py, inside the det figures above): letterbox, tracks, content change, graphic
    # fill and camera shift, all from pixels, against recognition (the other way to see a subtitle's text change).
    from pipeline.clip import sample_indices
    from stages import ocr_kinds

    read = OcrStage(OcrParams())
    read.setup()
    items = [([c.frames[i] for i in sample_indices(c.frame_times, 1.0)], c.columns["ocr_frame_boxes"])
             for c in read.process(clips())]
    _wall, cpu = _timed_min(lambda: [ocr_kinds.measure(f, b) for f, b in items], reps)
    kinds_ms = cpu / total * 1000
    rec_ms = both["cpu_ms_per_frame"] - det["cpu_ms_per_frame"]
    out["kinds"] = {"cpu_ms_per_frame": round(kinds_ms, 2), "rec_extra_cpu_ms_per_frame": round(rec_ms, 1),
                    "share_of_det": round(kinds_ms / det["cpu_ms_per_frame"], 4)}
    out["ocr_det_speedup"] = round(det["fps"] / both["fps"], 2)  # frames per second, detection only / with recognition
    out["ocr_det_speedup_cpu"] = round(both["cpu_ms_per_frame"] / det["cpu_ms_per_frame"], 2)
    out["speedup_vs_rapidocr_default"] = round(det["fps"] / default["fps"], 2)
    out["summary"] = {"ocr_fps": det["fps"], "ocr_rec_fps": both["fps"], "ocr_det_speedup": out["ocr_det_speedup"],
                      "ocr_kinds_ms": out["kinds"]["cpu_ms_per_frame"]}
    print(f"ocr: detection only {det['fps']} frames/s ({det['cpu_ms_per_frame']} CPU ms/frame); with recognition "
          f"{both['fps']} frames/s ({both['cpu_ms_per_frame']} CPU ms/frame): detection only is "
          f"{out['ocr_det_speedup']}x cheaper; rapidocr's default call {default['fps']} frames/s "
          f"({default['cpu_ms_per_frame']} CPU ms/frame); text by kind {out['kinds']['cpu_ms_per_frame']} CPU ms/frame "
          f"(recognition adds {out['kinds']['rec_extra_cpu_ms_per_frame']})", flush=True)
    return out

# == end of ocr ========================================================================================================


# == motion (owner: motion stage) ======================================================================================
# Frames per second of MotionStage.process on the CPU (no Ray), frames kept at 4 fps: a panning texture with a
# moving object, at the two sizes the scenes stage hands it (256 px long side when motion is the only frame reader,
# 960 px next to the ocr stage; the stage scales to 256 itself). Baseline: Data-Juicer's motion score
# (cv2.calcOpticalFlowFarneback with its parameters on the same grey pairs at the same 256 px working size), and
# bare DIS (one calc per pair, no checks) to show what the photometric check and the pan seed cost.
def _motion_frames(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(24, 80, 3), dtype=np.uint8)
    wide = cv2.resize(coarse, (width * 3, height), interpolation=cv2.INTER_CUBIC)
    blob = cv2.resize(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8), (height // 4, height // 4))
    frames = []
    for k in range(n):
        x = int(k * width * 0.02) % (width * 2)
        frame = np.ascontiguousarray(wide[:, x:x + width])
        bx = int(width * 0.2 + k * width * 0.03) % (width - blob.shape[1])
        frame[height // 3:height // 3 + blob.shape[0], bx:bx + blob.shape[1]] = blob
        frames.append(frame)
    return frames


def bench_motion(quick: bool = False, repeats: int = 3) -> dict:
    import cv2

    from stages.motion import MotionParams, MotionStage, working_frame

    reps = 1 if quick else repeats
    n = 40 if quick else 120
    stage = MotionStage(MotionParams())
    stage.setup()
    out: dict = {"frames": n, "kept_fps": 4.0, "working_side": 256, "sizes": {}}
    for width, height in ((256, 144), (960, 540)):
        frames = _motion_frames(n, width, height)
        stage.process(_as_clips(frames[:4], 4.0, per_clip=4))  # warm-up
        wall, cpu = _timed_min(lambda: stage.process(_as_clips(frames, 4.0, per_clip=40)), reps)
        grey = [cv2.cvtColor(cv2.resize(f, (256, 144), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
                for f in frames]

        def farneback() -> None:  # Data-Juicer's video_motion_score_filter parameters
            for a, b in zip(grey, grey[1:]):
                cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)

        def bare_dis() -> None:
            dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
            for a, b in zip(grey, grey[1:]):
                dis.calc(a, b, None)

        fb_wall, fb_cpu = _timed_min(farneback, reps)
        dis_wall, dis_cpu = _timed_min(bare_dis, reps)
        prep_wall, _ = _timed_min(lambda: [working_frame(f, 256) for f in frames], reps)
        out["sizes"][f"{width}x{height}"] = {
            "fps": round(n / wall, 1),
            "cpu_ms_per_frame": round(cpu / n * 1000, 2),
            "farneback_fps": round(n / fb_wall, 1),
            "bare_dis_fps": round(n / dis_wall, 1),
            "prepare_ms_per_frame": round(prep_wall / n * 1000, 2),
            # CPU seconds, stage / Farneback baseline (same pairs, same working size): below 1 the stage is cheaper
            "ratio_vs_farneback": round(cpu / fb_cpu, 2),
        }
        s = out["sizes"][f"{width}x{height}"]
        print(f"motion {width}x{height}: {s['fps']} frames/s ({s['cpu_ms_per_frame']} CPU ms/frame); Farneback "
              f"(Data-Juicer) {s['farneback_fps']} frames/s; bare DIS {s['bare_dis_fps']} frames/s; ratio vs "
              f"Farneback {s['ratio_vs_farneback']}", flush=True)
    out["summary"] = {"motion_fps": out["sizes"]["960x540"]["fps"], "motion_fps_256": out["sizes"]["256x144"]["fps"]}
    return out

# == end of motion =====================================================================================================


def _run_ocr(args: argparse.Namespace) -> dict:
    return bench_ocr(args.videos, quick=args.quick, repeats=args.repeats)


def _run_motion(args: argparse.Namespace) -> dict:
    return bench_motion(quick=args.quick, repeats=args.repeats)


# Section name -> runner(args) -> figures. Each owner adds their own entry.
SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "aesthetic": _run_aesthetic,
    "ocr": _run_ocr,
    "motion": _run_motion,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"which to run (default all: {', '.join(SECTIONS)})")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--quick", action="store_true", help="fewer frames, one repeat")
    parser.add_argument("--no-real", dest="real", action="store_false", help="skip the ViT-L/14-size aesthetic run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement, least kept (default 3)")
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos",
                        help="shared sample clips (ocr adds the overlay clip's frames when present)")
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    result = {name: SECTIONS[name](args) for name in (args.sections or SECTIONS)}
    # Headline figures first (a section's "summary": e.g. ocr_fps, ocr_det_speedup, motion_fps), then every section.
    summary = {key: value for figures in result.values() for key, value in figures.pop("summary", {}).items()}
    print(json.dumps({**summary, **result}))


if __name__ == "__main__":
    main()
