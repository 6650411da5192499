"""motion: optical-flow score of a clip from its kept frames, in frame diagonals per second, and the flow rules.

Score of one pair of frames = mean flow magnitude (pixels at the working size) / working-size diagonal / seconds
between the two frames. It is the same number at any resolution and any sampling rate: a pan that crosses the
frame's diagonal in 10 s scores 0.1 whether the video is 360p or 4K and whether pairs are 0.25 s or 0.5 s apart.
The clip's `motion_score` is the mean over its pairs (as Open-Sora's and Data-Juicer's flow scores are).

CPU backend (default): OpenCV DIS on grey frames scaled to `working_side`. Brightness changes must not read as
motion, so each frame is standardised first (zero mean, unit contrast: flicker, auto-exposure), and a flow vector
counts only where it explains a change (photometric check: warping the second frame by the flow cuts the local
difference to the first to below `support_ratio` of the plain difference; where nothing changed, nothing moved).
DIS alone follows displacements up to about 6 % of the frame width; a global shift found by phase correlation seeds
it, and the seeded flow is kept when it explains the second frame clearly better, so fast pans are not under-read.

GPU backend `raft`: torchvision's RAFT (raft_large or raft_small) on the same frame pairs, with the same
normalisation and checks; it needs torch and torchvision and the weights file in torch's cache (or `raft_weights`),
runs where `device` says (auto: a GPU when there is one), and says what is missing before any video is touched.

Also recorded: the median and largest pair score (one bad pair does not move the median), the split of the flow
into a camera part (a robust affine fit of the flow field: pan, tilt, zoom, roll) and an object part (what the
affine motion leaves), the share of the frame whose flow the photometric check supported, and the warp error (how
badly the flow explains the next frame: high values flag pairs the flow could not follow).

Threshold units, for the recipes: Open-Sora 1.3 buckets UniMatch flow at 320x576 on frames 15 apart (0.5 s at 30 fps)
as "very low" below 0.5 px and "extremely high" from 20 px: about 0.0015 and 0.06 diagonals per second.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.clip import Clip
from pipeline.devices import torch_device
from pipeline.errors import UserError
from pipeline.stage import FrameRequest, ModelParams, Resources, Stage

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# Standardised grey frames: mean 128, one standard deviation = 40 grey levels (clipped to 0..255). A frame with less
# contrast than _MIN_STD grey levels (a fade) is scaled as if it had that much, so its noise is not amplified; one
# below _FLAT_STD (black, a uniform card) has nothing to measure.
_STD_LEVELS = 40.0
_MIN_STD = 8.0
_FLAT_STD = 2.0
# Photometric check: local differences are averaged over this window (working-size pixels); below _NOISE_LEVEL
# standard deviations (2 grey levels: compression noise) nothing changed.
_SUPPORT_WINDOW = 7
_NOISE_LEVEL = 0.05


class MotionParams(ModelParams):
    backend: Literal["dis", "raft"] = "dis"
    # Frame pairs 0.25 s apart (ours; Open-Sora and Data-Juicer use 0.5 s, which DIS follows less well).
    fps: float = Field(4.0, gt=0)
    # Flow is computed with the long side scaled to this many pixels (also what the stage asks the scenes stage for).
    working_side: int = Field(256, ge=32)
    dis_preset: Literal["ultrafast", "fast", "medium"] = "fast"
    global_init: bool = True  # seed DIS with a phase-correlation shift (fast pans)
    # Photometric check: a vector counts where warping cuts the local difference below this share of it; 1.0 turns
    # the check off (every vector counts, as in Open-Sora and Data-Juicer).
    support_ratio: float = Field(0.8, gt=0, le=1)
    # The clip value the rules check: the mean over pairs (Open-Sora, Data-Juicer) or the median (robust).
    statistic: Literal["mean", "median"] = "mean"
    # Own motion (camera removed) faster than this counts a point as moving, in frame diagonals per second: about
    # 0.7 px between frames 0.25 s apart at the 256 px working size, above DIS's sub-pixel noise on still texture.
    moving_threshold: float = Field(0.01, gt=0)
    # Rules (None: off, score only).
    min_flow: float | None = Field(None, ge=0)  # whole-frame mean flow, frame diagonals per second
    max_flow: float | None = Field(None, ge=0)
    # The people's own motion: mean flow inside the pose stage's person boxes after removing the camera (fitted on
    # the background), in person sizes (box diagonals) per second. Needs `pose` before `motion`.
    min_person_flow: float | None = Field(None, ge=0)
    # Without pose: the share of the frame that moves on its own (camera removed) faster than moving_threshold; a
    # small person moving in a still wide shot is a few percent of the frame, a still shot is 0.
    min_moving_share: float | None = Field(None, ge=0, le=1)
    # RAFT backend.
    raft_model: Literal["raft_large", "raft_small"] = "raft_large"
    raft_weights: str | None = None  # a .pth file; None: torchvision's default weights, from torch's cache only
    raft_iters: int = Field(12, ge=1)
    raft_batch_pairs: int = Field(16, ge=1)
    # device / gpu_share (ModelParams): where RAFT runs; the DIS backend always runs on the CPU.


class MotionStage(Stage):
    name = "motion"
    Params = MotionParams
    # Half a logical CPU (DIS at 256 px costs about 3 ms a frame): see OcrStage.resources.
    resources = Resources(cpus=0.5, batch_size=4)
    actor = True
    columns: ClassVar[dict[str, pa.DataType]] = {
        "motion_pairs": pa.int32(),  # frame pairs measured
        "motion_score": pa.float64(),  # mean over pairs, frame diagonals per second
        "motion_score_median": pa.float64(),
        "motion_score_max": pa.float64(),
        "motion_camera_score": pa.float64(),  # affine (camera-like) part of the flow, same units
        "motion_object_score": pa.float64(),  # what the affine part leaves (objects, people), same units
        "motion_supported_fraction": pa.float64(),  # share of pixels whose flow passed the photometric check
        "motion_warp_error": pa.float64(),  # mean |frame1 warped by the flow - frame0|, in standard deviations
        "motion_moving_share": pa.float64(),  # mean share of the frame moving on its own (camera removed)
        "motion_object_p99": pa.float64(),  # 99th percentile of own motion, frame diagonals per second (mean over pairs)
        # people (with pose before motion): median over pairs of the flow inside their boxes, camera removed, in
        # person sizes per second; null without pose or where no person was found
        "motion_person_score": pa.float64(),
        "motion_person_pairs": pa.int32(),  # pairs with a person box to measure in
        "motion_pair_scores": pa.list_(pa.float32()),
        "motion_pair_times": pa.list_(pa.float64()),  # time of each pair's first frame (s)
    }
    rules: ClassVar[dict[str, str]] = {
        "min_flow": "whole-frame mean flow below min_flow: little of the picture moves (a still shot, a slideshow; a "
                    "small person acting in a still wide shot also scores low: see min_person_flow)",
        "max_flow": "whole-frame mean flow above max_flow (shaky camera, very fast motion)",
        "min_person_flow": "the people barely move: flow inside their boxes, camera removed, below min_person_flow "
                           "person sizes per second (no person found counts as 0)",
        "min_moving_share": "almost nothing moves on its own: the share of the frame moving faster than "
                            "moving_threshold (camera removed) is below min_moving_share",
        "too_few_frames": "one kept frame only: no frame pair to measure (only when a rule is set)",
    }

    def __init__(self, params: MotionParams | None = None, context=None):
        super().__init__(params, context)
        self._flow = None

    def can_use_gpu(self) -> bool:
        return self.params.backend == "raft"

    def requirements(self) -> tuple[str, ...]:
        return (*self.requires, PERSON_BOXES) if self.params.min_person_flow is not None else self.requires

    def frame_request(self) -> FrameRequest:
        return FrameRequest(self.params.fps, self.params.working_side)

    def preflight(self) -> None:
        if self.params.backend == "raft":
            _RaftFlow.check(self.params)

    def setup(self) -> None:
        self._flow = _RaftFlow(self.params) if self.params.backend == "raft" else _DisFlow(self.params)

    def process_clip(self, clip: Clip) -> None:
        if self._flow is None:
            self.setup()
        p = self.params
        sample = self.frames(clip)
        if len(sample) < 2:
            self.set(clip, pairs=0, pair_scores=[], pair_times=[])
            if any(v is not None for v in (p.min_flow, p.max_flow, p.min_person_flow, p.min_moving_share)):
                if sample:
                    self.reject(clip, "too_few_frames", len(sample), 2)
                else:
                    self.reject(clip, "no_frames", 0, 1)
            return
        rgb = list(sample.images)
        grey = [working_frame(f, p.working_side) for f in rgb]
        flat = [is_flat(f) for f in grey]
        times = sample.times
        height, width = grey[0].shape
        diagonal = math.hypot(width, height)
        todo = [k for k in range(len(grey) - 1) if not (flat[k] or flat[k + 1])]
        flows = dict(zip(todo, self._flow.flows(grey, rgb, todo)))
        people = _person_boxes_at(clip, times)  # normalised boxes per sampled frame, or None without pose
        pairs: list[PairMotion] = []
        for k in range(len(grey) - 1):
            per_second = 1.0 / diagonal / max(times[k + 1] - times[k], 1e-3)
            if k not in flows:  # a black or uniform frame shows no motion to measure
                pairs.append(PairMotion.still())
                continue
            pair = measure(grey[k], grey[k + 1], flows[k], p.support_ratio, per_second, p.moving_threshold)
            if people is not None:
                pair.person = person_motion(rgb[k], rgb[k + 1], people[k] or people[k + 1],
                                            times[k + 1] - times[k], p.support_ratio)
            pairs.append(pair)
        # Figures to 6 significant digits: numpy's vectorised sums and LAPACK may differ in the last bits from
        # process to process (memory alignment), and a re-run must write the same manifest.
        scores = np.array([_round(m.mean) for m in pairs])
        score, median = _round(scores.mean()), _round(np.median(scores))
        person = [m.person for m in pairs if m.person is not None]
        person_score = _round(np.median(person)) if person else (0.0 if people is not None else None)
        moving_share = _round(np.mean([m.moving_share for m in pairs]))
        self.set(
            clip,
            pairs=len(scores),
            score=score,
            score_median=median,
            score_max=float(scores.max()),
            camera_score=_round(np.mean([m.camera for m in pairs])),
            object_score=_round(np.mean([m.objects for m in pairs])),
            supported_fraction=_round(np.mean([m.supported for m in pairs])),
            warp_error=_round(np.mean([m.warp_error for m in pairs])),
            moving_share=moving_share,
            object_p99=_round(np.mean([m.object_p99 for m in pairs])),
            person_score=person_score,
            person_pairs=len(person),
            pair_scores=[float(v) for v in scores],
            pair_times=times[:-1],
        )
        value = score if p.statistic == "mean" else median
        (self.at_least(clip, "min_flow", value, p.min_flow)
         and self.at_most(clip, "max_flow", value, p.max_flow)
         and self.at_least(clip, "min_person_flow", person_score, p.min_person_flow)
         and self.at_least(clip, "min_moving_share", moving_share, p.min_moving_share))


PERSON_BOXES = "pose_person_boxes"


def _person_boxes_at(clip: Clip, times: list[float]) -> list[list[list[float]]] | None:
    """The pose stage's person boxes (normalised) at each of `times`, from its nearest analysed frame within half a
    second (pose and motion may read frames at different rates); None when pose did not run on this clip."""
    boxes, pose_times = clip.columns.get(PERSON_BOXES), clip.columns.get("pose_frame_times")
    if boxes is None or not pose_times:
        return None
    pose_times = np.asarray(pose_times)
    out = []
    for t in times:
        nearest = int(np.argmin(np.abs(pose_times - t)))
        out.append(list(boxes[nearest]) if abs(pose_times[nearest] - t) <= 0.5 else [])
    return out


def _round(value: float, digits: int = 6) -> float:
    """`value` to `digits` significant digits."""
    value = float(value)
    if value == 0.0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def working_frame(rgb: np.ndarray, working_side: int) -> np.ndarray:
    """Grey frame with its long side at most working_side, standardised to mean 128 and std 40 grey levels."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    height, width = grey.shape
    scale = min(1.0, working_side / max(height, width))
    if scale < 1.0:
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return _standardise(grey)


