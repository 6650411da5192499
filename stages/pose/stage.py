"""pose: DWPose (YOLOX person detector + whole-body SimCC pose) through onnxruntime, the person and keypoint rules
of HAIC and M-ACM, affine-compensated movement, M-ACM's keyframes, a compact pose record and motion facts.

Batched: the detector runs over every analysed frame of every clip of the Ray batch, then the pose model over
every person crop of the clips that passed the detection rules (so rejected clips cost no pose inference).
Models come from the registry (`dwpose-det`, `dwpose-pose`) or explicit paths; onnxruntime's CUDA provider is
used when present (device=auto) and the CPU otherwise. The pre/post-processing is ours (stages/pose/ops.py), in
numpy and cv2, following the DWPose annotator and rtmlib 0.0.16; rtmlib itself is not a dependency (it pins the
non-headless OpenCV build).

Sources of the defaults (tags of ../shared/research/papers_spec.md): [S2] M-ACM README, [E1] HAIC review,
[DW] the DWPose ONNX annotator, [P] our choice. Every rule is off unless the recipe sets its threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.clip import Clip
from pipeline.devices import onnx_providers
from pipeline.errors import UserError
from pipeline.stage import FrameRequest, ModelParams, Resources, Stage
from stages.pose import blazepose, ops
from stages.pose.keyframes import pose_keyframes
from stages.pose.motion_facts import describe_motion

log = logging.getLogger(__name__)

WHOLEBODY = 133


class PoseParams(ModelParams):
    # -- models ----------------------------------------------------------------------------------------------------
    # dwpose: YOLOX-L + DWPose on onnxruntime (weights from a model hub); blazepose: MediaPipe's BlazePose detector
    # and full landmark model on LiteRT (files from the mediapipe wheel, stages/pose/blazepose.py), COCO-17 only
    backend: Literal["dwpose", "blazepose"] = "dwpose"
    det_model: str | None = None  # explicit path to the detector (YOLOX ONNX / BlazePose detector TFLite)
    pose_model: str | None = None  # explicit path to the pose model (DWPose ONNX / BlazePose landmark TFLite)
    # device (ModelParams) auto: CUDA when onnxruntime has it (onnxruntime-gpu), else CPU; cuda: fail without it
    threads: int | None = None  # inference threads; None: the worker's CPUs (Stage.worker_threads)
    det_batch: int = Field(8, ge=1)  # frames per detector call (models with a dynamic batch axis; else 1)
    pose_batch: int = Field(32, ge=1)  # person crops per pose call
    det_channels: Literal["bgr", "rgb"] = "bgr"  # YOLOX was trained on OpenCV (BGR) images [DW][P]
    pose_channels: Literal["rgb", "bgr"] = "rgb"  # mmpose's data preprocessor converts BGR to RGB [P]
    score_mode: Literal["min", "mean"] = "min"  # keypoint score: min of the SimCC maxima (mmpose, [DW]); rtmlib: mean
    simcc_split_ratio: float = 2.0  # used when the model's shapes are dynamic; else read from them
    # -- frames ----------------------------------------------------------------------------------------------------
    fps: float = Field(5.0, gt=0)  # analysed frames per second [P] (HAIC and M-ACM sampling rates are [U])
    max_side: int = Field(640, ge=32)  # long side of the frames asked from scenes: YOLOX's input [P]
    # -- detection -------------------------------------------------------------------------------------------------
    det_score_threshold: float = 0.3  # [DW] keeps persons scored above 0.3
    nms_iou: float = 0.45  # [DW]
    ignore_person_area: float = Field(0.0, ge=0, le=1)  # persons smaller than this share of the frame are ignored [P]
    max_pose_persons: int = Field(8, ge=1)  # per frame, the largest persons get keypoints; all are counted [P]
    keypoint_threshold: float = 0.5  # a keypoint is visible above this confidence [S2]
    # -- rules (None: off) -----------------------------------------------------------------------------------------
    frame_share: float = Field(0.9, gt=0, le=1)  # per-frame rules must hold on this share of the frames [P]
    min_persons: int | None = None  # persons per frame, at least
    max_persons: int | None = None  # persons per frame, at most
    min_person_area: float | None = None  # largest person's box area / frame area, at least (HAIC [E1])
    min_single_person_ratio: float | None = None  # share of frames with exactly one person must be > this ([S2] 0.90)
    min_visible_keypoints: int | None = None  # main person's COCO-17 keypoints above keypoint_threshold ([S2] 12)
    min_motion: float | None = None  # affine-compensated movement, person sizes per second (static, slideshows)
    max_motion: float | None = None  # optional upper bound (erratic tracks)
    # -- movement --------------------------------------------------------------------------------------------------
    # background: camera affine from background corners (HAIC [E1]: keypoints + an affine transformation); keypoints:
    # from all tracked people's keypoints; none: no compensation
    camera_compensation: Literal["background", "keypoints", "none"] = "background"
    # -- outputs ---------------------------------------------------------------------------------------------------
    keyframes: int = Field(8, ge=0)  # K of M-ACM's keyframe sampling [P] (M-ACM's K is [U])
    record_frames: Literal["keyframes", "all"] = "keyframes"  # frames whose keypoints go to pose_record
    record_persons: int = Field(1, ge=0)  # the most prominent N persons of those frames
    record_keypoints: Literal["body", "wholebody"] = "body"  # COCO-17 or all 133 COCO-WholeBody points
    motion_facts: bool = True


MOTION_EVENT = pa.struct([
    ("part", pa.string()), ("action", pa.string()), ("direction", pa.string()), ("count", pa.int32()),
    ("start_s", pa.float64()), ("end_s", pa.float64()), ("amount", pa.float32()),
])
RECORD_PERSON = pa.struct([
    ("track", pa.int32()),  # 0 = main person (most prominent over the clip), 1 = next, ...
    ("box", pa.list_(pa.float32())),  # x1 y1 x2 y2, normalised to the frame width and height
    ("score", pa.float32()),
    ("keypoints", pa.list_(pa.list_(pa.float32()))),  # [x, y, score] per keypoint, x and y normalised
])
RECORD_FRAME = pa.struct([
    ("frame_index", pa.int32()),  # into the clip's kept frames (scenes_kept_frame_times)
    ("time_s", pa.float64()),
    ("persons", pa.list_(RECORD_PERSON)),
])


@dataclass
class _Work:
    """One clip's state inside a batch."""

    clip: Clip
    index: np.ndarray | None = None  # analysed frames: indices into clip.frame_times
    images: list[np.ndarray] | None = None  # the analysed frames, at the size pose asked for
    persons: list[ops.FramePersons] | None = None
    counts: list[int] | None = None


