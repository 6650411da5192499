"""The stage contract (v2): a small class with one job, declared resources, dependencies and manifest columns.

A stage declares what it needs (`requires`), whether it decodes the video and hands frames on (`provides_frames`),
whether it turns one video row into clip rows (`splits`) and whether it loads models once per worker (`actor`).
The engine reads these declarations and never tests a stage's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.clip import Clip, sample_indices

T = TypeVar("T")


class StageParams(BaseModel):
    """Base of every stage's parameters; unknown keys are errors, so a typo in a recipe never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(StageParams):
    """Parameters every model stage shares: where it runs and how much of a GPU one worker takes."""

    # auto: a GPU when the cluster has one (and the stage's backend can use it), else the CPU; cuda: fail at
    # start-up without one.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_share: float = Field(0.25, gt=0, le=1)  # Ray num_gpus of one worker on a GPU (Cosmos-Curate's 0.25)


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
    """Frames a stage wants the frame-providing stage to keep for it: a sampling rate and a bound on the long side."""

    fps: float
    max_side: int


@dataclass(frozen=True)
class RunContext:
    """Run-level settings a stage may need, handed to it by the engine (never through environment variables)."""

    models_dir: str | None = None  # --models-dir: searched after a recipe's explicit path, before the cache
    output: str | None = None  # the run's OUT (local path or s3:// URI), for stages that keep records under it


@dataclass
class FrameSample:
    """The kept frames a stage reads: indices into `clip.frame_times`, the images and their times (s)."""

    indices: list[int] = field(default_factory=list)
    images: Sequence[np.ndarray] = ()
    times: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)


# Causes that several stages can reject by: one name and one meaning each, so the audit counts a cause once.
COMMON_RULES: dict[str, str] = {
    "no_frames": "the clip has no kept frame for this stage to read",
}