def _standardise(grey: np.ndarray) -> np.ndarray:
    """Mean 128 and one standard deviation = 40 grey levels, so flicker and exposure changes do not read as motion."""
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(grey))
    if std < _FLAT_STD:
        return np.full_like(grey, 128)  # nothing to see; is_flat() recognises it
    values = (grey.astype(np.float32) - mean) * (_STD_LEVELS / max(std, _MIN_STD)) + 128.0
    return np.ascontiguousarray(np.clip(values, 0, 255).astype(np.uint8))


def is_flat(grey: np.ndarray) -> bool:
    """A standardised frame with no contrast left: black, a fade's first frame, a uniform card."""
    return float(cv2.meanStdDev(grey)[1][0, 0]) < _FLAT_STD


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinate grids (x, y) as float32, cached per frame size."""
    grid = _GRIDS.get((height, width))
    if grid is None:
        grid = _GRIDS[(height, width)] = np.meshgrid(np.arange(width, dtype=np.float32),
                                                     np.arange(height, dtype=np.float32))
    return grid


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


@dataclass
class PairMotion:
    """What one pair of frames shows, in frame diagonals per second (person: person sizes per second)."""

    mean: float  # every pixel's supported flow
    camera: float  # the affine (camera-like) part
    objects: float  # what the affine part leaves
    supported: float  # share of pixels whose flow passed the photometric check
    warp_error: float  # standard deviations
    moving_share: float  # share of the frame moving on its own faster than the threshold
    object_p99: float
    person: float | None = None  # None: no person box in this pair (or no pose)

    @classmethod
    def still(cls) -> PairMotion:
        """A pair with a black or uniform frame: nothing to measure, nothing moving."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def measure(first: np.ndarray, second: np.ndarray, flow: np.ndarray, support_ratio: float, per_second: float = 1.0,
            moving_threshold: float = 0.01) -> PairMotion:
    """One pair of standardised frames: the flow kept where it explains a change (photometric check), split into
    the camera's affine part and the scene's own motion. `per_second` turns pixels into diagonals per second."""
    flow, share, warp_error = _supported(first, second, flow, support_ratio)
    magnitude = float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean(dtype=np.float64))
    camera, residual = split_flow(flow)
    return PairMotion(
        mean=magnitude * per_second, camera=float(camera.mean()) * per_second,
        objects=float(residual.mean()) * per_second, supported=share, warp_error=warp_error,
        moving_share=float((residual * per_second > moving_threshold).mean()),
        object_p99=float(np.quantile(residual, 0.99)) * per_second)


