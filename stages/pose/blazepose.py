"""The blazepose backend of the pose stage: MediaPipe's BlazePose detector and full landmark model (the TFLite files
that the `mediapipe==0.10.21` wheel ships, fetched by `actcurate models pull blazepose-det blazepose-landmark-full`),
run by the LiteRT interpreter (`ai-edge-litert`, numpy 2) with our own pre/post-processing in numpy and cv2.

Why LiteRT: mediapipe 0.10.21 (the last with these files and `mp.solutions`) needs numpy<2 and protobuf<5; newer
mediapipe ships no models and pulls opencv-contrib 5; tflite2onnx 0.4.1 cannot convert these models (DENSIFY op).
See README "blazepose backend" for the measured cost.

The pipeline follows MediaPipe's graphs (pose_detection_cpu, pose_detection_to_roi, pose_landmark_by_roi), with
the Tasks PoseLandmarker's multi-person behaviour (the landmark model on every detection, no tracking ROI):
  detector  224x224 letterbox (centred, [-1, 1]); SSD anchors (strides 8/16/32/32/32, 2 anchors per layer and
            position, fixed size); boxes and 4 keypoints decoded against the anchors; sigmoid score > 0.5; weighted
            NMS (IoU 0.3); letterbox removed
  ROI       centre = keypoint 0 (mid-hip), side = 2 x |kp1 - kp0| x 1.25 (square), rotation so that kp0 -> kp1
            points up
  landmark  the rotated ROI warped to 256x256 ([0, 1]); 39 landmarks (x, y, z, visibility, presence) in input
            pixels; pose flag > 0.5 keeps the person; landmarks rotated and scaled back to the image
Not done (MediaPipe does): the heatmap refinement of landmark positions, landmark smoothing across frames and the
ROI tracking from the previous frame's landmarks (each analysed frame is detected afresh, as in static mode).

The stage's interface: `BlazeDetector.detect(frames, params)` gives person boxes (the extent of the person's
landmarks: the detector itself boxes only the face), so detection runs the landmark model too and keeps its result;
`BlazeLandmarks.estimate(jobs, params)` then only looks those up (and runs the landmark model on an ROI around the
box for a box it has not seen). Keypoints: BlazePose's 33 landmarks mapped to COCO-17, score = visibility.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import UserError
from stages.pose import ops

DET_MODEL = "blazepose-det"
LANDMARK_MODEL = "blazepose-landmark-full"
DET_SIZE = 224
LANDMARK_SIZE = 256
NUM_LANDMARKS = 39  # 33 body landmarks + 6 auxiliary (ROI) points
MIN_DETECTION_SCORE = 0.5  # MediaPipe's min_detection_confidence default
MIN_PRESENCE = 0.5  # pose flag threshold (MediaPipe's min_pose_presence_confidence / ThresholdingCalculator)
NMS_IOU = 0.3  # MediaPipe's pose detection: weighted NMS, min_suppression_threshold 0.3
ROI_SCALE = 1.25  # RectTransformationCalculator scale_x/scale_y
DUPLICATE_IOU = 0.7  # two detections whose landmark boxes overlap this much are one person
MAX_PEOPLE = 16  # detections per frame that get landmarks (the highest scored)
# A detection in a square of the frame (square_tiles) whose landmark ROI is larger than this share of the square is
# dropped: a person that large would have been found in the whole frame, and on the shared clips such detections
# were the false ones (an ROI 4.2x the square on a close-up of a ridged surface in pyscenedetect_testvideo, 18.6-24 s;
# real people 0.13-0.78 of the square in the basketball and pedestrian clips).
TILE_MAX_ROI = 1.0
# Only frames whose long side is at least this many times the short side are searched in squares: a squarer frame's
# squares would show people under 1.3x larger than the whole frame does, not worth two more detector runs (our
# choice, not measured; 16:9 gives 1.78x, 4:3 gives 1.33x, both searched).
TILE_MIN_ASPECT = 1.3
BOX_PAD = 0.08  # the landmark box is widened by this share of its size on each side (the top of the head, hands)

# COCO-17 keypoint i is BlazePose landmark COCO_FROM_BLAZE[i] (both use the person's left and right).
COCO_FROM_BLAZE = np.array([0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -100, 100)))


def ssd_anchors() -> np.ndarray:
    """(2254, 2) anchor centres, normalised, in the model's output order (MediaPipe SsdAnchorsCalculator with
    num_layers 5, strides 8/16/32/32/32, aspect_ratios [1.0] + the interpolated one, fixed_anchor_size)."""
    centres = []
    for stride, layers in ((8, 1), (16, 1), (32, 3)):
        size = math.ceil(DET_SIZE / stride)
        y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        c = np.stack([(x + 0.5) / size, (y + 0.5) / size], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(c, 2 * layers, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


ANCHORS = ssd_anchors()


def letterbox_centered(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """The image scaled into a size x size square, centred, zero padding; returns (square, scale, pad_x, pad_y)
    with square pixel = image pixel x scale + pad."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.zeros((size, size, 3), np.uint8)
    px, py = (size - rw) // 2, (size - rh) // 2
    out[py:py + rh, px:px + rw] = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out, scale, float(px), float(py)