class PoseStage(Stage):
    name = "pose"
    Params = PoseParams
    resources = Resources(cpus=1.0, batch_size=2)
    actor = True
    columns: ClassVar[dict[str, pa.DataType]] = {
        "pose_frame_times": pa.list_(pa.float64()),  # the analysed frames (s); per-frame lists align with it
        "pose_persons_per_frame": pa.list_(pa.int32()),
        "pose_persons_min": pa.int32(),
        "pose_persons_max": pa.int32(),
        "pose_persons_mean": pa.float64(),
        "pose_single_person_ratio": pa.float64(),  # share of frames with exactly one person
        # per analysed frame, the counted persons' boxes (the largest max_pose_persons), [x0, y0, x1, y1] normalised
        "pose_person_boxes": pa.list_(pa.list_(pa.list_(pa.float32()))),
        "pose_largest_area_per_frame": pa.list_(pa.float32()),  # largest box area / frame area
        "pose_largest_area": pa.float64(),  # reached on frame_share of the frames
        "pose_tracks": pa.int32(),  # distinct persons tracked over the clip
        "pose_main_coverage": pa.float64(),  # share of frames with the main person
        "pose_visible_keypoints_per_frame": pa.list_(pa.int32()),  # main person, COCO-17, > keypoint_threshold
        "pose_visible_keypoints": pa.int32(),  # reached on frame_share of the frames
        "pose_motion": pa.float64(),  # median affine-compensated movement, person sizes per second
        "pose_motion_per_step": pa.list_(pa.float32()),  # per consecutive frame pair; null where unknown
        "pose_camera_motion": pa.float64(),  # median camera speed, frame diagonals per second (null: unknown)
        "pose_keyframe_indices": pa.list_(pa.int32()),  # into the clip's kept frames (scenes_kept_frame_times)
        "pose_keyframe_times": pa.list_(pa.float64()),
        "pose_keypoint_format": pa.string(),  # coco17 | coco_wholebody133
        "pose_backend": pa.string(),  # dwpose | blazepose: the models that found the persons and their keypoints
        "pose_record": pa.list_(RECORD_FRAME),
        "pose_motion_facts": pa.list_(pa.string()),
        "pose_motion_events": pa.list_(MOTION_EVENT),
    }
    rules: ClassVar[dict[str, str]] = {
        "min_persons": "fewer than min_persons persons on more than 1 - frame_share of the frames",
        "min_person_area": "largest person's box below min_person_area of the frame on too many frames",
        "max_persons": "more than max_persons persons on more than 1 - frame_share of the frames",
        "single_person_ratio": "share of frames with exactly one person not above min_single_person_ratio",
        "min_visible_keypoints": "main person shows fewer than min_visible_keypoints body keypoints on too many frames",
        "min_motion": "the main person barely moves: median keypoint movement (camera removed) below min_motion "
                      "person sizes per second",
        "max_motion": "affine-compensated movement above max_motion",
    }

    def __init__(self, params: PoseParams | None = None, context=None):
        super().__init__(params, context)
        self.detector: _Detector | blazepose.BlazeDetector | None = None
        self.pose: _PoseModel | blazepose.BlazeLandmarks | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def frame_request(self) -> FrameRequest:
        return FrameRequest(self.params.fps, self.params.max_side)

    def _paths(self):
        if self.params.backend == "blazepose":
            return (self.model_path(blazepose.DET_MODEL, self.params.det_model),
                    self.model_path(blazepose.LANDMARK_MODEL, self.params.pose_model))
        return self.model_path("dwpose-det", self.params.det_model), self.model_path("dwpose-pose", self.params.pose_model)

    def can_use_gpu(self) -> bool:
        return self.params.backend == "dwpose"  # LiteRT runs BlazePose on the CPU

    def preflight(self) -> None:
        det, pose = self._paths()
        if self.params.backend == "blazepose":
            if self.params.device == "cuda":
                raise UserError("pose.backend blazepose runs on the CPU (LiteRT): set pose.device to auto or cpu")
            blazepose.load(det, pose, 1)  # a wrong or corrupt file is a start-up error, not a Ray crash
            return
        onnx_providers(self.params.device, self.name)
        _Detector(det, ["CPUExecutionProvider"], 1)  # a wrong or corrupt file is a start-up error, not a Ray crash
        _PoseModel(pose, ["CPUExecutionProvider"], 1, self.params.simcc_split_ratio)

    def setup(self) -> None:
        det, pose = self._paths()
        threads = self.params.threads or self.worker_threads()
        if self.params.backend == "blazepose":
            self.detector, self.pose = blazepose.load(det, pose, threads)
            log.info("pose: BlazePose %s and %s on LiteRT (CPU)", det.name, pose.name)
            return
        chosen = onnx_providers(self.params.device, self.name)
        self.detector = _Detector(det, chosen, threads)
        self.pose = _PoseModel(pose, chosen, threads, self.params.simcc_split_ratio)
        used = self.detector.session.get_providers()[0]
        if self.params.device == "cuda" and used != "CUDAExecutionProvider":
            # onnxruntime falls back to the CPU when CUDA cannot start (no device visible to this worker)
            raise UserError(f"pose.device is cuda but onnxruntime runs the models on {used}: no GPU is visible "
                            "to this worker")
        log.info("pose: %s and %s on %s", det.name, pose.name, used)

    # -- processing ------------------------------------------------------------------------------------------------
    def process(self, clips: list[Clip]) -> list[Clip]:
        if self.detector is None:
            self.setup()
        work = [_Work(clip) for clip in clips if clip.alive]
        of = lambda w: w.clip  # noqa: E731
        # batched steps over every clip of the Ray batch; per-clip rules and measures one clip at a time
        self.isolate(work, lambda ws: [self._sample(w) for w in ws], clip_of=of)
        self.isolate(work, self._detect, clip_of=of)
        self.isolate(work, lambda ws: [self._detection_rules(w) for w in ws], clip_of=of)
        self.isolate(work, self._estimate, clip_of=of)
        self.isolate(work, lambda ws: [self._pose_measures(w) for w in ws], clip_of=of)
        return clips

    def _sample(self, w: _Work) -> None:
        sample = self.frames(w.clip)
        if not sample:
            self.reject(w.clip, "no_frames", 0, 1)
        w.index = np.asarray(sample.indices, np.int64)
        w.images = list(sample.images)

    # -- detection -------------------------------------------------------------------------------------------------
    def _detect(self, work: list[_Work]) -> None:
        frames = [image for w in work for image in w.images]
        found = self.detector.detect(frames, self.params)
        at = 0
        p = self.params
        for w in work:
            h, wd = w.images[0].shape[:2]
            area = float(h * wd)
            w.persons, w.counts = [], []
            for boxes, scores in found[at:at + len(w.index)]:
                boxes = ops.clip_boxes(boxes, wd, h)
                share = ops.box_area(boxes) / area
                keep = np.nonzero(share >= p.ignore_person_area)[0] if p.ignore_person_area > 0 else np.arange(len(boxes))
                w.counts.append(int(len(keep)))
                keep = keep[np.argsort(-share[keep], kind="stable")][: p.max_pose_persons]
                w.persons.append(ops.FramePersons(boxes[keep].astype(np.float32), scores[keep].astype(np.float32)))
            at += len(w.index)
            ops.track_persons(w.persons, area)

    def _detection_rules(self, w: _Work) -> bool:
        p, clip = self.params, w.clip
        h, wd = w.images[0].shape[:2]
        counts = np.asarray(w.counts)
        largest = [float(ops.box_area(fp.boxes).max() / (h * wd)) if len(fp) else 0.0 for fp in w.persons]
        single = float(np.mean(counts == 1))
        self.set(
            clip,
            frame_times=[float(clip.frame_times[i]) for i in w.index],
            persons_per_frame=[int(c) for c in counts],
            persons_min=int(counts.min()),
            persons_max=int(counts.max()),
            persons_mean=float(counts.mean()),
            single_person_ratio=single,
            person_boxes=[[[round(float(v), 4) for v in box / np.array([wd, h, wd, h])] for box in fp.boxes]
                          for fp in w.persons],
            largest_area_per_frame=[round(a, 5) for a in largest],
            largest_area=ops.value_on_share(largest, p.frame_share, high=True),
            tracks=int(max((fp.tracks.max() + 1 for fp in w.persons if len(fp)), default=0)),
            main_coverage=float(np.mean([0 in fp.tracks for fp in w.persons])),
            backend=p.backend,
        )
        return (self.at_least(clip, "min_persons", ops.value_on_share(counts, p.frame_share, high=True), p.min_persons)
                and self.at_least(clip, "min_person_area", ops.value_on_share(largest, p.frame_share, high=True),
                                  p.min_person_area)
                and self.at_most(clip, "max_persons", ops.value_on_share(counts, p.frame_share, high=False),
                                 p.max_persons)
                and self.at_least(clip, "single_person_ratio", single, p.min_single_person_ratio, strict=True))

    # -- pose ------------------------------------------------------------------------------------------------------
    def _estimate(self, work: list[_Work]) -> None:
        jobs = [(image, fp) for w in work for image, fp in zip(w.images, w.persons)]
        self.pose.estimate(jobs, self.params)

    def _pose_measures(self, w: _Work) -> bool:
        p, clip = self.params, w.clip
        persons = w.persons
        n = len(persons)
        h, wd = w.images[0].shape[:2]
        times = np.asarray([clip.frame_times[i] for i in w.index], np.float64)
        thr = p.keypoint_threshold
        main = [ops.person_of(fp, 0) for fp in persons]
        present = np.array([m is not None for m in main])
        k = WHOLEBODY if persons and persons[0].keypoints is not None and persons[0].keypoints.shape[1] == WHOLEBODY else ops.BODY
        kpts = np.zeros((n, k, 2), np.float32)
        kscores = np.zeros((n, k), np.float32)
        boxes = np.zeros((n, 4), np.float32)
        for t, (fp, m) in enumerate(zip(persons, main)):
            if m is not None:
                kpts[t], kscores[t], boxes[t] = fp.keypoints[m], fp.keypoint_scores[m], fp.boxes[m]
        visible = (kscores[:, :ops.BODY] > thr).sum(axis=1)

        frames = np.stack(w.images) if p.camera_compensation == "background" else None
        affines = ops.camera_affines(frames, persons, p.camera_compensation, thr)
        steps = [ops.step_motion(persons[t], persons[t + 1], 0, affines[t], times[t + 1] - times[t], thr)
                 for t in range(n - 1)]
        valid = [s for s in steps if s is not None]
        motion = float(np.median(valid)) if valid else 0.0
        cams = [c for t, a in enumerate(affines)
                if (c := ops.camera_speed(a, wd, h, times[t + 1] - times[t])) is not None]

        chosen = pose_keyframes(kpts[:, :ops.BODY], kscores[:, :ops.BODY], boxes, present, p.keyframes, thr)
        record_at = chosen if p.record_frames == "keyframes" else list(range(n))
        values = dict(
            visible_keypoints_per_frame=[int(v) for v in visible],
            visible_keypoints=int(ops.value_on_share(visible, p.frame_share, high=True)),
            motion=motion,
            motion_per_step=[None if s is None else round(s, 5) for s in steps],
            camera_motion=float(np.median(cams)) if cams else None,
            keyframe_indices=[int(w.index[i]) for i in chosen],
            keyframe_times=[float(times[i]) for i in chosen],
            keypoint_format="coco17" if p.record_keypoints == "body" or k == ops.BODY else "coco_wholebody133",
            record=[self._record(w, t, wd, h) for t in record_at],
        )
        if p.motion_facts:
            events, facts = describe_motion(times, kpts[:, :ops.BODY], kscores[:, :ops.BODY], present, boxes,
                                            ops.cumulative_affines(affines) if affines else None, thr)
            values.update(motion_facts=facts, motion_events=events)
        self.set(clip, **values)
        return (self.at_least(clip, "min_visible_keypoints", values["visible_keypoints"], p.min_visible_keypoints)
                and self.at_least(clip, "min_motion", motion, p.min_motion)
                and self.at_most(clip, "max_motion", motion, p.max_motion))

    def _record(self, w: _Work, t: int, width: int, height: int) -> dict:
        p = self.params
        fp = w.persons[t]
        scale = np.array([width, height], np.float32)
        k = ops.BODY if p.record_keypoints == "body" else WHOLEBODY
        people = []
        for i in np.argsort(fp.tracks, kind="stable"):
            if fp.tracks[i] >= p.record_persons:
                continue
            xy = np.round(fp.keypoints[i, :k] / scale, 4)
            sc = np.round(fp.keypoint_scores[i, :k], 3)
            people.append({
                "track": int(fp.tracks[i]),
                "box": [round(float(v), 4) for v in fp.boxes[i] / np.tile(scale, 2)],
                "score": round(float(fp.scores[i]), 4),
                "keypoints": np.concatenate([xy, sc[:, None]], axis=1).tolist(),
            })
        return {"frame_index": int(w.index[t]), "time_s": float(w.clip.frame_times[w.index[t]]), "persons": people}


