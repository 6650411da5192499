"""scenes: one decode pass per video that feeds PySceneDetect, cuts clips and keeps the frames later stages need.

Memory stays bounded for long videos: clips are emitted as soon as their span is final (at a cut, or as fixed
windows inside a long scene), so only the frames of the open span are ever held.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar, Literal

import av
import cv2
import numpy as np
import pyarrow as pa
from av.video.reformatter import VideoReformatter
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
from scenedetect.detectors import content_detector as content_detector_module

from pipeline.clip import Clip, FrameGrid
from pipeline.stage import FrameRequest, Resources, Stage, StageParams
from pipeline.video import open_video


class ScenesParams(StageParams):
    detector: Literal["content", "adaptive"] = "content"
    # PySceneDetect's defaults: ContentDetector threshold 27; AdaptiveDetector ratio 3 and min content value 15.
    threshold: float = 27.0
    adaptive_threshold: float = 3.0
    min_content_val: float = 15.0
    min_scene_len_frames: int = 15
    # PySceneDetect downscales to about 256 px wide before scoring; the same here, done by the decoder's scaler.
    detect_width: int = 256
    # Clip length bounds; scenes longer than max_clip_s are split into equal windows, shorter than min rejected.
    min_clip_s: float = 0.0
    max_clip_s: float | None = None
    # Frames kept for later stages: None means the union of what the recipe's later stages ask for.
    keep_fps: float | None = None
    keep_max_side: int | None = None


class ScenesStage(Stage):
    name = "scenes"
    Params = ScenesParams
    resources = Resources(cpus=1.0, batch_size=1)
    requires = ("probe",)  # probe's pixel guard must have run before anything decodes a whole video
    provides_frames = True
    splits = True
    columns: ClassVar[dict[str, pa.DataType]] = {
        "scenes_scene_index": pa.int32(),  # which detected scene of the video this clip lies in
        "scenes_start_frame": pa.int64(),  # decoded-frame index, inclusive
        "scenes_end_frame": pa.int64(),  # exclusive
        "scenes_frame_count": pa.int64(),
        "scenes_kept_frame_times": pa.list_(pa.float64()),  # times (s) of the frames handed to later stages
    }
    rules: ClassVar[dict[str, str]] = {
        "min_clip_length": "clip (scene or window) shorter than min_clip_s",
    }
    # How far behind the newest frame a detector may still report a cut (flash filter, adaptive window).
    CUT_LATENCY_S: ClassVar[float] = 2.0

    def with_frame_requests(self, requests: list[FrameRequest]) -> ScenesParams:
        """Keep the union (highest rate, largest size) of what later stages read, unless the recipe fixes it."""
        p = self.params
        update = {}
        if p.keep_fps is None and requests:
            update["keep_fps"] = max(r.fps for r in requests)
        if p.keep_max_side is None and requests:
            update["keep_max_side"] = max(r.max_side for r in requests)
        return p.model_copy(update=update) if update else p

    def keep_request(self) -> FrameRequest | None:
        p = self.params
        if not p.keep_fps:
            return None
        return FrameRequest(p.keep_fps, p.keep_max_side or 512)

    def _detector(self):
        p = self.params
        if p.detector == "adaptive":
            return AdaptiveDetector(
                adaptive_threshold=p.adaptive_threshold,
                min_scene_len=p.min_scene_len_frames,
                min_content_val=p.min_content_val,
            )
        return ContentDetector(threshold=p.threshold, min_scene_len=p.min_scene_len_frames)

    def process_clip(self, clip: Clip) -> Iterator[Clip]:
        return _VideoSplitter(self, clip).run()

    # -- span arithmetic (pure, unit-tested) -----------------------------------------------------------------------
    def windows(self, start_s: float, end_s: float) -> list[tuple[float, float]]:
        """Equal windows no longer than max_clip_s covering [start, end]."""
        length = end_s - start_s
        max_s = self.params.max_clip_s
        if not max_s or length <= max_s:
            return [(start_s, end_s)]
        n = math.ceil(length / max_s - 1e-9)
        step = length / n
        return [(start_s + i * step, end_s if i == n - 1 else start_s + (i + 1) * step) for i in range(n)]


class _VideoSplitter:
    """The state of one video's single decode pass."""

    def __init__(self, stage: ScenesStage, clip: Clip):
        self.stage, self.source, self.params = stage, clip, stage.params
        self.next_index = 0
        self.kept: list[tuple[float, np.ndarray]] = []
        self.times: list[float] = []
        self.emitted_until_s = clip.start_s  # where the next clip starts
        self.scene_start_frame = 0
        self.scene_index = 0

    def run(self) -> Iterator[Clip]:
        try:
            yield from self._decode()
        except Exception as exc:  # keep the clips already emitted; the rest of the video becomes one error row
            end = self.source.end_s if self.source.end_s and self.source.end_s > self.emitted_until_s else None
            rest = self._new_clip(self.emitted_until_s, end)
            rest.fail(self.stage.name, exc)
            yield rest

    def _decode(self) -> Iterator[Clip]:
        keep = self.stage.keep_request()
        with open_video(self.source.video_uri) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            ctx = stream.codec_context
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            # PySceneDetect's own downscale: factor width/detect_width, sides rounded.
            factor = max(1.0, ctx.width / self.params.detect_width)
            detect_w, detect_h = max(1, round(ctx.width / factor)), max(1, round(ctx.height / factor))
            converter = FrameConverter()
            keep_size = _keep_size(ctx.width, ctx.height, self._sar(stream), keep.max_side) if keep else None
            detector = self.stage._detector()
            keep_grid = FrameGrid(keep.fps) if keep else None
            index = -1
            for index, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else (self.times[-1] + 1 / fps if self.times else 0.0)
                self.times.append(t)
                small = converter.detection_image(frame, detect_w, detect_h)
                cuts = detector.process_frame(FrameTimecode(index, fps), small)
                if keep_grid and keep_grid.take(t):
                    image = converter.kept_image(frame, keep_size[0], keep_size[1])
                    self.kept.append((t, _rotate(image, frame.rotation)))
                for cut in cuts:
                    yield from self._close_scene(cut.frame_num)
                yield from self._emit_long_scene_windows(t)
            if index < 0:
                self.stage.reject(self.source, "no_frames", 0, 1)
                yield self.source
                return
            for cut in detector.post_process(FrameTimecode(index, fps)):
                yield from self._close_scene(cut.frame_num)
            yield from self._close_scene(len(self.times))

    @staticmethod
    def _sar(stream) -> float:
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        return float(sar) if sar and float(sar) > 0 else 1.0

    def _time_of(self, frame_index: int) -> float:
        if frame_index < len(self.times):
            return self.times[frame_index]
        # The end of the last frame: its start plus the typical frame interval.
        step = (self.times[-1] - self.times[0]) / (len(self.times) - 1) if len(self.times) > 1 else 1 / 30
        return self.times[-1] + step

    def _close_scene(self, end_frame: int) -> Iterator[Clip]:
        if end_frame <= self.scene_start_frame:
            return
        for start, end in self.stage.windows(self.emitted_until_s, self._time_of(end_frame)):
            yield self._emit(start, end)
        self.scene_start_frame = end_frame
        self.scene_index += 1

    def _emit_long_scene_windows(self, now_s: float) -> Iterator[Clip]:
        """Inside a scene longer than twice max_clip_s, emit fixed windows now rather than holding its frames."""
        max_s = self.params.max_clip_s
        if not max_s:
            return
        while now_s - self.emitted_until_s > 2 * max_s + self.stage.CUT_LATENCY_S:
            yield self._emit(self.emitted_until_s, self.emitted_until_s + max_s)

    def _emit(self, start_s: float, end_s: float) -> Clip:
        clip = self._new_clip(start_s, end_s)
        first = int(np.searchsorted(self.times, start_s - 1e-6))
        last = int(np.searchsorted(self.times, end_s - 1e-6))
        frames = [(t, img) for t, img in self.kept if start_s - 1e-6 <= t < end_s - 1e-6]
        self.kept = [(t, img) for t, img in self.kept if t >= end_s - 1e-6]
        self.emitted_until_s = end_s
        too_short = end_s - start_s < self.params.min_clip_s
        if frames and not too_short:
            clip.frame_times = [t for t, _ in frames]
            clip.frames = np.stack([img for _, img in frames])
        self.stage.set(clip, scene_index=self.scene_index, start_frame=first, end_frame=last,
                       frame_count=last - first, kept_frame_times=list(clip.frame_times))
        if too_short:
            self.stage.reject(clip, "min_clip_length", end_s - start_s, self.params.min_clip_s)
        return clip

    def _new_clip(self, start_s: float, end_s: float | None) -> Clip:
        clip = self.source.derive(clip_index=self.next_index, start_s=start_s, end_s=end_s)
        self.next_index += 1
        return clip


