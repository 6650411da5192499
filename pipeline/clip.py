"""The unit that flows through the stages: one clip of one video (or the whole video before it is split)."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.redact import redact

ACCEPTED, REJECTED, ERROR = "accepted", "rejected", "error"
MAX_ERROR_MESSAGE = 500


def video_id_for(uri: str) -> str:
    """Deterministic id from the input URI, never from Ray's block layout."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def clip_id_for(video_id: str, start_s: float, end_s: float | None) -> str:
    """`<video_id>-<start ms>-<end ms>`; a row whose span is unknown (the file never opened) ends in `unknown`."""
    end = "unknown" if end_s is None else f"{round(end_s * 1000):09d}"
    return f"{video_id}-{round(start_s * 1000):09d}-{end}"


class FrameGrid:
    """The one rule frames are sampled by at `fps`: take the first frame at or after the previous pick + 1/fps; after
    a gap in the frames the grid restarts at the frame that ends it. The scenes stage keeps frames by it while
    decoding, and later stages thin the kept frames by it, so stages at equal rates read the same frames."""

    def __init__(self, fps: float):
        self.step = 1 / fps
        self.next_t: float | None = None

    def take(self, t: float) -> bool:
        if self.next_t is not None and t < self.next_t - 1e-6:
            return False
        self.next_t = (t if self.next_t is None else self.next_t) + self.step
        while self.next_t <= t - 1e-6:
            self.next_t += self.step
        return True


def sample_indices(times: list[float], fps: float) -> list[int]:
    """Indices of the kept frames at `fps` (the scenes stage keeps, per size, the highest rate a stage asks for at
    that size; a stage at that rate reads every frame of its level, one at a lower rate a regular subset)."""
    grid = FrameGrid(fps)
    return [i for i, t in enumerate(times) if grid.take(t)]


@dataclass
class FrameLevel:
    """Kept frames at one size: `images[k]` is the frame at `clip.frame_times[indices[k]]`, long side <= max_side."""

    max_side: int
    indices: list[int]
    images: np.ndarray  # (N, H, W, 3) uint8 RGB


@dataclass
class Clip:
    video_id: str
    video_uri: str
    shard_id: str
    clip_index: int = 0
    start_s: float = 0.0
    end_s: float | None = None
    status: str = ACCEPTED
    reject_stage: str | None = None
    reject_rule: str | None = None
    reject_value: float | None = None
    reject_threshold: float | None = None
    error_stage: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    # Stage outputs, each key prefixed with its stage's name ("probe_width").
    columns: dict[str, Any] = field(default_factory=dict)
    # Seconds each stage spent on this row.
    timings: dict[str, float] = field(default_factory=dict)
    # Sampled RGB frames (N, H, W, 3) uint8 kept by the scenes stage for later stages; never persisted. One size:
    # `frames` aligned with `frame_times`. Several sizes (later stages asked for different ones): `frame_levels`,
    # `frames` None, and `frame_times` the times of every kept frame (each level holds some of them).
    frames: np.ndarray | None = None
    frame_times: list[float] = field(default_factory=list)
    frame_levels: list[FrameLevel] = field(default_factory=list)
    # Which input row of the current batch this clip came from; transient, set by the executor.
    origin: int | None = field(default=None, compare=False, repr=False)

    @property
    def clip_id(self) -> str:
        return clip_id_for(self.video_id, self.start_s, self.end_s)

    @property
    def alive(self) -> bool:
        return self.status == ACCEPTED

    @property
    def frame_bytes(self) -> int:
        held = 0 if self.frames is None else int(self.frames.nbytes)
        return held + sum(int(level.images.nbytes) for level in self.frame_levels)

    def kept_frames(self, max_side: int | None = None) -> tuple[list[int], Any]:
        """The kept frames a reader of frames up to `max_side` gets: (indices into frame_times, images). With
        several levels: the level of that size, else the smallest larger one, else the largest (None: the largest)."""
        if not self.frame_levels:
            return (list(range(len(self.frames))), self.frames) if self.frames is not None else ([], ())
        level = _level_for(self.frame_levels, max_side)
        return level.indices, level.images

    def frame_image(self, index: int, max_side: int | None = None) -> np.ndarray:
        """The kept frame at `frame_times[index]`, from the level nearest `max_side` that holds it (a stage may pick
        frames another stage chose: the captioner's pose keyframes)."""
        if not self.frame_levels:
            if self.frames is None:
                raise IndexError(f"kept frame {index}: the clip has no kept frames")
            return self.frames[index]
        holding = [level for level in self.frame_levels if _position(level.indices, index) is not None]
        if not holding:
            raise IndexError(f"kept frame {index} is in no level of the clip's kept frames")
        level = _level_for(holding, max_side)
        return level.images[_position(level.indices, index)]

    def reject(self, stage: str, rule: str, value: float | None, threshold: float | None) -> None:
        self.status = REJECTED
        self.reject_stage, self.reject_rule = stage, rule
        self.reject_value = None if value is None else float(value)
        self.reject_threshold = None if threshold is None else float(threshold)
        self.drop_frames()

    def fail(self, stage: str, exc: BaseException) -> None:
        self.status = ERROR
        self.error_stage = stage
        self.error_type = type(exc).__name__
        message = redact(str(exc).strip() or repr(exc))
        self.error_message = message[:MAX_ERROR_MESSAGE]
        self.drop_frames()

    def keep_levels_for(self, sides: list[int]) -> None:
        """Drop the levels of kept frames that no reader of these sizes would get (kept_frames' choice)."""
        if len(self.frame_levels) < 2:
            return
        needed = {id(_level_for(self.frame_levels, side)) for side in sides}
        self.frame_levels = [level for level in self.frame_levels if id(level) in needed]
        if not self.frame_levels:
            self.drop_frames()

    def drop_frames(self) -> None:
        self.frames = None
        self.frame_times = []
        self.frame_levels = []

    def derive(self, **changes: Any) -> Clip:
        """A new clip of the same video (a split), sharing the facts gathered so far but no frames."""
        base = dict(columns=dict(self.columns), timings=dict(self.timings), frames=None, frame_times=[],
                    frame_levels=[])
        base.update(changes)
        return dataclasses.replace(self, **base)


def _level_for(levels: list[FrameLevel], max_side: int | None) -> FrameLevel:
    by_side = sorted(levels, key=lambda level: level.max_side)
    if max_side is None:
        return by_side[-1]
    return next((level for level in by_side if level.max_side >= max_side), by_side[-1])


def _position(indices: list[int], index: int) -> int | None:
    at = bisect.bisect_left(indices, index)
    return at if at < len(indices) and indices[at] == index else None
