"""ocr: rapidocr's bundled PP-OCR models for real, on rendered text, generated videos and the shared overlay clip."""

from __future__ import annotations

import socket

import cv2
import numpy as np
import pytest

import media
from pipeline.clip import Clip, sample_indices
from pipeline.errors import UserError
from pipeline.recipe import build_recipe, load_recipe
from stages.ocr import OcrParams, OcrStage
from stages.probe import ProbeStage
from stages.scenes import ScenesParams, ScenesStage

LINES = ["HELLO RAY 2026", "CURATE CLIPS", "OCR 12345"]

_STAGES: dict[tuple, OcrStage] = {}


def stage(**params) -> OcrStage:
    """One set-up stage per parameter set for the whole module (loading the ONNX models costs about a second)."""
    key = tuple(sorted(params.items()))
    if key not in _STAGES:
        _STAGES[key] = OcrStage(OcrParams(**params))
        _STAGES[key].setup()
    return _STAGES[key]


def ocr(clip: Clip, **params) -> Clip:
    (out,) = stage(**params).process([clip])
    return out


def background(width: int = 640, height: int = 360, seed: int = 0) -> np.ndarray:
    """A dull green field with noise: no text, some texture."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (40, 90, 60)
    return cv2.add(image, (rng.random((height, width, 3)) * 30).astype(np.uint8))


def render(lines: list[str], width: int = 640, height: int = 360, corner: str | None = None, seed: int = 0):
    image = background(width, height, seed)
    for i, text in enumerate(lines):
        cv2.putText(image, text, (40, 90 + i * 90), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (255, 255, 255), 3, cv2.LINE_AA)
    if corner:  # a small watermark bottom-left, as channels put them
        cv2.putText(image, corner, (8, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
    return image


def clip_of(frames, times=None) -> Clip:
    frames = np.stack(frames)
    times = list(times) if times is not None else [float(i) for i in range(len(frames))]
    return Clip(video_id="v", video_uri="mem", shard_id="s", frames=frames, frame_times=times)


def through_scenes(path, keep_fps: float = 1.0, keep_max_side: int = 960) -> list[Clip]:
    (clip,) = ProbeStage().process([Clip(video_id="v", video_uri=str(path), shard_id="s")])
    return list(ScenesStage(ScenesParams(keep_fps=keep_fps, keep_max_side=keep_max_side)).iter_process([clip]))


# -- rendered frames --------------------------------------------------------------------------------------------------
def test_rendered_lines_are_found_counted_and_placed():
    out = ocr(clip_of([render(LINES), render([]), render(LINES[:1])]))
    c = out.columns
    assert out.status == "accepted"
    assert c["ocr_frame_text_boxes"] == [3, 0, 1]
    assert (c["ocr_text_boxes"], c["ocr_text_boxes_max"]) == (3, 3)
    assert c["ocr_text_boxes_mean"] == pytest.approx(4 / 3)
    # Boxes are normalised [x0, y0, x1, y1]; the three lines' baselines are at 90, 180 and 270 of 360 px.
    boxes = c["ocr_frame_boxes"][0]
    assert [round((b[1] + b[3]) / 2 * 360 / 90) for b in boxes] == [1, 2, 3]
    assert all(0.04 < b[0] < 0.1 and b[2] > 0.4 for b in boxes)
    assert 0.1 < c["ocr_text_area_ratio"] < 0.35 and c["ocr_text_area_ratio_mean"] < c["ocr_text_area_ratio"]
    assert "ocr_text" not in c  # detection only by default


def test_recognition_reads_the_lines():
    c = ocr(clip_of([render(LINES), render([])]), recognize=True).columns
    assert c["ocr_frame_texts"] == [LINES, []]
    assert c["ocr_text"] == LINES


def test_clean_frames_pass_the_hoigen_rule():
    clean = [background(seed=s) for s in range(3)] + [media._scene_background(i, 640, 360, 0) for i in range(3)]
    out = ocr(clip_of(clean), max_text_boxes=1)
    assert out.status == "accepted"
    assert out.columns["ocr_text_boxes_max"] == 0 and out.columns["ocr_text_area_ratio"] == 0


def test_rules_reject_with_value_and_threshold():
    frames = [render(LINES), render(LINES[:1])]
    boxes = ocr(clip_of(frames), max_text_boxes=1)
    assert (boxes.status, boxes.reject_stage, boxes.reject_rule) == ("rejected", "ocr", "max_text_boxes")
    assert (boxes.reject_value, boxes.reject_threshold) == (3, 1) and boxes.frames is None
    # The median frame has 1 box... with two frames the "higher" median is the worse one; three frames settle it.
    median = ocr(clip_of(frames + [render(LINES[:1], seed=1)]), max_text_boxes=1, frame_quantile=0.5)
    assert median.status == "accepted" and median.columns["ocr_text_boxes"] == 1
    area = ocr(clip_of(frames), max_text_area_ratio=0.05)
    assert area.reject_rule == "max_text_area_ratio" and area.reject_value > 0.1


def test_corner_watermark_is_counted_apart():
    frames = [render([], corner="strateg.tv"), render(LINES[:1], corner="strateg.tv")]
    c = ocr(clip_of(frames), max_text_boxes=1).columns
    assert c["ocr_frame_corner_boxes"] == [1, 1] and c["ocr_frame_text_boxes"] == [0, 1]
    assert c["ocr_corner_boxes_max"] == 1
    assert ocr(clip_of(frames), max_text_boxes=1).status == "accepted"
    assert ocr(clip_of(frames), max_corner_boxes=0).reject_rule == "max_corner_boxes"
    counted = ocr(clip_of(frames), corner_boxes_count_as_text=True, max_text_boxes=1)
    assert counted.reject_rule == "max_text_boxes" and counted.reject_value == 2


def test_no_frames():
    bare = Clip(video_id="v", video_uri="mem", shard_id="s")
    out = ocr(bare, max_text_boxes=1)
    assert (out.reject_rule, out.reject_value, out.reject_threshold) == ("no_frames", 0, 1)
    score_only = ocr(Clip(video_id="v", video_uri="mem", shard_id="s"))
    assert score_only.status == "accepted" and score_only.columns["ocr_frames"] == 0


def test_reads_one_frame_per_second_of_what_scenes_kept():
    times = [k / 4 for k in range(12)]  # kept at 4 fps for another stage
    assert sample_indices(times, 1.0) == [0, 4, 8]
    frames = [render(LINES[:1]) if k % 4 == 0 else render([]) for k in range(12)]
    c = ocr(clip_of(frames, times)).columns
    assert c["ocr_frames"] == 3 and c["ocr_frame_times"] == [0.0, 1.0, 2.0]
    assert c["ocr_frame_text_boxes"] == [1, 1, 1]


def test_stays_offline(monkeypatch):
    """No socket is opened while the models load and run (rapidocr downloads only when a model file is missing)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the ocr stage tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    fresh = OcrStage(OcrParams(recognize=True))
    fresh.preflight()
    fresh.setup()
    (out,) = fresh.process([clip_of([render(LINES[:1])])])
    assert out.columns["ocr_text"] == LINES[:1]