class FrameConverter:
    """Frame to downscaled BGR/RGB ndarray, reusing swscale contexts per video (single-threaded: the decoder
    already uses the cores, and a context per frame costs more than the conversion)."""

    def __init__(self):
        self._full = VideoReformatter()
        self._kept = VideoReformatter()

    def detection_image(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """Exactly what PySceneDetect scores: the full frame in BGR, then cv2's linear resize.

        Cheaper orders (resize the YUV planes first, or let swscale scale) shift near-black colours enough to
        move cuts at fades; converting only the pixels the resize picks is exact but measured slower here.
        """
        image = self._full.reformat(frame, format="bgr24", threads=1).to_ndarray()
        if (width, height) != (frame.width, frame.height):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return image

    def kept_image(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """A frame for later stages: RGB, scaled by swscale in one pass (its bilinear filter widens when it
        shrinks, so it does not alias)."""
        return self._kept.reformat(frame, width=width, height=height, format="rgb24",
                                   interpolation="BILINEAR", threads=1).to_ndarray()


def _mean_pixel_distance(left: np.ndarray, right: np.ndarray) -> float:
    """PySceneDetect's per-channel score, the same number (an exact integer sum), in C instead of numpy temporaries."""
    return cv2.norm(left, right, cv2.NORM_L1) / float(left.shape[0] * left.shape[1])


# ContentDetector and AdaptiveDetector both score through this module-level function; tests check equality.
content_detector_module._mean_pixel_distance = _mean_pixel_distance


def _keep_size(width: int, height: int, sar: float, max_side: int) -> tuple[int, int]:
    """Size of kept frames: square pixels, long side at most max_side, even sides."""
    display_w = width * sar
    scale = min(1.0, max_side / max(display_w, height))
    return max(2, round(display_w * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _rotate(image: np.ndarray, rotation: float | None) -> np.ndarray:
    """Apply the display matrix (counter-clockwise degrees), so later stages see people upright."""
    quarter_turns = int(round((rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image