class Stage:
    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    resources: ClassVar[Resources] = Resources()
    columns: ClassVar[dict[str, pa.DataType]] = {}
    # Stages (by name) or columns (by full name) that must come from an earlier stage of the recipe.
    requires: ClassVar[tuple[str, ...]] = ()
    # True for the stage that decodes videos and keeps the frames later stages read (their `frame_request`s).
    provides_frames: ClassVar[bool] = False
    # True for a stage that may read kept frames another stage chose, from any level that holds them (the
    # captioner's pose keyframes): the engine keeps every level until such a stage has run.
    reads_any_level: ClassVar[bool] = False
    # True for a stage that turns one video row into clip rows (the audit counts videos before it, clips after).
    splits: ClassVar[bool] = False
    # True for a stage that loads models in setup(): it runs in a Ray actor pool, set up once per worker.
    actor: ClassVar[bool] = False
    # Rules this stage can reject by, with a one-line meaning each (shown by `actcurate audit` and the README).
    rules: ClassVar[dict[str, str]] = {}

    def __init__(self, params: StageParams | None = None, context: RunContext | None = None):
        self.params = params if params is not None else self.Params()
        self.context = context or RunContext()
        # CPUs the engine gives one worker of this stage (its Ray share; the whole machine in process, where stages
        # run one at a time); None outside the engine.
        self.worker_cpus: float | None = None

    def use_worker_cpus(self, cpus: float | None) -> None:
        """Run as a worker the engine gives `cpus` CPUs (before setup()). OpenCV's thread pool belongs to the process,
        so it is sized here too: a thread per core on a 1-CPU worker gives the same numbers for up to 40% more CPU
        (DIS flow 41%, a 720p resize 25%; 2 cores)."""
        self.worker_cpus = cpus
        if cpus:
            import cv2  # here: modules that only read stage declarations (review server, audit) need no OpenCV

            cv2.setNumThreads(self.worker_threads())

    def worker_threads(self) -> int:
        """Threads this worker's native code (decoders, inference runtimes) may run: its CPUs, at least one, as Ray
        sets OMP_NUM_THREADS; 0 outside the engine (the library's own choice, every core). A 1-CPU worker that ran
        a thread per core would compete with the other workers on its node and spend CPU on handing work over."""
        return max(1, int(self.worker_cpus)) if self.worker_cpus else 0

    # -- declarations ----------------------------------------------------------------------------------------------
    def requirements(self) -> tuple[str, ...]:
        """What this configured stage needs from earlier stages (parameters may add to the class's `requires`)."""
        return self.requires

    def frame_request(self) -> FrameRequest | None:
        """Frames this stage reads; the frame-providing stage keeps them for it at this size and rate (requests of
        one size share their frames, at the highest rate asked at that size)."""
        return None

    def with_frame_requests(self, requests: list[FrameRequest]) -> StageParams:
        """A frame provider's parameters updated to keep what the later stages ask for."""
        return self.params

    @classmethod
    def rule_meanings(cls) -> dict[str, str]:
        return {**COMMON_RULES, **cls.rules}

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load models once per worker (in the Ray actor of a stage with `actor = True`)."""

    def resources_for(self, cluster_gpus: float) -> Resources:
        """What this stage asks of the cluster it is about to run on: a model stage takes its GPU share on
        `device: cuda`, and on `device: auto` only where the cluster has GPUs and its backend can use one."""
        device = getattr(self.params, "device", None)
        on_gpu = device == "cuda" or (device == "auto" and cluster_gpus > 0 and self.can_use_gpu())
        if on_gpu:
            return self.resources.model_copy(update={"gpus": self.params.gpu_share})
        return self.resources

    def can_use_gpu(self) -> bool:
        """Whether this configured stage's backend runs on a GPU at all (a CPU-only backend never takes one)."""
        return hasattr(self.params, "device")

    def preflight(self) -> None:
        """Checks on the driver before any video is touched (models present, endpoint reachable); raise UserError."""

    def model_path(self, artifact: str, explicit: str | None = None) -> Path:
        """A model file through the registry: the recipe's explicit path, then --models-dir, then the cache."""
        from pipeline import models

        return models.resolve(artifact, explicit, models_dir=self.context.models_dir)

    # -- processing ------------------------------------------------------------------------------------------------
    def process_clip(self, clip: Clip) -> None | Iterable[Clip]:
        """Work on one clip in place (return None) or return the clips that replace it (a split)."""
        raise NotImplementedError(f"stage {self.name} implements neither process nor process_clip")

    def process(self, clips: list[Clip]) -> list[Clip]:
        """Batch entry point for stages that batch work across clips; by default one clip at a time."""
        return list(self._each(clips))

    def iter_process(self, clips: list[Clip]) -> Iterator[Clip]:
        """What the engine calls. Streams the output (a long video need not sit in memory whole); a batch stage's
        failure is retried clip by clip, so one bad clip never fails its siblings."""
        if type(self).process is Stage.process:
            return self._each(clips)
        started = time.perf_counter()
        dead = {id(c) for c in clips if not c.alive}  # pass through uncharged
        outputs: list[Clip] = []
        self.isolate(clips, lambda group: outputs.extend(self.process(group)))
        emitted = {id(c) for c in outputs}
        # rows process() never saw (already dead) or that failed on their own still leave the stage; a live clip
        # a non-splitting process() did not hand back is left to the engine, which records the loss
        outputs += [c for c in clips if id(c) not in emitted and (not c.alive or id(c) in dead)]
        self._charge_all([c for c in outputs if id(c) not in dead and self.name not in c.timings], started)
        return iter(outputs)

    def isolate(self, items: list[T], step: Callable[[list[T]], Any],
                clip_of: Callable[[T], Clip] = lambda item: item) -> None:
        """Run `step` over all items together; if it raises, again one item at a time, so only the items that fail
        on their own become error rows. The one place a batch is split to find its bad member."""
        live = [item for item in items if clip_of(item).alive]
        if not live:
            return
        try:
            step(live)
            return
        except Exception:
            pass
        for item in live:
            if not clip_of(item).alive:  # rejected during the batch attempt: that verdict stands
                continue
            try:
                step([item])
            except Exception as exc:
                clip_of(item).fail(self.name, exc)

    def _each(self, clips: list[Clip]) -> Iterator[Clip]:
        for clip in clips:
            started = time.perf_counter()
            if not clip.alive:  # rejected and errored rows pass through later stages untouched
                yield clip
                continue
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

    def _charge_all(self, clips: list[Clip], started: float) -> None:
        share = (time.perf_counter() - started) / max(1, len(clips))
        for clip in clips:
            clip.timings[self.name] = clip.timings.get(self.name, 0.0) + share

    def recover(self, clip: Clip, exc: Exception) -> Iterator[Clip]:
        """Rows to emit when processing `clip` raised; splitting stages override to keep what they already emitted."""
        clip.fail(self.name, exc)
        yield clip

    # -- helpers for subclasses ------------------------------------------------------------------------------------
    def frames(self, clip: Clip, fps: float | None = None, max_frames: int | None = None) -> FrameSample:
        """The clip's kept frames at this stage's size and rate (its frame request's unless `fps` is given), on the
        same grid the frame provider kept them by; `max_frames` spreads a cap evenly over the clip. Indices are
        into `clip.frame_times` (the scenes_kept_frame_times column), whichever size level the images come from."""
        request = self.frame_request()
        kept, images = clip.kept_frames(request.max_side if request else None)
        if not kept:
            return FrameSample()
        if not clip.frame_levels and len(clip.frame_times) != len(images):
            raise ValueError(f"clip has {len(images)} frames but {len(clip.frame_times)} frame times")
        times = [float(clip.frame_times[i]) for i in kept]
        rate = fps or (request.fps if request else None)
        picks = sample_indices(times, rate) if rate else list(range(len(kept)))
        if max_frames is not None and len(picks) > max_frames:
            picks = [picks[i] for i in np.linspace(0, len(picks) - 1, max_frames).round().astype(int)]
        return FrameSample([kept[k] for k in picks], [images[k] for k in picks], [times[k] for k in picks])

    def reject(self, clip: Clip, rule: str, value: float | None, threshold: float | None) -> None:
        assert rule in self.rule_meanings(), (
            f"stage {self.name} has no rule {rule!r}; declare it in {type(self).__name__}.rules")
        clip.reject(self.name, rule, value, threshold)

    def at_least(self, clip: Clip, rule: str, value: float | None, threshold: float | None,
                 strict: bool = False) -> bool:
        """Reject `clip` by `rule` unless value >= threshold (> with `strict`); a None threshold means the rule is
        off. A None value (nothing measured) fails an active rule. Returns whether the clip passed."""
        if threshold is None:
            return True
        if value is not None and (value > threshold if strict else value >= threshold):
            return True
        self.reject(clip, rule, value, threshold)
        return False

    def at_most(self, clip: Clip, rule: str, value: float | None, threshold: float | None) -> bool:
        """Reject `clip` by `rule` unless value <= threshold; a None threshold means the rule is off."""
        if threshold is None:
            return True
        if value is not None and value <= threshold:
            return True
        self.reject(clip, rule, value, threshold)
        return False

    def set(self, clip: Clip, **values: Any) -> None:
        for key, value in values.items():
            column = f"{self.name}_{key}"
            assert column in self.columns, f"stage {self.name} writes undeclared column {column!r}"
            clip.columns[column] = value