def test_preflight_errors():
    with pytest.raises(UserError, match="paddleocr package"):
        OcrStage(OcrParams(backend="paddleocr")).preflight()
    with pytest.raises(UserError, match="model file not found"):
        OcrStage(OcrParams(det_model_path="/nonexistent/det.onnx")).preflight()


# -- through the real scenes stage ------------------------------------------------------------------------------------
def write_overlay_video(path, seconds: float = 4.0, fps: int = 25, overlay_until_s: float = 2.0):
    """A textured moving scene with a caption "SCORE 221" top centre for the first overlay_until_s seconds."""
    width, height = 480, 270
    base = cv2.resize(background(60, 34), (width + 200, height), interpolation=cv2.INTER_CUBIC)
    frames = []
    for i in range(round(seconds * fps)):
        image = np.ascontiguousarray(base[:, 2 * i % 200:2 * i % 200 + width])
        if i / fps < overlay_until_s:
            cv2.putText(image, "SCORE 221", (150, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 0), 2, cv2.LINE_AA)
        frames.append(image)
    media.write_frames(path, frames, fps=fps)
    return path


def test_generated_videos_through_scenes(tmp_path):
    (clean,) = through_scenes(media.make_video(tmp_path / "clean.mp4", segments=(60,)), keep_fps=2)
    out = ocr(clean, max_text_boxes=1)
    c = out.columns
    assert out.status == "accepted" and c["ocr_frames"] == 2  # 2 s at 1 fps, from the frames kept at 2 fps
    # make_video's only high-contrast shape, a white square with a black hole, reads like the character 口 to the
    # (Chinese and English) detector: at most that one box, where the square is, and the clip passes HOIGen's rule.
    assert c["ocr_text_boxes_max"] <= 1
    for t, boxes in zip(c["ocr_frame_times"], c["ocr_frame_boxes"]):
        frame = round(t * 30)
        size = 240 // 5
        square_x = (media._triangle(3 * frame, 320 - size) + size / 2) / 320
        square_y = (media._triangle(2 * frame, 240 - size) + size / 2) / 240
        assert all(abs((b[0] + b[2]) / 2 - square_x) < 0.05 and abs((b[1] + b[3]) / 2 - square_y) < 0.05 for b in boxes)

    (overlay,) = through_scenes(write_overlay_video(tmp_path / "overlay.mp4"), keep_fps=1)
    c = ocr(overlay).columns
    top = [any(b[1] < 0.2 for b in boxes) for boxes in c["ocr_frame_boxes"]]
    assert [t < 2.0 for t in c["ocr_frame_times"]] == top == [True, True, False, False]


def test_shared_overlay_clip(shared_videos):
    """The "C&J 221 kg" overlay (frames 0-89, 3 s at 29.97 fps) is read in the frames before 3 s and in none after;
    the "strateg.tv" watermark bottom-left is a corner box on every frame; the Russian banner is text throughout."""
    (clip,) = through_scenes(shared_videos / "stgcn_kinetics_clean_and_jerk_textoverlay.mp4", keep_fps=1)
    out = ocr(clip, recognize=True, max_text_boxes=1)
    c = out.columns
    times = c["ocr_frame_times"]
    assert len(times) == 10
    with_overlay = [t for t, texts in zip(times, c["ocr_frame_texts"]) if any("221" in text for text in texts)]
    assert with_overlay and all(t < 3.0 for t in with_overlay)
    assert len(with_overlay) == sum(t < 3.0 for t in times)
    assert all(n == 1 for n in c["ocr_frame_corner_boxes"])
    assert all(any("strateg" in text for text in texts) for texts in c["ocr_frame_texts"])
    assert out.reject_rule == "max_text_boxes" and out.reject_value >= 2  # HOIGen's "over one text"


def test_recipes_carry_ocr():
    quick = load_recipe("quickstart")
    assert "ocr" in quick.stage_names()
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {}}})
    (request,) = recipe.stages[1].build().keep_requests()
    assert (request.fps, request.max_side) == (1.0, 960)