def _supported(first: np.ndarray, second: np.ndarray, flow: np.ndarray,
               support_ratio: float) -> tuple[np.ndarray, float, float]:
    """The flow where it explains a change (zero elsewhere), the share of such pixels and the warp error."""
    height, width = first.shape
    gx, gy = _grid(height, width)
    warped = cv2.remap(second, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = first.astype(np.float32)
    after = np.abs(warped.astype(np.float32) - a) / _STD_LEVELS
    warp_error = float(after.mean(dtype=np.float64))
    if support_ratio >= 1.0:
        return flow, 1.0, warp_error
    window = (_SUPPORT_WINDOW, _SUPPORT_WINDOW)
    local_after = cv2.blur(after, window)
    local_before = cv2.blur(np.abs(second.astype(np.float32) - a) / _STD_LEVELS, window)
    # Where nothing changed (beyond noise), zero flow explains it as well as any other: such vectors do not count.
    # Vectors pointing out of the frame (content leaving it in a pan) cannot be checked and count.
    target_x, target_y = gx + flow[..., 0], gy + flow[..., 1]
    outside = (target_x < 0) | (target_x > width - 1) | (target_y < 0) | (target_y > height - 1)
    changed = local_before > _NOISE_LEVEL
    supported = (changed & (local_after < support_ratio * local_before)) | outside
    return flow * supported[..., None], float(supported.mean(dtype=np.float64)), warp_error


# People's own motion is measured on crops around them at this many pixels for the box's long side: at the whole
# frame's 256 px working size a person in a wide shot is 20 px tall and DIS cannot follow the limbs (a man doing
# jumping jacks on a box in sports2d read 0.0006 person sizes/s at 256 px, 0.3 on crops).
_PERSON_SIDE = 96
_PERSON_PAD = 0.35  # crop margin around the box, in box sizes: room for the movement and a ring of background
_PERSONS_PER_PAIR = 3  # the largest people of a frame are measured


def person_motion(first: np.ndarray, second: np.ndarray, boxes: list[list[float]], dt: float,
                  support_ratio: float) -> float | None:
    """How fast the people of a pair of RGB frames move on their own, in person sizes (box diagonals) per second:
    per person, the flow inside the box minus the median flow of the background ring around it (the camera, which
    is locally a shift), on a crop scaled so the box's long side is _PERSON_SIDE px; the fastest person counts (someone
    acting). None when there is no box."""
    if not boxes:
        return None
    height, width = first.shape[:2]
    speeds = []
    largest = sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))[:_PERSONS_PER_PAIR]
    for x0, y0, x1, y1 in largest:
        bw, bh = (x1 - x0) * width, (y1 - y0) * height
        if bw < 2 or bh < 2:
            continue
        cx0, cy0 = max(0, int((x0 * width) - _PERSON_PAD * bw)), max(0, int((y0 * height) - _PERSON_PAD * bh))
        cx1, cy1 = min(width, int(x1 * width + _PERSON_PAD * bw) + 1), min(height, int(y1 * height + _PERSON_PAD * bh) + 1)
        scale = min(4.0, _PERSON_SIDE / max(bw, bh))
        size = (max(16, round((cx1 - cx0) * scale)), max(16, round((cy1 - cy0) * scale)))
        crops = []
        for frame in (first, second):
            grey = cv2.cvtColor(np.ascontiguousarray(frame[cy0:cy1, cx0:cx1]), cv2.COLOR_RGB2GRAY)
            crops.append(_standardise(cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)))
        if is_flat(crops[0]) or is_flat(crops[1]):
            continue
        flow = sanitise(cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(crops[0], crops[1], None))
        flow, _, _ = _supported(crops[0], crops[1], flow, support_ratio)
        gx, gy = _grid(size[1], size[0])
        bx0, by0 = (x0 * width - cx0) * scale, (y0 * height - cy0) * scale
        bx1, by1 = (x1 * width - cx0) * scale, (y1 * height - cy0) * scale
        inside = (gx >= bx0) & (gx <= bx1) & (gy >= by0) & (gy <= by1)
        ring = ~inside
        camera = np.median(flow[ring], axis=0) if ring.sum() >= 50 else np.zeros(2, np.float32)
        # the 90th percentile: a moving arm is a small part of a standing person's box, and the mean drowns it
        own = np.quantile(np.hypot(*(flow[inside] - camera).T), 0.9)
        speeds.append(float(own) / math.hypot(bx1 - bx0, by1 - by0) / max(dt, 1e-3))
    return max(speeds) if speeds else 0.0


