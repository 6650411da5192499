"""The unit that flows through the stages: one clip of one video (or the whole video before it is split)."""

from __future__ import annotations

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
    """Indices of the kept frames at `fps` (the scenes stage keeps the highest rate any stage asks for; a stage at
    that rate reads every kept frame, one at a lower rate a regular subset)."""
    grid = FrameGrid(fps)
    return [i for i, t in enumerate(times) if grid.take(t)]


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
    # Sampled RGB frames (N, H, W, 3) uint8 kept by the scenes stage for later stages; never persisted.
    frames: np.ndarray | None = None
    frame_times: list[float] = field(default_factory=list)
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
        return 0 if self.frames is None else int(self.frames.nbytes)

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

    def drop_frames(self) -> None:
        self.frames = None
        self.frame_times = []

    def derive(self, **changes: Any) -> Clip:
        """A new clip of the same video (a split), sharing the facts gathered so far but no frames."""
        base = dict(columns=dict(self.columns), timings=dict(self.timings), frames=None, frame_times=[])
        base.update(changes)
        return dataclasses.replace(self, **base)
