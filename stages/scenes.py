"""scenes: one decode pass per video that feeds PySceneDetect, cuts clips and keeps the frames later stages need.

Memory stays bounded for long videos: clips are emitted as soon as their span is final (at a cut, or as fixed
windows inside a long scene), so only the frames of the open span are ever held.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import ClassVar, Literal

import av
import cv2
import numpy as np
import pyarrow as pa
from av.video.reformatter import VideoReformatter
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

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
            return _FastAdaptiveDetector(
                adaptive_threshold=p.adaptive_threshold,
                min_scene_len=p.min_scene_len_frames,
                min_content_val=p.min_content_val,
            )
        return _FastContentDetector(threshold=p.threshold, min_scene_len=p.min_scene_len_frames)

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
        self.kept: list[tuple[int, np.ndarray]] = []  # (frame index, image) of kept frames not yet emitted
        self.timeline: _Timeline | None = None
        self.keep_grid: FrameGrid | None = None
        self.next_frame = 0  # the first frame of the next clip
        self.emitted_until_s = clip.start_s  # where the last emitted clip ended
        self.scene_start_frame = 0
        self.scene_index = 0

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
        keep = self.stage.keep_request()
        with open_video(self.source.video_uri) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            ctx = stream.codec_context
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            self.timeline = timeline = _Timeline(1 / fps, *_stream_span(container, stream))
            # PySceneDetect's own downscale: factor width/detect_width, sides rounded.
            factor = max(1.0, ctx.width / self.params.detect_width)
            detect_w, detect_h = max(1, round(ctx.width / factor)), max(1, round(ctx.height / factor))
            converter = FrameConverter()
            keep_size = _keep_size(ctx.width, ctx.height, self._sar(stream), keep.max_side) if keep else None
            detector = self.stage._detector()
            self.keep_grid = FrameGrid(keep.fps) if keep else None
            index = -1
            for index, frame in enumerate(container.decode(stream)):
                if timeline.add(frame, self.next_frame) and self.keep_grid:
                    self._resample_kept(keep.fps)
                small = converter.detection_image(frame, detect_w, detect_h)
                cuts = detector.process_frame(FrameTimecode(index, fps), small)
                if self.keep_grid and self.keep_grid.take(timeline.starts[index]):
                    image = converter.kept_image(frame, keep_size[0], keep_size[1])
                    self.kept.append((index, _rotate(image, frame.rotation)))
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

    def _resample_kept(self, keep_fps: float) -> None:
        """After a re-timing, keep only the kept frames the grid takes at their new times (frames it now would take
        instead were not converted; this happens once per video, within its first frames in practice)."""
        self.keep_grid = FrameGrid(keep_fps)
        self.kept = [(i, image) for i, image in self.kept if self.keep_grid.take(self.timeline.starts[i])]

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
        while starts[newest] - starts[self.next_frame] > 2 * max_s + self.stage.CUT_LATENCY_S:
            first = last = self.next_frame
            while last == first or end_of(last) - starts[first] <= max_s + 1e-6:
                last += 1
            yield self._emit(first, last)

    def _emit(self, first: int, last: int) -> Clip:
        """The clip of frames [first, last) with the kept frames among them."""
        timeline = self.timeline
        start_s, end_s = timeline.starts[first], timeline.end_of(last - 1)
        clip = self._new_clip(start_s, end_s)
        frames = [(timeline.starts[i], image) for i, image in self.kept if i < last]
        self.kept = [(i, image) for i, image in self.kept if i >= last]
        self.next_frame, self.emitted_until_s = last, end_s
        too_short = end_s - start_s < self.params.min_clip_s
        if frames and not too_short:
            clip.frame_times = [t for t, _ in frames]
            clip.frames = np.stack([image for _, image in frames])
        self.stage.set(clip, scene_index=self.scene_index, start_frame=first, end_frame=last,
                       frame_count=last - first, kept_frame_times=list(clip.frame_times))
        if too_short:
            self.stage.reject(clip, "min_clip_length", end_s - start_s, self.params.min_clip_s)
        return clip

    def _new_clip(self, start_s: float, end_s: float | None) -> Clip:
        clip = self.source.derive(clip_index=self.next_index, start_s=start_s, end_s=end_s)
        self.next_index += 1
        return clip


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


class _FastScore:
    """ContentDetector._calculate_frame_score of scenedetect 0.7.2, line for line, with the C pixel distance.

    Overridden per detector instance rather than by patching the library's module function, which would change
    PySceneDetect for the whole process; tests check the scores equal the stock detector's.
    """

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        hue, sat, lum = cv2.split(cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV))
        calculate_edges = (self._weights.delta_edges > 0.0) or self.stats_manager is not None
        edges = self._detect_edges(lum) if calculate_edges else None
        if self._last_frame is None:
            self._last_frame = ContentDetector._FrameData(hue, sat, lum, edges)
            return 0.0
        last = self._last_frame
        components = ContentDetector.Components(
            delta_hue=_mean_pixel_distance(hue, last.hue),
            delta_sat=_mean_pixel_distance(sat, last.sat),
            delta_lum=_mean_pixel_distance(lum, last.lum),
            delta_edges=0.0 if edges is None or last.edges is None else _mean_pixel_distance(edges, last.edges),
        )
        frame_score = sum(c * w for c, w in zip(components, self._weights, strict=True)) / sum(
            abs(w) for w in self._weights
        )
        if self.stats_manager is not None:
            self.stats_manager.set_metrics(timecode, {self.FRAME_SCORE_KEY: frame_score, **components._asdict()})
        self._last_frame = ContentDetector._FrameData(hue, sat, lum, edges)
        return frame_score


class _FastContentDetector(_FastScore, ContentDetector):
    pass


class _FastAdaptiveDetector(_FastScore, AdaptiveDetector):  # AdaptiveDetector scores through ContentDetector's
    pass


def _keep_size(width: int, height: int, sar: float, max_side: int) -> tuple[int, int]:
    """Size of kept frames: square pixels, long side at most max_side, even sides."""
    display_w = width * sar
    scale = min(1.0, max_side / max(display_w, height))
    return max(2, round(display_w * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _rotate(image: np.ndarray, rotation: float | None) -> np.ndarray:
    """Apply the display matrix (counter-clockwise degrees), so later stages see people upright."""
    quarter_turns = int(round((rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image