def decode_detections(boxes: np.ndarray, scores: np.ndarray, min_score: float = MIN_DETECTION_SCORE
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw detector outputs (2254, 12) and (2254, 1) to face boxes (n, 4 xyxy), keypoints (n, 4, 2) and scores (n),
    normalised to the 224 input, after the score threshold and MediaPipe's weighted NMS."""
    s = sigmoid(scores.reshape(-1).astype(np.float64))
    keep = np.nonzero(s > min_score)[0]
    if keep.size == 0:
        return np.zeros((0, 4)), np.zeros((0, 4, 2)), np.zeros(0)
    raw = boxes[keep].astype(np.float64) / DET_SIZE
    a = ANCHORS[keep].astype(np.float64)
    cx, cy = raw[:, 0] + a[:, 0], raw[:, 1] + a[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kps = raw[:, 4:12].reshape(-1, 4, 2) + a[:, None, :]
    return weighted_nms(xyxy, kps, s[keep], NMS_IOU)


def weighted_nms(boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, iou: float):
    """MediaPipe's WEIGHTED non-max suppression: each cluster (IoU > iou with its best member) becomes the
    score-weighted mean of its boxes and keypoints, with the best member's score."""
    order = np.argsort(-scores, kind="stable")
    out_b, out_k, out_s = [], [], []
    while order.size:
        best = order[0]
        overlap = ops.iou_matrix(boxes[best:best + 1], boxes[order])[0]
        cluster = order[overlap > iou]
        if cluster.size == 0 or cluster[0] != best:
            cluster = np.concatenate([[best], cluster[cluster != best]])
        wgt = scores[cluster] / scores[cluster].sum()
        out_b.append((boxes[cluster] * wgt[:, None]).sum(0))
        out_k.append((kps[cluster] * wgt[:, None, None]).sum(0))
        out_s.append(scores[best])
        order = order[~np.isin(order, cluster)]
    return np.array(out_b), np.array(out_k), np.array(out_s)


def roi_from_keypoints(kps: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(centre (2,), side, rotation) of the landmark ROI from a detection's keypoints in image pixels:
    MediaPipe's AlignmentPointsRectsCalculator (kp0 -> kp1, target 90 degrees) then x1.25, square."""
    (x0, y0), (x1, y1) = kps[0], kps[1]
    side = 2.0 * math.hypot(x1 - x0, y1 - y0) * ROI_SCALE
    rotation = math.pi / 2 - math.atan2(-(y1 - y0), x1 - x0)
    rotation = rotation - 2 * math.pi * math.floor((rotation + math.pi) / (2 * math.pi))
    return np.array([x0, y0], np.float64), side, rotation


def roi_from_box(box: np.ndarray) -> tuple[np.ndarray, float, float]:
    """An upright square ROI around a person box (for boxes that did not come from this detector)."""
    x1, y1, x2, y2 = [float(v) for v in box]
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2]), max(x2 - x1, y2 - y1) * ROI_SCALE, 0.0


def roi_matrix(centre: np.ndarray, side: float, rotation: float, size: int = LANDMARK_SIZE) -> np.ndarray:
    """2x3 affine from the model input (pixels of a size x size crop) to the image."""
    c, s = math.cos(rotation), math.sin(rotation)
    r = np.array([[c, -s], [s, c]]) * (side / size)
    t = centre - r @ np.array([size / 2, size / 2])
    return np.hstack([r, t[:, None]])


def roi_corners(centre: np.ndarray, side: float, rotation: float) -> np.ndarray:
    m = roi_matrix(centre, side, rotation)
    square = np.array([[0, 0], [LANDMARK_SIZE, 0], [LANDMARK_SIZE, LANDMARK_SIZE], [0, LANDMARK_SIZE]], np.float64)
    return square @ m[:, :2].T + m[:, 2]


def landmark_box(xy: np.ndarray, visibility: np.ndarray, width: int, height: int) -> np.ndarray:
    """Person box: the extent of the landmarks seen in the frame (visibility > 0.5; all 33 if fewer than 4),
    widened by BOX_PAD on each side."""
    seen = visibility > 0.5
    pts = xy[seen] if seen.sum() >= 4 else xy
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0)
    px, py = (x2 - x1) * BOX_PAD, (y2 - y1) * BOX_PAD
    return np.array([max(0.0, x1 - px), max(0.0, y1 - py), min(float(width), x2 + px), min(float(height), y2 + py)])