def split_flow(flow: np.ndarray, step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Magnitudes, on a grid of every `step`-th pixel, of the flow's robust affine fit (the camera) and of what the
    fit leaves (the scene's own motion)."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    sample = flow[::step, ::step].reshape(-1, 2).astype(np.float64)
    design = np.column_stack([np.ones(xs.size), xs.ravel() / width, ys.ravel() / height])
    keep = np.ones(len(sample), bool)
    camera = np.zeros_like(sample)
    for _ in range(3):  # least squares, then twice again without the 30 % worst-fitting points (moving objects)
        coef, *_ = np.linalg.lstsq(design[keep], sample[keep], rcond=None)
        camera = design @ coef
        residual = np.hypot(*(sample - camera).T)
        keep = residual <= np.quantile(residual, 0.7) + 1e-9
    return np.hypot(*camera.T).reshape(xs.shape), residual.reshape(xs.shape)


def sanitise(flow: np.ndarray) -> np.ndarray:
    """A guard: a vector longer than the frame's diagonal, or not finite, cannot be a real displacement between two
    frames; such vectors take the median of the others."""
    height, width = flow.shape[:2]
    magnitude = cv2.magnitude(flow[..., 0], flow[..., 1])
    bad = ~np.isfinite(magnitude) | (magnitude > math.hypot(width, height))
    if bad.any():
        flow = flow.copy()
        good = flow[~bad]
        flow[bad] = np.median(good, axis=0) if len(good) else 0.0
    return flow


def _warp_residual(first: np.ndarray, second: np.ndarray, flow: np.ndarray) -> float:
    gx, gy = _grid(*first.shape)
    warped = cv2.remap(second, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(warped.astype(np.float32) - first.astype(np.float32)).mean(dtype=np.float64))


class _DisFlow:
    def __init__(self, p: MotionParams):
        self.preset = _DIS_PRESETS[p.dis_preset]
        self.global_init = p.global_init
        self._window: dict[tuple[int, int], np.ndarray] = {}

    def _calc(self, first: np.ndarray, second: np.ndarray, seed: np.ndarray | None) -> np.ndarray:
        # A fresh DIS object for every pair (0.1 ms): a reused one carries state from call to call, and after some
        # sequences of calls returned vectors of 10^4 px on 256 px frames (OpenCV 4.14).
        return sanitise(cv2.DISOpticalFlow_create(self.preset).calc(first, second, seed))

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        flow = self._calc(first, second, None)
        if self.global_init:
            dx, dy = self._global_shift(first, second)
            if math.hypot(dx, dy) >= 1.0:
                seed = np.empty(first.shape + (2,), np.float32)
                seed[..., 0], seed[..., 1] = dx, dy
                seeded = self._calc(first, second, seed)
                # Keep the seeded flow only when it is clearly better, not on a tie (featureless frames).
                if _warp_residual(first, second, seeded) < 0.9 * _warp_residual(first, second, flow):
                    flow = seeded
        return flow

    def _global_shift(self, first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
        height, width = first.shape
        window = self._window.get((height, width))
        if window is None:
            window = self._window[(height, width)] = cv2.createHanningWindow((width, height), cv2.CV_32F)
        (dx, dy), _response = cv2.phaseCorrelate(first.astype(np.float32), second.astype(np.float32), window)
        return dx, dy

    def flows(self, grey: list[np.ndarray], _rgb: list[np.ndarray], pairs: list[int]) -> list[np.ndarray]:
        return [self.flow(grey[k], grey[k + 1]) for k in pairs]


class _RaftFlow:
    """torchvision RAFT on a GPU; imported lazily, so the package does not need torch."""

    @staticmethod
    def check(p: MotionParams) -> None:
        missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"motion backend 'raft' needs {' and '.join(missing)} (pip install torch torchvision), "
                            "which this environment lacks; the default backend 'dis' runs on the CPU with OpenCV")
        torch_device(p.device, "motion")  # device: cuda without a GPU is a start-up error
        path = _RaftFlow.weights_path(p)
        if not os.path.isfile(path):
            raise UserError(f"motion backend 'raft': weights file not found: {path}; put torchvision's "
                            f"{p.raft_model} weights there or set motion.raft_weights to a local .pth file")

    @staticmethod
    def weights_path(p: MotionParams) -> str:
        if p.raft_weights:
            return p.raft_weights
        import torch
        from torchvision.models import optical_flow

        weights = optical_flow.Raft_Large_Weights if p.raft_model == "raft_large" else optical_flow.Raft_Small_Weights
        return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.DEFAULT.url))

    def __init__(self, p: MotionParams):
        self.check(p)
        import torch
        from torchvision.models import optical_flow

        self.torch, self.p = torch, p
        self.device = torch_device(p.device, "motion")
        builder = optical_flow.raft_large if p.raft_model == "raft_large" else optical_flow.raft_small
        model = builder(weights=None, progress=False)
        model.load_state_dict(torch.load(self.weights_path(p), map_location="cpu", weights_only=True))
        self.model = model.eval().to(self.device)

    def flows(self, grey: list[np.ndarray], rgb: list[np.ndarray], pairs: list[int]) -> list[np.ndarray]:
        """Flow at the working size for each pair k (frames k and k + 1), RAFT run in batches of pairs."""
        torch = self.torch
        height, width = grey[0].shape
        # RAFT needs sides divisible by 8; its weights expect RGB scaled to [-1, 1].
        size = (max(8, width // 8 * 8), max(8, height // 8 * 8))
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in rgb])
        tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        out = []
        with torch.inference_mode():
            for start in range(0, len(pairs), self.p.raft_batch_pairs):
                batch = pairs[start:start + self.p.raft_batch_pairs]
                first = tensor[batch].to(self.device)
                second = tensor[[k + 1 for k in batch]].to(self.device)
                predicted = self.model(first, second, num_flow_updates=self.p.raft_iters)[-1]
                for flow in predicted.permute(0, 2, 3, 1).float().cpu().numpy():
                    # Back to the working size, so the diagonal normalisation is the DIS backend's.
                    flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
                    flow[..., 0] *= width / size[0]
                    flow[..., 1] *= height / size[1]
                    out.append(sanitise(flow))
        return out
