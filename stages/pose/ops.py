"""Pure numpy/cv2 operations of the pose stage, unit-testable without onnxruntime.

DWPose pre/post-processing follows the DWPose ONNX annotator and rtmlib 0.0.16 (itself a copy of mmpose's):
  detector  YOLOX letterbox (top-left, pad 114, ratio min(H/h, W/w)), decode of the raw head (grid + stride) or of an
            end2end `dets` output, person class only, score threshold then NMS (IoU with the +1 pixel convention)
  pose      box -> center/scale with 1.25 padding, widened to the model's aspect, affine warp to the model input,
            SimCC argmax / split ratio, back to the image through the inverse of the same affine
Then the clip-level measures: a greedy IoU tracker, camera motion (partial affine, RANSAC) and affine-compensated
keypoint motion, and the share-of-frames statistic the rules compare against their thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

# COCO-17 body keypoints: the first 17 of COCO-WholeBody's 133 (DWPose's order).
BODY = 17
BODY_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle")
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # mmpose / DWPose, RGB order
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
YOLOX_STRIDES = (8, 16, 32)
LETTERBOX_PAD = 114


# -- detector --------------------------------------------------------------------------------------------------------
def letterbox(image: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """YOLOX input: resize by min(H/h, W/w) with the top-left corner fixed, pad the rest with 114.

    `size` is (height, width). Boxes in the padded image map back to the image by dividing by the ratio.
    """
    height, width = size
    h, w = image.shape[:2]
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    if (h, w) == (height, width):
        out[:] = image
        return out, 1.0
    ratio = min(height / h, width / w)
    rh, rw = int(h * ratio), int(w * ratio)
    out.fill(LETTERBOX_PAD)
    out[:rh, :rw] = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return out, ratio


def letterbox_planar(image: np.ndarray, size: tuple[int, int], out: np.ndarray, bgr: bool) -> float:
    """`letterbox` written straight into one (3, H, W) float32 detector input, channels in the model's order
    (the same values as letterbox + normalise_nchw, with one pass over the picture and none over the padding
    beyond filling it). Returns the ratio."""
    height, width = size
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        ratio, resized, rh, rw = 1.0, image, h, w
    else:
        ratio = min(height / h, width / w)
        rh, rw = int(h * ratio), int(w * ratio)
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    for c, src in enumerate((2, 1, 0) if bgr else (0, 1, 2)):
        out[c, :rh, :rw] = resized[:, :, src]
    out[:, rh:, :] = LETTERBOX_PAD
    out[:, :rh, rw:] = LETTERBOX_PAD
    return ratio


def yolox_grid(size: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor grid (A, 2) and strides (A, 1) of a YOLOX head for an input of (height, width)."""
    grids, expanded = [], []
    for stride in strides:
        hs, ws = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy single-class NMS, highest score first; IoU with the +1 pixel convention of YOLOX/DWPose."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


