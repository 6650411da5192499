"""ocr: burned-in text on a clip's kept frames (PP-OCR through rapidocr, offline), and the text rules.

Detection only by default: PaddlePaddle's PP-OCRv6 detector (DBNet family) that rapidocr ships inside its wheel
finds text boxes; recognition (PP-OCRv6 rec) runs only when `recognize: true`: it costs about as much again as the
detection, more on frames with many lines (bench/filters.py). Per clip the stage records every frame's boxes
(normalised [x0, y0, x1, y1]), per-frame counts, the text area ratio and, with recognition, the text. The detector
gets PaddleOCR's own input normalisation (ImageNet mean and std); rapidocr 3.10's default (0.5, 0.5) made it box
whole pictures (a letterboxed tai chi clip, foliage) as one text region.

Boxes that are small and sit in a corner (channel logos, watermarks such as "strateg.tv") are counted apart as
corner boxes: by default they do not count as text for `max_text_boxes` and `max_text_area_ratio`, and
`max_corner_boxes` can reject them on its own. The corner zone is Cosmos-Curate's (box centre within 10 % of the
width and 10 % of the height of a corner); the size bound is ours.

Text by kind (stages/ocr_kinds.py): every box is also classed as a subtitle, an overlay (logo, watermark, caption,
score bug) or scene text over the clip's frames, from position, persistence, pixel change and fill, and the clip's
letterbox bars are recorded; the kind rules (max_subtitle_frames, max_overlay_area, max_scene_text_area, ...) reject
on those, so a one-line subtitle no longer passes as "one text" and a sign in the scene is not taken for a caption.

Sources of the defaults: HOIGen-1M rejects clips with "over one text" (DBNet++): max_text_boxes: 1 reads it
literally (its recipe rejects by kind instead); Open-Sora-Plan runs its OCR at 1 fps; rapidocr's own box threshold
(0.5) and text-score threshold (0.5); the 960 px long side and the fast detector settings from the dependency probe.

`backend: paddleocr` uses PaddleOCR 3 (TextDetection / TextRecognition) when it is installed; it is not a dependency
of this package, and PaddleOCR downloads its models on first use, so it is for machines that can reach its hosts or
that pass local model folders (det_model_path / rec_model_path).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.clip import Clip
from pipeline.devices import onnx_providers
from pipeline.errors import UserError
from pipeline.stage import FrameRequest, ModelParams, Resources, Stage
from stages import ocr_kinds
from stages.ocr_kinds import KindParams


class OcrParams(ModelParams):
    backend: Literal["rapidocr", "paddleocr"] = "rapidocr"
    # Frames read: 1 per second (Open-Sora-Plan's OCR rate) with the long side bounded at 960 px (the detector's
    # fast setting from the dependency probe; larger frames are scaled down, smaller ones are not scaled up).
    fps: float = Field(1.0, gt=0)
    max_side: int = Field(960, ge=32)
    recognize: bool = False  # also read the text (PP-OCRv6 rec); detection only is about twice as fast
    min_box_score: float = Field(0.5, ge=0, le=1)  # detector box threshold (rapidocr's Det.box_thresh default)
    min_text_score: float = Field(0.5, ge=0, le=1)  # recognition: texts scored below this are dropped (rapidocr's)
    # A "box" over this share of the frame is a detector false positive on texture (foliage, a whole letterboxed
    # picture), not a text line; it is left out (ours).
    max_box_area_ratio: float = Field(0.3, gt=0, le=1)
    # Corner boxes: centre within corner_margin of the width and of the height from a corner (Cosmos-Curate's 0.1)
    # and area at most corner_max_area_ratio of the frame (ours: "strateg.tv" on 340x256 covers 1.4 %).
    corner_margin: float = Field(0.1, ge=0, le=0.5)
    corner_max_area_ratio: float = Field(0.02, ge=0, le=1)
    corner_boxes_count_as_text: bool = False
    # The clip's value for the rules is this quantile of the per-frame values: 1.0 = the worst frame.
    frame_quantile: float = Field(1.0, ge=0, le=1)
    # Rules (None: off, score only). A clip is rejected when its value is above the threshold.
    max_text_boxes: int | None = Field(None, ge=0)
    max_text_area_ratio: float | None = Field(None, ge=0)
    max_corner_boxes: int | None = Field(None, ge=0)
    # Text by kind (stages/ocr_kinds.py): rules on subtitles, overlays and scene text, and how kinds are told apart.
    max_subtitle_frames: float | None = Field(None, ge=0, le=1)
    max_subtitle_boxes: int | None = Field(None, ge=0)
    max_overlay_area: float | None = Field(None, ge=0)
    max_scene_text_area: float | None = Field(None, ge=0)
    max_letterbox_area: float | None = Field(None, ge=0)
    kinds: KindParams = KindParams()
    # Explicit model files (rapidocr: .onnx files; paddleocr: model folders). None: rapidocr's bundled PP-OCRv6.
    det_model_path: str | None = None
    rec_model_path: str | None = None
    # onnxruntime intra-op threads; None: the worker's CPUs (Stage.worker_threads; every core outside the engine)
    threads: int | None = Field(None, ge=1)


class OcrStage(Stage):
    name = "ocr"
    Params = OcrParams
    # Half a logical CPU: with the scenes task (1 CPU) and the motion actor (0.5) the quickstart fits 2 cores; each
    # actor pool keeps at least one actor, so two 1-CPU actors there would leave the scenes stage no CPU at all.
    resources = Resources(cpus=0.5, batch_size=4)
    actor = True
    columns: ClassVar[dict[str, pa.DataType]] = {
        "ocr_frames": pa.int32(),  # frames read
        "ocr_frame_times": pa.list_(pa.float64()),  # their times (s)
        # Per frame, every detected box as [x0, y0, x1, y1] in fractions of the frame width and height.
        "ocr_frame_boxes": pa.list_(pa.list_(pa.list_(pa.float32()))),
        "ocr_frame_text_boxes": pa.list_(pa.int32()),  # per frame: boxes that count as text
        "ocr_frame_corner_boxes": pa.list_(pa.int32()),  # per frame: corner boxes
        "ocr_text_boxes": pa.int32(),  # the value max_text_boxes checks (frame_quantile over frames)
        "ocr_text_boxes_max": pa.int32(),
        "ocr_text_boxes_mean": pa.float64(),
        "ocr_text_area_ratio": pa.float64(),  # the value max_text_area_ratio checks (text box area / frame area)
        "ocr_text_area_ratio_mean": pa.float64(),
        "ocr_corner_boxes_max": pa.int32(),
        # With recognition only: per frame the text of each box ("" below min_text_score), and the clip's distinct texts.
        "ocr_frame_texts": pa.list_(pa.list_(pa.string())),
        "ocr_text": pa.list_(pa.string()),
        # Text by kind (stages/ocr_kinds.py): per frame the kind of each box ("subtitle", "overlay", "scene"), aligned
        # with ocr_frame_boxes; per kind the frame_quantile of the per-frame box count and box area (share of the
        # frame) and the share of frames with at least one box of that kind.
        "ocr_frame_kinds": pa.list_(pa.list_(pa.string())),
        "ocr_subtitle_boxes": pa.int32(),
        "ocr_subtitle_area": pa.float64(),
        "ocr_subtitle_frames": pa.float64(),
        "ocr_overlay_boxes": pa.int32(),
        "ocr_overlay_area": pa.float64(),
        "ocr_overlay_frames": pa.float64(),
        "ocr_scene_text_boxes": pa.int32(),
        "ocr_scene_text_area": pa.float64(),
        "ocr_scene_text_frames": pa.float64(),
        # Black bars [top, bottom, left, right] as shares of the frame height / width, and the share of the frame
        # they cover.
        "ocr_letterbox": pa.list_(pa.float32()),
        "ocr_letterbox_area": pa.float64(),
    }
    rules: ClassVar[dict[str, str]] = {
        "max_text_boxes": "more text boxes than max_text_boxes on the clip's frames (corner logos apart)",
        "max_text_area_ratio": "text covers more than max_text_area_ratio of a frame",
        "max_corner_boxes": "more small corner text boxes (logos, watermarks) than max_corner_boxes",
        "max_subtitle_frames": "subtitles (changing text lines in the top or bottom band) on more than "
                               "max_subtitle_frames of the frames",
        "max_subtitle_boxes": "more subtitle lines than max_subtitle_boxes on a frame",
        "max_overlay_area": "overlays (logos, captions, score bugs fixed in place) cover more than max_overlay_area",
        "max_scene_text_area": "text in the scene (signs, banners) covers more than max_scene_text_area of a frame",
        "max_letterbox_area": "black letterbox or pillarbox bars cover more than max_letterbox_area of the frame",
    }

    def __init__(self, params: OcrParams | None = None, context=None):
        super().__init__(params, context)
        self._backend = None

    def frame_request(self) -> FrameRequest:
        return FrameRequest(self.params.fps, self.params.max_side)

    def preflight(self) -> None:
        p = self.params
        if p.backend == "paddleocr":
            if importlib.util.find_spec("paddleocr") is None:
                raise UserError("ocr backend 'paddleocr' needs the paddleocr package (pip install paddleocr "
                                "paddlepaddle), which is not installed; the default backend 'rapidocr' runs offline "
                                "with the PP-OCR models it ships")
            return
        for module in ("rapidocr", "onnxruntime"):
            if importlib.util.find_spec(module) is None:
                raise UserError(f"ocr backend 'rapidocr' needs the {module} package: pip install 'rapidocr==3.10.0' "
                                "onnxruntime")
        for path in _rapidocr_model_paths(p).values():
            if not Path(path).is_file():
                raise UserError(f"ocr: model file not found: {path} (set ocr.det_model_path / ocr.rec_model_path, or "
                                "reinstall rapidocr==3.10.0, whose wheel ships the PP-OCRv6 models)")

    def can_use_gpu(self) -> bool:
        return self.params.backend == "rapidocr"  # onnxruntime's CUDA provider; paddle picks its own device

    def setup(self) -> None:
        if self.params.backend == "paddleocr":
            self._backend = _PaddleBackend(self.params)
        else:
            use_cuda = onnx_providers(self.params.device, self.name)[0] == "CUDAExecutionProvider"
            self._backend = _RapidBackend(self.params, use_cuda, self.params.threads or self.worker_threads())

    # -- processing ------------------------------------------------------------------------------------------------
    def process_clip(self, clip: Clip) -> None:
        if self._backend is None:
            self.setup()
        p = self.params
        sample = self.frames(clip)
        if not sample:
            self.set(clip, frames=0, frame_times=[])
            if any(v is not None for v in (p.max_text_boxes, p.max_text_area_ratio, p.max_corner_boxes)) or any(
                    getattr(p, rule) is not None for rule in ocr_kinds.RULES):
                self.reject(clip, "no_frames", 0, 1)
            return
        frame_boxes, frame_texts = [], []
        text_counts, corner_counts, area_ratios = [], [], []
        for frame in sample.images:
            height, width = frame.shape[:2]
            quads, _scores = self._backend.detect(frame)
            if len(quads):
                areas = np.array([_polygon_area(q) for q in quads]) / (width * height)
                quads = quads[areas <= p.max_box_area_ratio]
            texts = self._backend.recognize(frame, quads) if p.recognize else None
            boxes, n_text, n_corner, area = self._summarise(quads, width, height)
            frame_boxes.append(boxes)
            text_counts.append(n_text)
            corner_counts.append(n_corner)
            area_ratios.append(area)
            if texts is not None:
                frame_texts.append(texts)
        q = p.frame_quantile
        text_boxes = int(np.quantile(text_counts, q, method="higher"))
        area_ratio = float(np.quantile(area_ratios, q, method="higher"))
        values = dict(
            frames=len(sample),
            frame_times=sample.times,
            frame_boxes=frame_boxes,
            frame_text_boxes=text_counts,
            frame_corner_boxes=corner_counts,
            text_boxes=text_boxes,
            text_boxes_max=int(max(text_counts)),
            text_boxes_mean=float(np.mean(text_counts)),
            text_area_ratio=area_ratio,
            text_area_ratio_mean=float(np.mean(area_ratios)),
            corner_boxes_max=int(max(corner_counts)),
        )
        kinds = ocr_kinds.measure(list(sample.images), frame_boxes, p.kinds, q)
        values.update(kinds)
        if p.recognize:
            values["frame_texts"] = frame_texts
            values["text"] = list(dict.fromkeys(t for texts in frame_texts for t in texts if t))
        self.set(clip, **values)
        passed = (self.at_most(clip, "max_text_boxes", text_boxes, p.max_text_boxes)
                  and self.at_most(clip, "max_text_area_ratio", area_ratio, p.max_text_area_ratio)
                  and self.at_most(clip, "max_corner_boxes", values["corner_boxes_max"], p.max_corner_boxes))
        for rule, column in ocr_kinds.RULES.items():
            passed = passed and self.at_most(clip, rule, kinds[column], getattr(p, rule))

    def _summarise(self, quads: np.ndarray, width: int, height: int) -> tuple[list[list[float]], int, int, float]:
        """Normalised boxes, text and corner counts, and the text area ratio of one frame."""
        p = self.params
        boxes: list[list[float]] = []
        n_text = n_corner = 0
        area = 0.0
        for quad in quads:
            x0, y0 = quad.min(axis=0)
            x1, y1 = quad.max(axis=0)
            box = [float(np.clip(x0 / width, 0, 1)), float(np.clip(y0 / height, 0, 1)),
                   float(np.clip(x1 / width, 0, 1)), float(np.clip(y1 / height, 0, 1))]
            boxes.append([round(v, 4) for v in box])
            box_area = _polygon_area(quad) / (width * height)
            corner = self._is_corner(box, box_area)
            n_corner += corner
            if corner and not p.corner_boxes_count_as_text:
                continue
            n_text += 1
            area += box_area
        return boxes, n_text, n_corner, min(1.0, area)

    def _is_corner(self, box: list[float], area_ratio: float) -> bool:
        p = self.params
        if area_ratio > p.corner_max_area_ratio:
            return False
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        m = p.corner_margin
        return (cx <= m or cx >= 1 - m) and (cy <= m or cy >= 1 - m)


def _polygon_area(quad: np.ndarray) -> float:
    x, y = quad[:, 0].astype(np.float64), quad[:, 1].astype(np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


# -- backends ---------------------------------------------------------------------------------------------------------
def _rapidocr_model_paths(p: OcrParams) -> dict[str, str]:
    models = Path(importlib.util.find_spec("rapidocr").origin).parent / "models"
    paths = {"det": p.det_model_path or str(models / "PP-OCRv6_det_small.onnx")}
    if p.recognize:
        paths["rec"] = p.rec_model_path or str(models / "PP-OCRv6_rec_small.onnx")
    return paths


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _RapidBackend:
    """rapidocr 3.10 with explicit model paths, so it never takes its download branch."""

    def __init__(self, p: OcrParams, use_cuda: bool = False, threads: int = 0):
        from rapidocr import RapidOCR

        paths = _rapidocr_model_paths(p)
        params = {
            "Global.log_level": "error",
            "Global.use_cls": False,
            "Global.use_rec": p.recognize,
            "Global.text_score": p.min_text_score,
            "Det.limit_type": "max",
            "Det.limit_side_len": p.max_side,
            "Det.box_thresh": p.min_box_score,
            "Det.model_path": paths["det"],
            # PaddleOCR's own detector normalisation (configs/det/PP-OCRv5/*.yml: ImageNet mean and std on BGR);
            # rapidocr 3.10's default (0.5, 0.5) makes the detector box whole pictures as text.
            "Det.mean": list(_IMAGENET_MEAN),
            "Det.std": list(_IMAGENET_STD),
        }
        if p.recognize:
            params["Rec.model_path"] = paths["rec"]
        if threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
        if use_cuda:
            params["EngineConfig.onnxruntime.use_cuda"] = True
        self.engine = RapidOCR(params=params)
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self.min_text_score = p.min_text_score
        # Load the models now (rapidocr loads them on first use), so the first clip is not charged for it.
        warm = np.zeros((64, 64, 3), np.uint8)
        self.engine._load_det_model()
        if p.recognize:
            self.engine._load_rec_model()
        self.detect(warm)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, list[float]]:
        out = self.engine(np.ascontiguousarray(rgb[..., ::-1]), use_det=True, use_cls=False, use_rec=False)
        boxes = getattr(out, "boxes", None)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32), []
        return np.asarray(boxes, np.float32).reshape(-1, 4, 2), list(getattr(out, "scores", None) or [])

    def recognize(self, rgb: np.ndarray, quads: np.ndarray) -> list[str]:
        if len(quads) == 0:
            return []
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        crops = self.engine.crop_text_regions(bgr, quads.copy())
        result = self.engine.recognize_txt(crops)
        return [t.strip() if s >= self.min_text_score else "" for t, s in zip(result.txts, result.scores)]


class _PaddleBackend:
    """PaddleOCR 3 modules (TextDetection, TextRecognition); they take BGR images like cv2."""

    def __init__(self, p: OcrParams):
        from paddleocr import TextDetection, TextRecognition

        det_args = dict(limit_side_len=p.max_side, limit_type="max", box_thresh=p.min_box_score)
        if p.det_model_path:
            det_args["model_dir"] = p.det_model_path
        self.det = TextDetection(**det_args)
        self.rec = None
        if p.recognize:
            self.rec = TextRecognition(**({"model_dir": p.rec_model_path} if p.rec_model_path else {}))
        self.min_text_score = p.min_text_score

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, list[float]]:
        (res,) = list(self.det.predict(input=np.ascontiguousarray(rgb[..., ::-1]), batch_size=1))
        polys = np.asarray(res["dt_polys"], np.float32).reshape(-1, 4, 2)
        return polys, [float(s) for s in res["dt_scores"]]

    def recognize(self, rgb: np.ndarray, quads: np.ndarray) -> list[str]:
        if len(quads) == 0 or self.rec is None:
            return []
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        crops = [_crop(bgr, q) for q in quads]
        texts = []
        for res in self.rec.predict(input=crops, batch_size=8):
            texts.append(res["rec_text"].strip() if res["rec_score"] >= self.min_text_score else "")
        return texts


def _crop(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The quad's content warped upright to a rectangle (its own width and height)."""
    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3]), 1))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]), 1))
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    matrix = cv2.getPerspectiveTransform(quad.astype(np.float32), target)
    return cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
