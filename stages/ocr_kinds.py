"""Text by kind: which of a clip's detected text boxes are subtitles, overlays or text in the scene.

Pure functions over the clip's sampled frames (RGB) and their detected boxes (normalised [x0, y0, x1, y1]); the ocr
stage calls `measure` and rejects by `RULES` (rule -> the value it checks). No recognition is needed: content change is measured on the pixels.

1. Letterbox (`detect_letterbox`): rows (columns) from the top, bottom (left, right) edge where at least 60 % of the
   pixels are near black (grey <= 32) and flat on every sampled frame, 2-40 % of the side, next to a brighter
   picture. A subtitle line in a bar covers well under 60 % of its rows, so it does not end the bar.
2. Tracks (`link_tracks`): a box joins the track whose last box overlaps it in x and by half its height in y, with a
   similar height (a changing subtitle line keeps its row but not its width); otherwise it starts a track.
3. Per track: its share of the frames; whether it stays put (`static`: every box within `static_tolerance` of the
   track's median box; `row_static`: its row only); content change between consecutive boxes (1 - normalised
   correlation of the gradient magnitude over the union of the two boxes: the same text scores under 0.2, other
   text 0.6-0.7 on the test clips); its "graphic" share (pixels that differ from the box's border colour by Lab
   distance >= 40 and are lighter than it and nearly grey, or bright and saturated: the fills of burned-in
   captions, subtitles, logos and watermarks; printed signs are mostly dark on light; upper quartile over the
   reads); and whether the camera moved between its reads (phase correlation of the whole frames with every text
   box blanked).
4. Kind of a track (positions are taken inside the picture, i.e. without the letterbox bars):
   - subtitle: a line (width >= `min_line_width`, aspect >= `min_line_aspect`, centre within `centre_tolerance`
     of the middle) in the top band (`top_band`), the bottom band (`bottom_band`) or a bar, on a fixed row, drawn
     as burned-in text is (graphic fill, or in a bar), whose content changes (`change_threshold`) or which shows
     on fewer than `overlay_min_presence` of the frames (it comes or goes);
   - overlay: seen on >= `overlay_min_presence` of the frames (and at least twice) in the same place, with evidence
     that it is not in the scene: in a letterbox bar, in the corner zone, graphic fill, or the camera moved while it
     did not; a box in a bar is never scene text;
   - scene: the rest (text moving with the picture; dark-on-light text fixed in a fixed shot: a sign on a wall).
   A clip with one read frame shows neither change nor persistence: its boxes are scene text unless in a bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

KINDS = ("subtitle", "overlay", "scene")
Box = Sequence[float]  # normalised [x0, y0, x1, y1]


class KindParams(BaseModel):
    """How boxes are told apart (the stage's `kinds:` block); defaults chosen on the shared clips and rendered tests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_band: float = Field(0.2, ge=0, le=1)  # subtitle rows: centre y above this share of the picture height ...
    bottom_band: float = Field(0.7, ge=0, le=1)  # ... or below this one
    centre_tolerance: float = Field(0.15, ge=0, le=0.5)  # |centre x - 0.5| of the picture width for a subtitle
    min_line_width: float = Field(0.1, ge=0, le=1)  # subtitle line width, share of the picture width
    min_line_aspect: float = Field(2.5, ge=0)  # subtitle line width / height in pixels
    change_threshold: float = Field(0.35, ge=0, le=1)  # content change (1 - gradient correlation) that counts
    overlay_min_presence: float = Field(0.5, ge=0, le=1)  # share of frames an overlay shows on
    static_tolerance: float = Field(0.03, ge=0, le=1)  # box edges within this share of the frame: "same place"
    graphic_min_share: float = Field(0.04, ge=0, le=1)  # graphic pixels in the box for "rendered"
    camera_shift: float = Field(0.03, ge=0, le=1)  # picture shift between read frames (share of its size): a pan
    corner_margin: float = Field(0.1, ge=0, le=0.5)  # corner zone (Cosmos-Curate's 10 %)
    letterbox_dark: int = Field(32, ge=0, le=255)
    letterbox_min: float = Field(0.02, ge=0, le=0.5)


@dataclass
class Track:
    obs: list[tuple[int, int]] = field(default_factory=list)  # (frame, box) pairs
    kind: str = "scene"
    features: dict = field(default_factory=dict)


# -- letterbox --------------------------------------------------------------------------------------------------------
def detect_letterbox(greys: Sequence[np.ndarray], dark: int = 32, min_bar: float = 0.02, max_bar: float = 0.4,
                     dark_share: float = 0.6, flat: int = 6, edge: int = 12) -> list[float]:
    """[top, bottom, left, right] bar widths as shares of the frame height (top, bottom) and width (left, right).

    A row (column) is bar-like on a frame where at least `dark_share` of its pixels are near black (<= `dark`) and
    within `flat` grey levels of its median: a bar is flat, a dark scene mostly is not. A bar is the run of rows bar-
    like on every frame from an edge, and the picture next to it must be brighter (median over the frames of the
    strip just inside minus the bar, >= `edge` grey levels): shadows that fade into the picture are no bar."""
    if not len(greys):
        return [0.0, 0.0, 0.0, 0.0]
    stack = np.stack(greys).astype(np.int16)  # (n, h, w)

    def side(axis: int, reverse: bool) -> float:
        data = stack if axis == 2 else stack.transpose(0, 2, 1)  # lines along axis 1
        if reverse:
            data = data[:, ::-1]
        median = np.median(data, axis=2, keepdims=True)
        good = (data <= dark) & (np.abs(data - median) <= flat)
        flags = good.mean(axis=2).min(axis=0) >= dark_share  # per line, on every frame
        n = int(np.argmin(flags)) if not flags.all() else len(flags)
        share = n / len(flags)
        if not min_bar <= share <= max_bar:
            return 0.0
        strip = max(2, len(flags) // 50)
        bar = np.median(data[:, :n].reshape(len(data), -1), axis=1)
        inside = np.median(data[:, n:n + strip].reshape(len(data), -1), axis=1)
        return round(share, 4) if float(np.median(inside - bar)) >= edge else 0.0

    return [side(2, False), side(2, True), side(1, False), side(1, True)]


def in_bar(box: Box, letterbox: Sequence[float]) -> bool:
    top, bottom, left, right = letterbox
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (top > 0 and cy < top) or (bottom > 0 and cy > 1 - bottom) or (left > 0 and cx < left) or (
        right > 0 and cx > 1 - right)


# -- tracks -----------------------------------------------------------------------------------------------------------
def _same_row(a: Box, b: Box) -> float:
    """Match score of two boxes as one text line seen twice (0: no match)."""
    ha, hb = a[3] - a[1], b[3] - b[1]
    if min(ha, hb) <= 0 or max(ha, hb) / min(ha, hb) > 1.8:
        return 0.0
    y_overlap = min(a[3], b[3]) - max(a[1], b[1])
    x_overlap = min(a[2], b[2]) - max(a[0], b[0])
    if y_overlap < 0.5 * min(ha, hb) or x_overlap <= 0:
        return 0.0
    inter = x_overlap * y_overlap
    union = (a[2] - a[0]) * ha + (b[2] - b[0]) * hb - inter
    return float(inter / union) + 1e-3


def link_tracks(frame_boxes: Sequence[Sequence[Box]]) -> list[Track]:
    tracks: list[Track] = []
    for f, boxes in enumerate(frame_boxes):
        pairs = []
        for t, track in enumerate(tracks):
            last_f, last_b = track.obs[-1]
            if last_f == f:
                continue
            last = frame_boxes[last_f][last_b]
            for b, box in enumerate(boxes):
                score = _same_row(last, box)
                if score > 0:
                    pairs.append((score, t, b))
        used_t, used_b = set(), set()
        for _score, t, b in sorted(pairs, reverse=True):
            if t in used_t or b in used_b:
                continue
            tracks[t].obs.append((f, b))
            used_t.add(t)
            used_b.add(b)
        for b in range(len(boxes)):
            if b not in used_b:
                tracks.append(Track(obs=[(f, b)]))
    return tracks


# -- pixel features ---------------------------------------------------------------------------------------------------
def _px(box: Box, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
    x0 = max(0, int(np.floor(box[0] * width)) - pad)
    y0 = max(0, int(np.floor(box[1] * height)) - pad)
    x1 = min(width, int(np.ceil(box[2] * width)) + pad)
    y1 = min(height, int(np.ceil(box[3] * height)) + pad)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denom < 1e-6:
        return 1.0 if float(np.abs(a).sum() + np.abs(b).sum()) < 1e-6 else 0.0
    return float((a * b).sum() / denom)


def _change(grad_a: np.ndarray, grad_b: np.ndarray, region: tuple[int, int, int, int],
            mask: np.ndarray | None = None) -> float:
    """1 - correlation of the gradient magnitudes of two frames over a region (0: the same picture there)."""
    x0, y0, x1, y1 = region
    a, b = grad_a[y0:y1, x0:x1], grad_b[y0:y1, x0:x1]
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.clip(1.0 - _ncc(a, b), 0.0, 1.0))


def graphic_share(rgb_crop: np.ndarray) -> float:
    """Share of a box's pixels that look like a burned-in fill: far from the box's border colour (Lab distance
    >= 40) and either lighter than it and nearly grey (L* at least 30 above, S <= 60: white, grey or semi-transparent
    light letters, the broadcast convention) or bright and saturated (V >= 180, S >= 120: yellow captions)."""
    h, w = rgb_crop.shape[:2]
    if h < 3 or w < 3:
        return 0.0
    lab = cv2.cvtColor(rgb_crop, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.median(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]), axis=0)
    distinct = np.linalg.norm(lab - border, axis=2) >= 40
    hsv = cv2.cvtColor(rgb_crop, cv2.COLOR_RGB2HSV)
    s, v = hsv[..., 1], hsv[..., 2]
    lighter = (lab[..., 0] - border[0] >= 30) & (s <= 60)
    vivid = (v >= 180) & (s >= 120)
    return float((distinct & (lighter | vivid)).mean())


def camera_shifts(greys: Sequence[np.ndarray], frame_boxes: Sequence[Sequence[Box]] | None = None,
                  width: int = 160) -> list[float]:
    """Global shift of the picture between consecutive frames (phase correlation on a 160 px wide copy with the
    text boxes of both frames blanked, so fixed text cannot pin it at 0), as a share of the picture's size; people
    moving in a fixed shot leave it near 0, a pan does not."""
    small = []
    for g in greys:
        h = max(8, round(g.shape[0] * width / g.shape[1]))
        small.append(cv2.resize(g, (width, h), interpolation=cv2.INTER_AREA).astype(np.float32))
    if frame_boxes:
        h = small[0].shape[0]
        every = [b for boxes in frame_boxes for b in boxes]
        for image in small:
            fill = float(image.mean())
            for b in every:
                x0, y0, x1, y1 = _px(b, width, h, pad=2)
                image[y0:y1, x0:x1] = fill
    if len(small) < 2:
        return []
    window = cv2.createHanningWindow(small[0].shape[::-1], cv2.CV_32F)
    out = []
    for a, b in zip(small, small[1:]):
        (dx, dy), _response = cv2.phaseCorrelate(a, b, window)
        out.append(float(np.hypot(dx / a.shape[1], dy / a.shape[0])))
    return out


# -- classification ---------------------------------------------------------------------------------------------------
def _picture(box: Box, letterbox: Sequence[float]) -> tuple[float, float, float]:
    """Centre x, centre y and width of a box in the picture's coordinates (inside the letterbox bars)."""
    top, bottom, left, right = letterbox
    pw, ph = max(1e-6, 1 - left - right), max(1e-6, 1 - top - bottom)
    cx = ((box[0] + box[2]) / 2 - left) / pw
    cy = ((box[1] + box[3]) / 2 - top) / ph
    return cx, cy, (box[2] - box[0]) / pw


def classify(frames: Sequence[np.ndarray], frame_boxes: Sequence[Sequence[Box]], params: KindParams | None = None,
             letterbox: Sequence[float] | None = None) -> tuple[list[list[str]], list[float], list[Track]]:
    """Kinds of every box of every frame, the letterbox, and the tracks (with their features)."""
    p = params or KindParams()
    n = len(frame_boxes)
    greys = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    if letterbox is None:
        letterbox = detect_letterbox(greys, p.letterbox_dark, p.letterbox_min)
    kinds = [["scene"] * len(boxes) for boxes in frame_boxes]
    if not any(frame_boxes):
        return kinds, list(letterbox), []
    height, width = greys[0].shape
    grads: dict[int, np.ndarray] = {}

    def grad(f: int) -> np.ndarray:
        if f not in grads:
            g = greys[f].astype(np.float32)
            grads[f] = cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
        return grads[f]

    tracks = link_tracks(frame_boxes)
    shifts = camera_shifts(greys, frame_boxes)
    for track in tracks:
        boxes = np.array([frame_boxes[f][b] for f, b in track.obs], np.float64)
        median = np.median(boxes, axis=0)
        static = len(boxes) >= 2 and float(np.abs(boxes - median).max()) <= p.static_tolerance
        row_static = float(np.abs(boxes[:, [1, 3]] - median[[1, 3]]).max()) <= p.static_tolerance
        changes = []
        for (f0, b0), (f1, b1) in zip(track.obs, track.obs[1:]):
            a, b = frame_boxes[f0][b0], frame_boxes[f1][b1]
            union = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
            changes.append(_change(grad(f0), grad(f1), _px(union, width, height, pad=1)))
        # The camera moved between the frames this box was seen on while the box stayed: not in the scene.
        spans = [max(shifts[f0:f1]) for (f0, _), (f1, _) in zip(track.obs, track.obs[1:]) if f1 > f0]
        fixed_over_moving = bool(spans) and float(np.median(spans)) >= p.camera_shift
        # Upper quartile over the reads: a fade or a bright background hides a light fill on some frames.
        graphic = float(np.quantile([graphic_share(_crop(frames[f], frame_boxes[f][b], width, height))
                                     for f, b in track.obs], 0.75))
        cx, cy, w_pic = _picture(median, letterbox)
        box_px_w, box_px_h = (median[2] - median[0]) * width, max(1e-6, (median[3] - median[1]) * height)
        bar = in_bar(median, letterbox)
        corner = (min(median[0] + median[2], 2 - median[0] - median[2]) / 2 <= p.corner_margin
                  and min(median[1] + median[3], 2 - median[1] - median[3]) / 2 <= p.corner_margin)
        line = (w_pic >= p.min_line_width and box_px_w / box_px_h >= p.min_line_aspect
                and abs(cx - 0.5) <= p.centre_tolerance)
        band = bar or cy <= p.top_band or cy >= p.bottom_band
        presence = len(track.obs) / n
        changed = bool(changes) and max(changes) >= p.change_threshold
        transient = n >= 2 and presence < 1.0
        persistent = static and presence >= p.overlay_min_presence
        rendered = bar or graphic >= p.graphic_min_share
        if line and band and row_static and rendered and (changed or (transient and not persistent)):
            kind = "subtitle"
        elif persistent and (rendered or corner or fixed_over_moving):
            kind = "overlay"
        elif bar:
            kind = "overlay"
        else:
            kind = "scene"
        track.kind = kind
        track.features = dict(presence=round(presence, 3), static=static, row_static=row_static,
                              change_max=round(max(changes), 3) if changes else None,
                              camera_moved=fixed_over_moving,
                              graphic=round(graphic, 3), line=line, band=band, bar=bar, corner=corner)
        for f, b in track.obs:
            kinds[f][b] = kind
    return kinds, list(letterbox), tracks


def _crop(frame: np.ndarray, box: Box, width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = _px(box, width, height)
    return np.ascontiguousarray(frame[y0:y1, x0:x1])


# -- per-clip values and rules ----------------------------------------------------------------------------------------
def measure(frames: Sequence[np.ndarray], frame_boxes: Sequence[Sequence[Box]], params: KindParams | None = None,
            quantile: float = 1.0) -> dict:
    """The stage's kind columns (without the `ocr_` prefix)."""
    kinds, letterbox, _tracks = classify(frames, frame_boxes, params)
    n = max(1, len(frame_boxes))
    out: dict = {"letterbox": letterbox, "frame_kinds": kinds}
    for kind, prefix in (("subtitle", "subtitle"), ("overlay", "overlay"), ("scene", "scene_text")):
        counts = [sum(k == kind for k in ks) for ks in kinds] or [0]
        areas = [min(1.0, sum((b[2] - b[0]) * (b[3] - b[1]) for b, k in zip(boxes, ks) if k == kind))
                 for boxes, ks in zip(frame_boxes, kinds)] or [0.0]
        out[f"{prefix}_boxes"] = int(np.quantile(counts, quantile, method="higher"))
        out[f"{prefix}_area"] = round(float(np.quantile(areas, quantile, method="higher")), 5)
        out[f"{prefix}_frames"] = round(sum(c > 0 for c in counts) / n, 4)
    top, bottom, left, right = letterbox
    out["letterbox_area"] = round(1 - (1 - top - bottom) * (1 - left - right), 4)
    return out


# rule -> (column without prefix, parameter)
RULES = {
    "max_subtitle_frames": "subtitle_frames",
    "max_subtitle_boxes": "subtitle_boxes",
    "max_overlay_area": "overlay_area",
    "max_scene_text_area": "scene_text_area",
    "max_letterbox_area": "letterbox_area",
}