def decode_yolox_raw(output: np.ndarray, size: tuple[int, int], ratios: Sequence[float], score_thr: float,
                     nms_iou: float, person_class: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw YOLOX head (N, A, 5 + classes) to person boxes (xyxy, image pixels) and scores per image.

    The exported head already applies the sigmoids; boxes are (grid offset, log size) per stride. Person score is
    objectness x class probability, as in the DWPose annotator (which keeps class 0 above 0.3 after NMS).
    """
    grid, strides = yolox_grid(size)
    results = []
    for n in range(output.shape[0]):
        pred = output[n]
        scores = pred[:, 4] * pred[:, 5 + person_class]
        candidates = np.nonzero(scores > score_thr)[0]
        if candidates.size == 0:
            results.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32)))
            continue
        p = pred[candidates, :4].astype(np.float32)
        xy = (p[:, :2] + grid[candidates]) * strides[candidates]
        wh = np.exp(p[:, 2:4]) * strides[candidates]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1) / np.float32(ratios[n])
        s = scores[candidates].astype(np.float32)
        keep = nms(boxes, s, nms_iou)
        results.append((boxes[keep], s[keep]))
    return results


def decode_yolox_dets(dets: np.ndarray, ratios: Sequence[float], score_thr: float, nms_iou: float,
                      labels: np.ndarray | None = None, person_class: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """End2end YOLOX output `dets` (N, M, 5: x1 y1 x2 y2 score, input pixels) to image-pixel boxes and scores.

    The export already ran NMS; running it again with the same IoU changes nothing there and guards exports whose
    NMS was class-agnostic or looser. With `labels`, only `person_class` is kept.
    """
    results = []
    for n in range(dets.shape[0]):
        d = dets[n].astype(np.float32)
        mask = d[:, 4] > score_thr
        if labels is not None:
            mask &= labels[n] == person_class
        boxes, scores = d[mask, :4] / np.float32(ratios[n]), d[mask, 4]
        keep = nms(boxes, scores, nms_iou)
        results.append((boxes[keep], scores[keep]))
    return results


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


# -- top-down pose ---------------------------------------------------------------------------------------------------
def box_center_scale(boxes: np.ndarray, input_size: tuple[int, int], padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """mmpose/rtmlib `bbox_xyxy2cs` with padding, then the scale widened to the model's aspect (w/h).

    `input_size` is (height, width). Returns centers (n, 2) and scales (n, 2) as (w, h) in image pixels.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    center = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    w = (boxes[:, 2] - boxes[:, 0]) * padding
    h = (boxes[:, 3] - boxes[:, 1]) * padding
    aspect = input_size[1] / input_size[0]
    wide = w > h * aspect
    scale = np.stack([np.where(wide, w, h * aspect), np.where(wide, w / aspect, h)], axis=1)
    return center, scale


def crop_matrix(center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine from the image to the model input: the scaled box onto the whole input, no rotation.

    The same matrix as mmpose's `get_warp_matrix(center, scale, rot=0, output_size)`.
    """
    height, width = input_size
    s = width / scale[0]  # equals height / scale[1] after the aspect fix
    return np.array([[s, 0.0, width / 2 - s * center[0]], [0.0, s, height / 2 - s * center[1]]])


def warp_crop(image: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int],
              out: np.ndarray | None = None) -> np.ndarray:
    """One person's box warped to the model input (bilinear, zero border), (H, W, 3) uint8."""
    height, width = input_size
    return cv2.warpAffine(image, crop_matrix(center, scale, input_size), (width, height), dst=out,
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_people(image: np.ndarray, centers: np.ndarray, scales: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Every person's box of one image warped to the model input: (n, H, W, 3) uint8."""
    out = np.empty((len(centers), *input_size, 3), np.uint8)
    for i in range(len(centers)):
        warp_crop(image, centers[i], scales[i], input_size, out=out[i])
    return out


def normalise_nchw(images: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None,
                   bgr: bool = False) -> np.ndarray:
    """(n, H, W, 3) uint8 to (n, 3, H, W) float32, channels reversed first when `bgr`, then (x - mean) / std."""
    if bgr:
        images = images[..., ::-1]
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    if mean is not None:
        m = (mean[::-1] if bgr else mean).reshape(1, 3, 1, 1).astype(np.float32)
        s = (std[::-1] if bgr else std).reshape(1, 3, 1, 1).astype(np.float32)
        x -= m
        x /= s
    return x


def normalise_into(images: np.ndarray, out: np.ndarray, mean: np.ndarray, std: np.ndarray, bgr: bool) -> np.ndarray:
    """(n, H, W, 3) uint8 to (x - mean) / std in a preallocated (n, 3, H, W) float32, one pass a channel
    (x * (1/std) - mean/std in float32: within an ulp of normalise_nchw)."""
    n = len(images)
    for c, src in enumerate((2, 1, 0) if bgr else (0, 1, 2)):
        plane = out[:n, c]
        np.multiply(images[..., src], np.float32(1.0 / std[src]), out=plane, casting="unsafe")
        plane -= np.float32(mean[src] / std[src])
    return out[:n]


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float,
                 score_mode: str = "min") -> tuple[np.ndarray, np.ndarray]:
    """SimCC argmax to model-input coordinates (n, K, 2) and scores (n, K).

    Score of a keypoint: the smaller of its x and y maxima ("min", mmpose and the DWPose annotator) or their mean
    ("mean", rtmlib 0.0.16). Keypoints whose score is <= 0 get location -1 (before the split), as in both.
    """
    n, k, _ = simcc_x.shape
    sx = simcc_x.reshape(n * k, -1)
    sy = simcc_y.reshape(n * k, -1)
    xi, yi = np.argmax(sx, axis=1), np.argmax(sy, axis=1)
    vx = sx[np.arange(n * k), xi]
    vy = sy[np.arange(n * k), yi]
    scores = np.minimum(vx, vy) if score_mode == "min" else 0.5 * (vx + vy)
    locs = np.stack([xi, yi], axis=1).astype(np.float32)
    locs[scores <= 0] = -1
    return (locs / np.float32(split_ratio)).reshape(n, k, 2), scores.reshape(n, k).astype(np.float32)


def input_to_image(locs: np.ndarray, centers: np.ndarray, scales: np.ndarray,
                   input_size: tuple[int, int]) -> np.ndarray:
    """Model-input coordinates back to the image: the inverse of `crop_matrix` (rtmlib's rescale)."""
    wh = np.array([input_size[1], input_size[0]], np.float64)
    out = locs.astype(np.float64) / wh * scales[:, None, :] + centers[:, None, :] - scales[:, None, :] / 2
    return out.astype(np.float32)


# -- per-frame detections and tracking -------------------------------------------------------------------------------
@dataclass
class FramePersons:
    """The persons found in one frame: boxes (n, 4) xyxy pixels, detector scores, keypoints when the pose ran."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray | None = None  # (n, K, 2) pixels
    keypoint_scores: np.ndarray | None = None  # (n, K)
    tracks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # track id of each person

    @classmethod
    def empty(cls, k: int | None = None) -> FramePersons:
        kp = None if k is None else np.zeros((0, k, 2), np.float32)
        ks = None if k is None else np.zeros((0, k), np.float32)
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), kp, ks)

    def __len__(self) -> int:
        return len(self.boxes)

    def subset(self, index: np.ndarray) -> FramePersons:
        return FramePersons(
            self.boxes[index], self.scores[index],
            None if self.keypoints is None else self.keypoints[index],
            None if self.keypoint_scores is None else self.keypoint_scores[index],
            self.tracks[index] if len(self.tracks) == len(self.boxes) else self.tracks,
        )


def box_area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def track_similarity(a: np.ndarray, b: np.ndarray, max_shift: float = 0.75, gaps: np.ndarray | None = None) -> np.ndarray:
    """Matching score of boxes a (n, 4) against b (m, 4): IoU plus closeness of centres, or -1 where they may not
    match. Two boxes may match when they overlap or when their centres are less than `max_shift` of their mean
    diagonal apart per frame elapsed (`gaps`, per b) and their sizes differ by less than 2x (a small person moving
    fast at a few frames a second overlaps nothing from one frame to the next)."""
    overlap = iou_matrix(a, b)
    if overlap.size == 0:
        return overlap
    ca = np.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2], axis=1)
    cb = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    da = np.hypot(a[:, 2] - a[:, 0], a[:, 3] - a[:, 1])
    db = np.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    diag = np.maximum((da[:, None] + db[None, :]) / 2, 1e-9)
    shift = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=2) / diag
    if gaps is not None:
        shift = shift / np.maximum(np.asarray(gaps, np.float64), 1)[None, :]
    size = np.maximum(da[:, None], db[None, :]) / np.maximum(np.minimum(da[:, None], db[None, :]), 1e-9)
    ok = (overlap > 0) | ((shift < max_shift) & (size < 2.0))
    return np.where(ok, overlap + np.clip(1 - shift, 0, 1), -1.0)


def track_persons(frames: Sequence[FramePersons], frame_area: float, max_gap: int = 2) -> int:
    """Greedy tracking by `track_similarity`; sets `tracks` on every frame, ids renumbered by prominence (0 = main).

    A track survives `max_gap` frames without a match. Prominence of a track: the sum over frames of its box area
    share, so a large and persistent person wins. Returns the number of tracks.
    """
    last_box: dict[int, np.ndarray] = {}
    last_seen: dict[int, int] = {}
    prominence: dict[int, float] = {}
    next_id = 0
    for t, fp in enumerate(frames):
        ids = np.full(len(fp), -1, np.int64)
        active = [i for i in last_box if t - last_seen[i] <= max_gap + 1]
        if active and len(fp):
            score = track_similarity(fp.boxes, np.stack([last_box[i] for i in active]),
                                     gaps=np.array([t - last_seen[i] for i in active]))
            while True:
                p, q = np.unravel_index(np.argmax(score), score.shape)
                if score[p, q] < 0:
                    break
                ids[p] = active[q]
                score[p, :] = -1
                score[:, q] = -1
        for p in range(len(fp)):
            if ids[p] < 0:
                ids[p] = next_id
                next_id += 1
            last_box[ids[p]] = fp.boxes[p]
            last_seen[ids[p]] = t
            prominence[ids[p]] = prominence.get(ids[p], 0.0) + float(box_area(fp.boxes[p:p + 1])[0]) / frame_area
        fp.tracks = ids
    order = sorted(prominence, key=lambda i: (-prominence[i], i))
    rank = {old: new for new, old in enumerate(order)}
    for fp in frames:
        fp.tracks = np.array([rank[i] for i in fp.tracks], np.int64)
    return len(order)


def person_of(fp: FramePersons, track: int) -> int | None:
    hit = np.nonzero(fp.tracks == track)[0]
    return int(hit[0]) if hit.size else None


# -- statistics over frames ------------------------------------------------------------------------------------------
def value_on_share(values: Sequence[float], share: float, high: bool = True) -> float:
    """The best value that at least `share` of the frames reach.

    high=True: the largest v with #(values >= v) >= share * n (for "at least" rules: min_persons, visible keypoints);
    high=False: the smallest v with #(values <= v) >= share * n (for "at most" rules: max_persons).
    With share 1.0 this is the minimum (maximum) over frames.
    """
    v = np.sort(np.asarray(values, np.float64))
    n = len(v)
    if n == 0:
        return 0.0
    need = max(1, math.ceil(share * n - 1e-9))
    return float(v[n - need]) if high else float(v[need - 1])


# -- camera motion and affine-compensated keypoint motion ------------------------------------------------------------
def _homog(a: np.ndarray) -> np.ndarray:
    return np.vstack([a, [0.0, 0.0, 1.0]])


def apply_affine(a: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ a[:, :2].T + a[:, 2]


def _person_mask(shape: tuple[int, int], boxes: np.ndarray, pad: float) -> np.ndarray:
    mask = np.full(shape, 255, np.uint8)
    h, w = shape
    for x1, y1, x2, y2 in boxes:
        px, py = (x2 - x1) * pad, (y2 - y1) * pad
        mask[max(0, int(y1 - py)):min(h, int(math.ceil(y2 + py))), max(0, int(x1 - px)):min(w, int(math.ceil(x2 + px)))] = 0
    return mask


LK_WINDOW = (21, 21)
LK_LEVELS = 3


def background_affine(prev_gray: np.ndarray, gray: np.ndarray, prev_boxes: np.ndarray, boxes: np.ndarray,
                      min_points: int = 12) -> np.ndarray | None:
    """Camera motion between two frames from background corners (outside every person box, padded by 10%):
    Shi-Tomasi corners, pyramidal Lucas-Kanade, partial affine (rotation, uniform scale, shift) by RANSAC.

    Returns the 2x3 matrix mapping previous-frame pixels to this frame, or None when the background has too few
    trackable corners (a plain wall, a frame filled by people), where the caller falls back to no compensation.
    """
    mask = _person_mask(prev_gray.shape, prev_boxes, 0.1)
    corners = cv2.goodFeaturesToTrack(prev_gray, maxCorners=200, qualityLevel=0.01, minDistance=8, mask=mask,
                                      blockSize=7)
    if corners is None or len(corners) < min_points:
        return None
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)
    moved, status, _ = cv2.calcOpticalFlowPyrLK(prev_gray, gray, corners, None, winSize=LK_WINDOW,
                                                maxLevel=LK_LEVELS, criteria=criteria)
    good = status[:, 0] == 1
    if len(boxes):  # drop corners that land on a person (someone walking in front of the background)
        inside = _person_mask(gray.shape, boxes, 0.1)
        xy = np.round(moved[:, 0]).astype(int)
        ok = (xy[:, 0] >= 0) & (xy[:, 0] < gray.shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < gray.shape[0])
        good &= ok
        good[ok] &= inside[xy[ok, 1], xy[ok, 0]] > 0
    if good.sum() < min_points:
        return None
    threshold = max(1.0, 0.005 * max(gray.shape))
    a, inliers = cv2.estimateAffinePartial2D(corners[good], moved[good], method=cv2.RANSAC,
                                             ransacReprojThreshold=threshold, maxIters=2000, confidence=0.99)
    if a is None or inliers is None or inliers.sum() < min_points:
        return None
    return a


def keypoint_affine(prev: FramePersons, cur: FramePersons, kpt_thr: float, min_points: int = 6) -> np.ndarray | None:
    """Camera motion from every tracked person's body keypoints seen in both frames (partial affine, RANSAC).

    With several people this removes their common motion (a pan); with one person it also removes that person's
    whole-body translation, leaving the articulation only.
    """
    if prev.keypoints is None or cur.keypoints is None:
        return None
    src, dst = [], []
    for p, track in enumerate(prev.tracks):
        q = person_of(cur, int(track))
        if q is None:
            continue
        vis = (prev.keypoint_scores[p, :BODY] > kpt_thr) & (cur.keypoint_scores[q, :BODY] > kpt_thr)
        src.append(prev.keypoints[p, :BODY][vis])
        dst.append(cur.keypoints[q, :BODY][vis])
    if not src or sum(len(s) for s in src) < min_points:
        return None
    s, d = np.concatenate(src).astype(np.float32), np.concatenate(dst).astype(np.float32)
    scale = float(np.ptp(s, axis=0).max()) if len(s) else 1.0
    a, _ = cv2.estimateAffinePartial2D(s, d, method=cv2.RANSAC, ransacReprojThreshold=max(1.0, 0.02 * scale))
    return a


def camera_affines(frames: np.ndarray | None, persons: Sequence[FramePersons], mode: str, kpt_thr: float,
                   max_side: int = 384) -> list[np.ndarray | None]:
    """One 2x3 matrix per consecutive frame pair (previous -> next), or None where no estimate was possible."""
    n = len(persons)
    if mode == "none" or n < 2:
        return [np.eye(2, 3) for _ in range(max(0, n - 1))] if mode == "none" else []
    if mode == "keypoints" or frames is None:
        return [keypoint_affine(persons[t], persons[t + 1], kpt_thr) if mode == "keypoints" else None
                for t in range(n - 1)]
    h, w = frames.shape[1:3]
    factor = min(1.0, max_side / max(h, w))
    grays = []
    for f in frames:
        g = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        grays.append(cv2.resize(g, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
                     if factor < 1 else g)
    scale_to = np.diag([factor, factor, 1.0])
    scale_from = np.diag([1 / factor, 1 / factor, 1.0])
    out: list[np.ndarray | None] = []
    for t in range(n - 1):
        a = background_affine(grays[t], grays[t + 1], persons[t].boxes * factor, persons[t + 1].boxes * factor)
        out.append(None if a is None else (scale_from @ _homog(a) @ scale_to)[:2])
    return out


def step_motion(prev: FramePersons, cur: FramePersons, track: int, affine: np.ndarray | None, dt: float,
                kpt_thr: float, min_joints: int = 3) -> float | None:
    """Mean body-joint displacement of one person between two frames, after moving the earlier keypoints by the
    camera affine, divided by the person's box diagonal (mean of both frames) and by the time step: person sizes
    per second. None when the person or too few joints are missing in either frame."""
    p, q = person_of(prev, track), person_of(cur, track)
    if p is None or q is None or prev.keypoints is None or cur.keypoints is None or dt <= 0:
        return None
    vis = (prev.keypoint_scores[p, :BODY] > kpt_thr) & (cur.keypoint_scores[q, :BODY] > kpt_thr)
    if vis.sum() < min_joints:
        return None
    a = np.eye(2, 3) if affine is None else affine
    before = apply_affine(a, prev.keypoints[p, :BODY][vis].astype(np.float64))
    after = cur.keypoints[q, :BODY][vis].astype(np.float64)
    diag = 0.5 * (_diag(prev.boxes[p]) + _diag(cur.boxes[q]))
    if diag <= 0:
        return None
    return float(np.linalg.norm(after - before, axis=1).mean() / diag / dt)


def _diag(box: np.ndarray) -> float:
    return float(math.hypot(box[2] - box[0], box[3] - box[1]))


def camera_speed(affine: np.ndarray | None, width: int, height: int, dt: float) -> float | None:
    """How far the frame centre moves under the camera affine, in frame diagonals per second."""
    if affine is None or dt <= 0:
        return None
    c = np.array([[width / 2, height / 2]])
    return float(np.linalg.norm(apply_affine(affine, c) - c) / math.hypot(width, height) / dt)


def cumulative_affines(affines: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """3x3 matrices mapping each frame's pixels into the first frame's (identity where a step is unknown)."""
    out = [np.eye(3)]
    for a in affines:
        step = np.eye(3) if a is None else _homog(a)
        out.append(out[-1] @ np.linalg.inv(step))
    return out