# -- frames ----------------------------------------------------------------------------------------------------------
# -- onnxruntime models ----------------------------------------------------------------------------------------------
class _Model:
    role: ClassVar[str]

    def __init__(self, path, chosen: list[str], threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # onnxruntime's workers spin after each run by default, taking the cores our pre/post-processing (between
        # runs) needs: measured 2x slower letterbox and optical flow with spinning on (bench/pose.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:
            raise UserError(f"model {self.role} at {path} cannot be loaded by onnxruntime ({str(exc).strip()[:200]}); "
                            f"fetch it again with `actcurate models pull {self.role}`") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise UserError(f"model {self.role} at {path}: expected an image input [N,3,H,W], found {inp.name} {shape}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.size = (shape[2], shape[3]) if all(isinstance(s, int) and s > 0 for s in shape[2:]) else None
        self.outputs = self.session.get_outputs()
        self.path = path

    def run(self, x: np.ndarray, batch: int) -> list[np.ndarray]:
        """Run over the first axis in chunks (the model's fixed batch, else `batch`), padding a short last chunk."""
        chunk = self.fixed_batch or batch
        parts: list[list[np.ndarray]] = []
        for i in range(0, len(x), chunk):
            part = x[i:i + chunk]
            short = len(part)
            if self.fixed_batch and short < chunk:
                part = np.concatenate([part, np.zeros((chunk - short, *part.shape[1:]), part.dtype)])
            outs = self.session.run(self.output_names, {self.input_name: part})
            parts.append([o[:short] for o in outs])
        return [np.concatenate([p[j] for p in parts]) for j in range(len(self.output_names))]


class _Detector(_Model):
    role = "dwpose-det"

    def __init__(self, path, chosen, threads):
        super().__init__(path, chosen, threads)
        names = [o.name for o in self.outputs]
        self.size = self.size or (640, 640)
        last = self.outputs[0].shape[-1]
        if "dets" in names:
            self.kind = "dets"
            self.output_names = ["dets"] + (["labels"] if "labels" in names else [])
        elif last == 5:
            self.kind, self.output_names = "dets", [names[0]]
        elif isinstance(last, int) and last > 5 and len(shape := self.outputs[0].shape) == 3 and \
                (not isinstance(shape[1], int) or shape[1] == len(ops.yolox_grid(self.size)[0])):
            self.kind, self.output_names = "raw", [names[0]]  # one row per anchor of the stride 8/16/32 grids
        else:
            raise UserError(f"model dwpose-det at {path}: expected a YOLOX output `dets` [N,M,5] or a raw head "
                            f"[N,A,85], found {[(o.name, o.shape) for o in self.outputs]}")

    def detect(self, frames: list[np.ndarray], p: PoseParams) -> list[tuple[np.ndarray, np.ndarray]]:
        results: list[tuple[np.ndarray, np.ndarray]] = []
        chunk = self.fixed_batch or p.det_batch
        buf = np.empty((min(chunk, max(1, len(frames))), 3, *self.size), np.float32)
        bgr = p.det_channels == "bgr"
        for start in range(0, len(frames), chunk):
            group = frames[start:start + chunk]
            ratios = [ops.letterbox_planar(f, self.size, buf[j], bgr) for j, f in enumerate(group)]
            outs = self.run(buf[:len(group)], chunk)
            if self.kind == "raw":
                results += ops.decode_yolox_raw(outs[0], self.size, ratios, p.det_score_threshold, p.nms_iou)
            else:
                labels = outs[1] if len(outs) > 1 else None
                results += ops.decode_yolox_dets(outs[0], ratios, p.det_score_threshold, p.nms_iou, labels)
        return results


class _PoseModel(_Model):
    role = "dwpose-pose"

    def __init__(self, path, chosen, threads, split_ratio: float):
        super().__init__(path, chosen, threads)
        names = [o.name for o in self.outputs]
        if {"simcc_x", "simcc_y"} <= set(names):
            self.output_names = ["simcc_x", "simcc_y"]
        elif len(names) >= 2:
            self.output_names = names[:2]
        else:
            raise UserError(f"model dwpose-pose at {path}: expected SimCC outputs simcc_x and simcc_y, found {names}")
        self.size = self.size or (384, 288)
        wx = self.session.get_outputs()[names.index(self.output_names[0])].shape[-1]
        self.split_ratio = wx / self.size[1] if isinstance(wx, int) and wx > 0 else split_ratio

    def estimate(self, jobs: list[tuple[np.ndarray, ops.FramePersons]], p: PoseParams) -> None:
        """Keypoints for every person of every (frame, persons) job, written into the FramePersons.

        Crops are warped, normalised and inferred one chunk at a time, so memory stays bounded by the chunk."""
        items = [(frame, fp.boxes[i]) for frame, fp in jobs for i in range(len(fp))]
        chunk = self.fixed_batch or p.pose_batch
        buf = np.empty((min(chunk, max(1, len(items))), *self.size, 3), np.uint8)
        planes = np.empty((len(buf), 3, *self.size), np.float32)
        kpts, scores = [], []
        for start in range(0, len(items), chunk):
            group = items[start:start + chunk]
            centers, scales = ops.box_center_scale(np.stack([b for _, b in group]), self.size)
            for j, (frame, _) in enumerate(group):
                ops.warp_crop(frame, centers[j], scales[j], self.size, out=buf[j])
            x = ops.normalise_into(buf[:len(group)], planes, ops.POSE_MEAN, ops.POSE_STD, p.pose_channels == "bgr")
            simcc_x, simcc_y = self.run(x, chunk)
            locs, s = ops.decode_simcc(simcc_x, simcc_y, self.split_ratio, p.score_mode)
            kpts.append(ops.input_to_image(locs, centers, scales, self.size))
            scores.append(s)
        k = kpts[0].shape[1] if kpts else WHOLEBODY
        all_k = np.concatenate(kpts) if kpts else np.zeros((0, k, 2), np.float32)
        all_s = np.concatenate(scores) if scores else np.zeros((0, k), np.float32)
        at = 0
        for _, fp in jobs:
            n = len(fp)
            fp.keypoints, fp.keypoint_scores = all_k[at:at + n], all_s[at:at + n]
            at += n
