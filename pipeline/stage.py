"""The stage contract: a small class with one job, declared resources and the manifest columns it writes."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from pipeline.clip import Clip


class StageParams(BaseModel):
    """Base of every stage's parameters; unknown keys are errors, so a typo in a recipe never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(BaseModel):
    """What one worker of a stage needs; the executor, not the stage, decides placement."""

    model_config = ConfigDict(extra="forbid")

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None
    batch_size: int = 4  # input rows (videos or video parts) per call
    min_workers: int = 1
    max_workers: int | None = None  # None: as many as the cluster's resources allow


@dataclass(frozen=True)
class FrameRequest:
    """Frames a stage wants the scenes stage to keep for it: a sampling rate and a bound on the long side."""

    fps: float
    max_side: int


class Stage:
    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    resources: ClassVar[Resources] = Resources()
    columns: ClassVar[dict[str, pa.DataType]] = {}
    # True for a stage that turns one video row into clip rows (the audit counts videos before it, clips after).
    splits: ClassVar[bool] = False
    # Rules this stage can reject by, with a one-line meaning each (shown by `actcurate audit` and the README).
    rules: ClassVar[dict[str, str]] = {}

    def __init__(self, params: StageParams | None = None):
        self.params = params if params is not None else self.Params()

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models once per worker. Stages that override this run in a Ray actor pool."""

    def resources_for(self, cluster_gpus: float) -> Resources:
        """What this stage asks of the cluster it is about to run on (a stage on `device: auto` takes a GPU share
        only where there are GPUs)."""
        return self.resources

    def preflight(self) -> None:
        """Checks on the driver before any video is touched (models present, endpoint reachable); raise UserError."""

    @classmethod
    def needs_actor(cls) -> bool:
        return cls.setup is not Stage.setup

    def frame_request(self) -> FrameRequest | None:
        """Frames this stage reads; the scenes stage keeps the union of every later stage's request."""
        return None

    # -- processing ------------------------------------------------------------------------------------------------
    def process_clip(self, clip: Clip) -> None | Iterable[Clip]:
        """Work on one clip in place (return None) or return the clips that replace it (a split)."""
        raise NotImplementedError(f"stage {self.name} implements neither process nor process_clip")

    def process(self, clips: list[Clip]) -> list[Clip]:
        """Batch entry point; the default isolates each clip so one bad clip never fails its siblings."""
        return list(self._each(clips))

    def iter_process(self, clips: list[Clip]) -> Iterator[Clip]:
        """What the executor calls: streams the output so a long video need not sit in memory whole."""
        if type(self).process is not Stage.process:
            return iter(self.process(clips))
        return self._each(clips)

    def _each(self, clips: list[Clip]) -> Iterator[Clip]:
        for clip in clips:
            started = time.perf_counter()
            try:
                produced = self.process_clip(clip)
                if produced is None:
                    yield self._charge(clip, started)
                    continue
                yielded_any = False
                for out in produced:  # a generator: each output is charged the work done since the last one
                    yielded_any = True
                    yield self._charge(out, started)
                    started = time.perf_counter()
                if not yielded_any:
                    raise RuntimeError(f"stage {self.name} produced no rows for this clip")
            except Exception as exc:  # one clip's failure becomes its error row; the batch goes on
                for out in self.recover(clip, exc):
                    yield self._charge(out, started)

    def _charge(self, clip: Clip, started: float) -> Clip:
        clip.timings[self.name] = clip.timings.get(self.name, 0.0) + time.perf_counter() - started
        return clip

    def recover(self, clip: Clip, exc: Exception) -> Iterator[Clip]:
        """Rows to emit when processing `clip` raised; splitting stages override to keep what they already emitted."""
        clip.fail(self.name, exc)
        yield clip

    # -- helpers for subclasses ------------------------------------------------------------------------------------
    def reject(self, clip: Clip, rule: str, value: float | None, threshold: float | None) -> None:
        assert rule in self.rules, f"stage {self.name} has no rule {rule!r}; declare it in {type(self).__name__}.rules"
        clip.reject(self.name, rule, value, threshold)

    def set(self, clip: Clip, **values: Any) -> None:
        for key, value in values.items():
            column = f"{self.name}_{key}"
            assert column in self.columns, f"stage {self.name} writes undeclared column {column!r}"
            clip.columns[column] = value