class _Interpreter:
    def __init__(self, name: str, path: Path, threads: int | None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UserError("pose.backend blazepose needs the LiteRT runtime: pip install ai-edge-litert") from None
        try:
            self.it = Interpreter(model_path=str(path), num_threads=threads or None)
            self.it.allocate_tensors()
        except Exception as exc:
            raise UserError(f"model {name} at {path} cannot be loaded by LiteRT ({str(exc).strip()[:200]}); fetch it"
                            f" again with `actcurate models pull {name}`") from None
        self.input = self.it.get_input_details()[0]
        self.outputs = self.it.get_output_details()
        self.name, self.path = name, path

    def check(self, shape: tuple[int, ...], outputs: list[tuple[int, ...]]) -> None:
        found = [tuple(int(v) for v in o["shape"]) for o in self.outputs]
        if tuple(int(v) for v in self.input["shape"]) != shape or any(o not in found for o in outputs):
            raise UserError(f"model {self.name} at {self.path}: expected input {shape} and outputs {outputs}, found "
                            f"{tuple(self.input['shape'])} and {found}")

    def __call__(self, x: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
        self.it.set_tensor(self.input["index"], x)
        self.it.invoke()
        return {tuple(int(v) for v in o["shape"]): self.it.get_tensor(o["index"]) for o in self.outputs}


class BlazeLandmarks:
    """The landmark model on rotated ROIs: 33 landmarks per person, COCO-17 keypoints for the stage."""

    def __init__(self, path: Path, threads: int | None = None):
        self.model = _Interpreter(LANDMARK_MODEL, path, threads)
        self.model.check((1, LANDMARK_SIZE, LANDMARK_SIZE, 3), [(1, 195), (1, 1)])
        self._cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def landmarks(self, frame: np.ndarray, centre: np.ndarray, side: float, rotation: float
                  ) -> tuple[np.ndarray, np.ndarray, float]:
        """Landmarks (33, 2) image pixels, visibility (33,), pose presence of one ROI of an RGB frame."""
        m = roi_matrix(centre, side, rotation)
        crop = cv2.warpAffine(frame, m, (LANDMARK_SIZE, LANDMARK_SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        x = (crop.astype(np.float32) * np.float32(1 / 255))[None]
        out = self.model(x)
        lm = out[(1, 195)].reshape(NUM_LANDMARKS, 5)[:33].astype(np.float64)
        presence = float(out[(1, 1)].reshape(-1)[0])
        xy = lm[:, :2] @ m[:, :2].T + m[:, 2]
        return xy.astype(np.float32), sigmoid(lm[:, 3]).astype(np.float32), presence

    # -- the cache between detect() and estimate() ------------------------------------------------------------------
    @staticmethod
    def key(frame: np.ndarray) -> tuple:
        return (frame.__array_interface__["data"][0], frame.shape, int(frame[::17, ::17].sum()))

    def remember(self, frame: np.ndarray, boxes: np.ndarray, kpts: np.ndarray, scores: np.ndarray) -> None:
        self._cache[self.key(frame)] = (boxes, kpts, scores)
        while len(self._cache) > 4096:
            self._cache.popitem(last=False)

    def estimate(self, jobs: list[tuple[np.ndarray, ops.FramePersons]], params) -> None:
        for frame, fp in jobs:
            n = len(fp)
            kp = np.zeros((n, ops.BODY, 2), np.float32)
            ks = np.zeros((n, ops.BODY), np.float32)
            known = self._cache.get(self.key(frame))
            for i, box in enumerate(fp.boxes):
                j = None
                if known is not None and len(known[0]):
                    h, w = frame.shape[:2]
                    iou = ops.iou_matrix(box[None].astype(np.float64), ops.clip_boxes(known[0], w, h))[0]
                    j = int(np.argmax(iou)) if iou.max() > 0.95 else None
                if j is not None:
                    kp[i], ks[i] = known[1][j], known[2][j]
                else:
                    xy, vis, _ = self.landmarks(frame, *roi_from_box(box))
                    kp[i], ks[i] = xy[COCO_FROM_BLAZE], vis[COCO_FROM_BLAZE]
            fp.keypoints, fp.keypoint_scores = kp, ks


class BlazeDetector:
    """BlazePose person detection: face-anchored detections, each confirmed and boxed by the landmark model."""

    def __init__(self, path: Path, landmarks: BlazeLandmarks, threads: int | None = None):
        self.model = _Interpreter(DET_MODEL, path, threads)
        self.model.check((1, DET_SIZE, DET_SIZE, 3), [(1, 2254, 12), (1, 2254, 1)])
        self.landmarks = landmarks

    def rois(self, frame: np.ndarray) -> list[tuple[np.ndarray, float, float, float]]:
        """(centre, side, rotation, score) of every detection in one RGB frame, image pixels."""
        square, scale, px, py = letterbox_centered(frame, DET_SIZE)
        x = (square.astype(np.float32) * np.float32(2 / 255) - 1)[None]
        out = self.model(x)
        _, kps, scores = decode_detections(out[(1, 2254, 12)][0], out[(1, 2254, 1)][0])
        found = []
        for k, s in zip(kps, scores):
            pix = (k * DET_SIZE - [px, py]) / scale
            found.append((*roi_from_keypoints(pix), float(s)))
        return found[:MAX_PEOPLE]

    def people(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (n, 4), scores (n,), COCO-17 keypoints (n, 17, 2) and their scores (n, 17) of one frame.

        Where the whole frame shows nobody, its two end squares are searched too (square_tiles): the detector sees a
        wide frame at 224 px across, where people in a long shot are too small for it (mmaction2_basketball's two
        players in its second half, 5-12 pedestrians of opencv_vtest), and a square of the frame's short side is
        1.3-1.8x larger there."""
        found: list[tuple] = []
        self._add_people(frame, found, 0, 0)
        if not found:
            for x, y, side in square_tiles(*frame.shape[1::-1]):
                self._add_people(np.ascontiguousarray(frame[y:y + side, x:x + side]), found, x, y,
                                 max_roi=TILE_MAX_ROI * side)
        if not found:
            return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, ops.BODY, 2), np.float32),
                    np.zeros((0, ops.BODY), np.float32))
        boxes, scores, kpts, kscores = zip(*found)
        return (np.array(boxes, np.float32), np.array(scores, np.float32), np.array(kpts, np.float32),
                np.array(kscores, np.float32))

    def _add_people(self, image: np.ndarray, found: list[tuple], x: int, y: int, max_roi: float | None = None
                    ) -> None:
        """People of one image (the frame, or a square of it at x, y) in frame pixels, skipping those already found
        and, in a square, detections whose landmark ROI is larger than `max_roi` pixels."""
        h, w = image.shape[:2]
        offset = np.array([x, y], np.float32)
        for centre, side, rotation, score in self.rois(image):
            if max_roi is not None and side > max_roi:
                continue
            xy, vis, presence = self.landmarks.landmarks(image, centre, side, rotation)
            if presence <= MIN_PRESENCE:
                continue
            box = landmark_box(xy, vis, w, h) + np.tile(offset, 2)
            if found and ops.iou_matrix(box[None], np.array([f[0] for f in found])).max() > DUPLICATE_IOU:
                continue  # the same person found twice (detections are in descending score order)
            found.append((box, score, xy[COCO_FROM_BLAZE] + offset, vis[COCO_FROM_BLAZE]))

    def detect(self, frames: list[np.ndarray], params) -> list[tuple[np.ndarray, np.ndarray]]:
        results = []
        for frame in frames:
            boxes, scores, kpts, kscores = self.people(frame)
            self.landmarks.remember(frame, boxes, kpts, kscores)
            results.append((boxes, scores))
        return results


def square_tiles(width: int, height: int) -> list[tuple[int, int, int]]:
    """(x, y, side) of the two squares at the ends of a frame whose long side is at least TILE_MIN_ASPECT times its
    short side (they overlap up to 2x); none for a squarer frame, which the whole-frame pass sees at nearly that
    scale."""
    side = min(width, height)
    if max(width, height) < TILE_MIN_ASPECT * side:
        return []
    if width >= height:
        return [(0, 0, side), (width - side, 0, side)]
    return [(0, 0, side), (0, height - side, side)]


def load(det_path: Path, landmark_path: Path, threads: int | None = None) -> tuple[BlazeDetector, BlazeLandmarks]:
    landmarks = BlazeLandmarks(landmark_path, threads)
    return BlazeDetector(det_path, landmarks, threads), landmarks
