"""Ray Data streaming over a recipe's stages: one Ray row per video (or per part of a long video).

A row carries its clips pickled, frames included, so a stage sees plain `Clip` objects and the engine alone decides
where each stage runs (tasks for stateless stages, actor pools for stages that load models in `setup()`). The
in-process executor hands the clips themselves from stage to stage.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import resource
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from pipeline.clip import Clip
from pipeline.errors import UserError
from pipeline.plan import PlannedVideo
from pipeline.progress import StageCounts
from pipeline.recipe import Recipe, StageSpec
from pipeline.stage import FrameRequest, Resources, RunContext, Stage

ROW_SCHEMA = pa.schema(
    [
        ("shard_id", pa.string()),
        ("video_id", pa.string()),
        ("part", pa.int32()),  # parts of one video, numbered from 0
        ("last", pa.bool_()),  # True on a video's final part; the driver then knows how many to expect
        ("clips", pa.binary()),
    ]
)
# A long video's clips leave the splitting stage in parts of about this many bytes of frames.
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024


def encode_row(shard_id: str, video_id: str, part: int, last: bool, clips: list[Clip],
               pickled: bool = True) -> dict[str, Any]:
    """A row of clips: pickled to cross processes, or the clips themselves between stages in one process (pickling
    there only copied every kept frame twice per stage)."""
    for clip in clips:
        clip.origin = None
    return {"shard_id": shard_id, "video_id": video_id, "part": part, "last": last,
            "clips": pickle.dumps(clips, protocol=5) if pickled else clips}


def decode_clips(data: bytes | list[Clip]) -> list[Clip]:
    return data if isinstance(data, list) else pickle.loads(data)


def source_row(video: PlannedVideo, pickled: bool = True) -> dict[str, Any]:
    clip = Clip(video_id=video.video_id, video_uri=video.uri, shard_id=video.shard_id)
    return encode_row(video.shard_id, video.video_id, 0, True, [clip], pickled)


class StageRunner:
    """Runs one stage over a Ray batch of rows; usable without Ray (tests call it on lists of row dicts)."""

    def __init__(self, stage_cls: type[Stage], params: dict, strip_frames: bool = False,
                 keep_frame_sides: list[int] | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress_actor: str | None = None,
                 context: RunContext | None = None, counter: StageCounts | None = None, pickled: bool = True,
                 worker_cpus: float | None = None):
        started = time.perf_counter()
        self.stage = stage_cls(stage_cls.Params(**params), context)
        self.stage.use_worker_cpus(worker_cpus)
        self.stage.setup()
        setup_s = time.perf_counter() - started
        self.strip_frames = strip_frames
        self.keep_frame_sides = keep_frame_sides
        self.chunk_bytes = chunk_bytes
        self.counter = counter  # in-process runs report here, not to an actor
        self.pickled = pickled  # False: output rows hold the clips themselves (the next stage is in this process)
        self.progress = _progress_actor(progress_actor) if progress_actor else None
        self.node = _node_id() if self.progress else None  # which node's workers ran the stage, for the run's report
        if counter is not None:
            counter.set_up(stage_cls.name, setup_s)
        elif self.progress is not None and stage_cls.actor:  # once per actor; task stages are set up per batch
            self.progress.set_up.remote(stage_cls.name, setup_s, _process_cpu_s())

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for rows in self.run_rows(batch.to_pylist()):
            yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    def run_rows(self, rows: list[dict]) -> Iterator[list[dict]]:
        """Yields lists of output rows. A whole-video row may leave a splitting stage in several parts (bounded
        memory); a part keeps its number through later stages, and an empty final part stays empty."""
        buffers: list[list[Clip]] = [[] for _ in rows]
        parts_sent = [0] * len(rows)
        chunkable = [r["part"] == 0 and r["last"] for r in rows]
        alive: list[Clip] = []
        for i, row in enumerate(rows):
            for clip in decode_clips(row["clips"]):
                clip.origin = i
                (alive if clip.alive else buffers[i]).append(clip)
        alive_in = list(alive)
        emitted: set[int] = set()
        produced_for: set[int] = set()  # input rows the stage emitted at least one clip for
        self._report(len(alive), 0)

        def flush(indices: list[int], final: bool) -> list[dict]:
            out = []
            for i in indices:
                clips = buffers[i]
                for c in clips:
                    if self.strip_frames:
                        c.drop_frames()
                    elif self.keep_frame_sides is not None:
                        c.keep_levels_for(self.keep_frame_sides)
                row = rows[i]
                if chunkable[i]:
                    out.append(encode_row(row["shard_id"], row["video_id"], parts_sent[i], final, clips,
                                          self.pickled))
                    parts_sent[i] += 1
                else:
                    out.append(encode_row(row["shard_id"], row["video_id"], row["part"], row["last"], clips,
                                          self.pickled))
                self._report(0, sum(1 for c in clips if c.alive and id(c) in emitted))
                buffers[i] = []
            return out

        for clip in self._outputs(alive):
            emitted.add(id(clip))
            i = clip.origin
            produced_for.add(i)
            buffers[i].append(clip)
            if chunkable[i] and sum(c.frame_bytes for c in buffers[i]) >= self.chunk_bytes:
                yield flush([i], final=False)
        self._account_for_lost(alive_in, emitted, produced_for, buffers)
        yield flush(list(range(len(rows))), final=True)

    def _account_for_lost(self, alive_in: list[Clip], emitted: set[int], produced_for: set[int],
                          buffers: list[list[Clip]]) -> None:
        """A stage must never make a clip vanish. A stage that keeps its clips must hand each one back; a splitting
        stage must emit something for each video it was given. What vanished becomes an error row that keeps its
        own video, span and clip index."""
        for clip in alive_in:
            if id(clip) in emitted:
                continue
            if self.stage.splits and clip.origin in produced_for:
                continue  # replaced by the clips split from it
            clip.fail(self.stage.name, RuntimeError("stage produced no rows for this clip"))
            emitted.add(id(clip))
            buffers[clip.origin].append(clip)

    def _outputs(self, alive: list[Clip]) -> Iterator[Clip]:
        """The stage's output. Stages isolate bad clips themselves (Stage.isolate); an exception that still escapes
        is a stage bug, and the clips not yet emitted become error rows rather than failing the Ray task."""
        done: set[int] = set()
        try:
            for clip in self.stage.iter_process(alive):
                done.add(id(clip))
                yield clip
        except Exception as exc:
            for clip in alive:
                if id(clip) not in done:
                    clip.fail(self.stage.name, exc)
                    yield clip

    def _report(self, rows_in: int, rows_out: int) -> None:
        """Clips in and out, as they happen; waited for, so the counts are complete when the run's rows are."""
        if not (rows_in or rows_out):
            return
        threads = self.stage.worker_threads()
        if self.counter is not None:
            self.counter.add(self.stage.name, rows_in, rows_out, threads=threads)
            return
        if self.progress is None:
            return
        import ray

        try:
            ray.get(self.progress.add.remote(self.stage.name, rows_in, rows_out, self.node, threads), timeout=10)
        except Exception:  # progress is best effort; never fail a stage over it
            pass


def run_stage_batch(batch: pa.Table, **runner_args) -> Iterator[pa.Table]:
    """Task form of StageRunner, for stages without setup(): cheap to construct on every call."""
    yield from StageRunner(**runner_args)(batch)


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _progress_actor(name: str):
    import ray

    try:
        return ray.get_actor(name, namespace=namespace())
    except ValueError:
        return None


def _node_id() -> str | None:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def describe_pending() -> str:
    """What a stalled run waits for, in Ray's words: the resource demands no node grants now (what `ray status` lists
    under "Pending Demands", from the autoscaler monitor's report) and the free CPUs of each node."""
    import json

    from ray._private import ray_constants
    from ray._private.state import available_resources_per_node
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = json.loads(raw).get("load_metrics_report", {}) if raw else {}
    demands = [f"{count}x {bundle}" for bundle, count in report.get("resource_demand") or []]
    free = {node[:8]: round(res.get("CPU", 0.0), 3) for node, res in available_resources_per_node().items()}
    return (f"pending Ray demands {', '.join(demands) or 'none'}; free CPUs per node {free}; "
            f"{len(alive_nodes())} node(s) alive")


def namespace() -> str:
    return os.environ.get("ACTCURATE_RAY_NAMESPACE", "actcurate")


# How long `--address` / RAY_ADDRESS may take to answer before the run gives up with one line.
CONNECT_TIMEOUT_S = float(os.environ.get("ACTCURATE_RAY_CONNECT_TIMEOUT_S", "15"))


def ensure_ray(address: str | None = None) -> None:
    """Reuse a running Ray (tests share one); else join --address or RAY_ADDRESS, else start a new local one."""
    import ray

    if ray.is_initialized():
        return
    # Ray's start-up chatter (token-auth notice, deprecations) is not for the curation user: errors only.
    logging.getLogger("ray").setLevel(logging.ERROR)
    # Workers find models through the same folders as the driver (not secrets, so they may travel).
    model_env = {k: os.environ[k] for k in ("ACTCURATE_MODELS", "ACTCURATE_CACHE") if os.environ.get(k)}
    # Never a bare ray.init(): it joins whatever cluster Ray's address file on this machine names (a stale one
    # from a cluster stopped uncleanly hangs the run). --address, else RAY_ADDRESS (`ray job submit` sets it),
    # else a new embedded local instance.
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    check_reachable(target, CONNECT_TIMEOUT_S)
    try:
        ray.init(
            address=target,
            runtime_env={"env_vars": model_env} if model_env else None,
            include_dashboard=False,
            logging_level=logging.ERROR,
            namespace=namespace(),
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:  # ray.exceptions' connection and auth errors too
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot join the Ray cluster at {target}: {first}") from None


def check_reachable(address: str, timeout_s: float) -> None:
    """A cluster address must answer on its port within `timeout_s`: Ray itself retries an unreachable GCS for
    about a minute per attempt and then hangs or fails with a page of internals."""
    import socket

    if address in ("local", "auto"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} is not host:port (or ray://host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster answers at {address} within {timeout_s:.0f}s ({exc.strerror or exc}); "
                        "check --address / RAY_ADDRESS and that the head node runs `ray start --head`") from None


def alive_nodes() -> list[dict[str, float]]:
    """Resources of each live node (CPU, GPU, memory, custom), as the scheduler places a worker: on one node."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def build_dataset(recipe: Recipe, videos: list[PlannedVideo], progress_actor: str | None = None,
                  context: RunContext | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                  one_video_per_call: bool = False):
    """The lazy Ray dataset of the recipe over `videos`. With `one_video_per_call` every stage gets one row per
    call, so a worker that dies takes only that video with it (the retry of videos a crash lost)."""
    import ray
    import ray.data

    # CRITICAL: a node lost mid-run makes Ray Data log a page of stack trace; the run says it in one line itself
    # (run._stream), and Ray Data's own log file under the Ray session keeps the details.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own per-stage progress replaces Ray's
    ctx.verbose_stats_logs = False
    ctx.enable_auto_log_stats = False
    # A worker that crashes hard (a segfault in a decoder) loses only its block; that video's shard stays
    # pending and the run reports it, rather than the whole run dying.
    ctx.max_errored_blocks = -1

    ds = ray.data.from_items([source_row(v) for v in videos], override_num_blocks=max(1, len(videos)))
    planned = plan_resources(recipe.stages, alive_nodes())
    all_args = stage_runner_args(recipe, chunk_bytes=chunk_bytes, progress_actor=progress_actor, context=context)
    for spec, runner_args in zip(recipe.stages, all_args):
        res = planned[spec.name]
        if one_video_per_call:
            res = res.model_copy(update={"batch_size": 1})
        ds = _add_stage(ds, spec, res, runner_args)
    return ds


def stage_runner_args(recipe: Recipe, **common: Any) -> list[dict[str, Any]]:
    """Each stage's StageRunner arguments in recipe order: the Ray and the in-process executors build the same
    runners. Frames are dropped after the last stage that reads them, and each level of kept frames after the last
    stage that reads that size (so pose's frames do not travel on through ocr and motion)."""
    specs = recipe.stages
    requests = [spec.build().frame_request() for spec in specs]
    readers = [i for i, (spec, request) in enumerate(zip(specs, requests))
               if spec.cls.provides_frames or request is not None]
    last_frame_reader = max(readers, default=-1)
    return [dict(stage_cls=spec.cls, params=spec.params.model_dump(), strip_frames=index >= last_frame_reader,
                 keep_frame_sides=_sides_read_by(specs[index + 1:], requests[index + 1:]), **common)
            for index, spec in enumerate(specs)]


def _sides_read_by(specs: list[StageSpec], requests: list[FrameRequest | None]) -> list[int] | None:
    """The frame sizes these stages read; None (keep every level) when one of them may read any."""
    if any(spec.cls.reads_any_level for spec in specs):
        return None
    return sorted({request.max_side for request in requests if request is not None})


def this_machine() -> dict[str, float]:
    """This machine's resources as a Ray node would state them, for the in-process executor's checks (CPUs only: it
    never places work on a GPU)."""
    return {"CPU": float(os.cpu_count() or 1),
            "memory": float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))}


def run_in_process(recipe: Recipe, videos: list[PlannedVideo], counter: StageCounts,
                   context: RunContext | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[dict]:
    """The recipe's rows without Ray: every stage in this process, each video through the whole chain before the
    next (a plain script's loop). For runs too small to repay Ray's fixed cost (a local Ray and one worker process
    per stage cost seconds of CPU before the first clip). The same StageRunners as on Ray, so the same rows; a long
    video still streams through in parts. A crash in native code ends this process, not just its video: `auto` runs
    this in a child process and goes on with the pending shards on Ray, whose workers isolate the crashing video
    (pipeline.run; later auto runs on that OUT take Ray too, pipeline.run.LOCAL_RUN_MARK)."""
    plan_resources(recipe.stages, [this_machine()])  # a stage that needs a GPU fails here, in one line
    # The environment Ray gives a 1-CPU worker (OMP_NUM_THREADS=1): torch sizes its pool from it, and its sums then
    # match a Ray worker's. The runtimes the stages size themselves (Stage.worker_threads) give the same numbers on
    # any thread count (checked for PP-OCR, BlazePose, OpenCV's DIS flow), so here each takes every core.
    set_threads = "OMP_NUM_THREADS" not in os.environ
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        cores = this_machine()["CPU"]  # stages run one at a time here, so each may use every core
        runners = [StageRunner(counter=counter, pickled=False, worker_cpus=cores, **args)
                   for args in stage_runner_args(recipe, chunk_bytes=chunk_bytes, context=context)]
        for video in videos:
            rows: Iterable[dict] = [source_row(video, pickled=False)]
            for runner in runners:
                rows = _through(runner, rows)
            yield from rows
    finally:
        if set_threads:
            os.environ.pop("OMP_NUM_THREADS", None)


def _through(runner: StageRunner, rows: Iterable[dict]) -> Iterator[dict]:
    for row in rows:
        for out in runner.run_rows([row]):
            yield from out


def plan_resources(specs: list[StageSpec], nodes: list[dict[str, float]]) -> dict[str, Resources]:
    """Each stage's resources on these nodes, shrunk where they could never all be granted together, or a UserError
    (one line) when the cluster cannot run the recipe at all.

    Ray places every worker whole on one node. Every actor pool holds its minimum actors for the whole run, and a
    task stage needs one node with room for a task beside them, wherever Ray put the actors: on two nodes of 1 CPU,
    actors of 0.5 + 0.25 + 0.25 CPU may leave 0.5 free on each and a 1-CPU task waits for ever. So the actors' total
    is kept within what is left on the nodes after one task each (then some node always has a task's room), and
    task shares shrink to half the largest node where that would leave the actors less than half the cluster.
    Logical CPUs only: the work still runs, Ray just packs it differently.
    """
    cpus = [n.get("CPU", 0.0) for n in nodes]
    if not cpus or max(cpus) <= 0:
        raise UserError(f"the Ray cluster has no CPU on any of its {len(cpus)} node(s); start nodes with CPUs "
                        "(`ray start --num-cpus N`)")
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    planned = {s.name: s.build().resources_for(total_gpus) for s in specs}
    _check_devices(planned, nodes)
    actors = [s.name for s in specs if s.cls.actor]
    tasks = [s.name for s in specs if not s.cls.actor]
    largest = max(cpus)
    task_room = max((planned[n].cpus for n in tasks), default=0.0)
    # a task share no node can hold, or one that leaves the actors less than half the cluster: shrink the tasks
    target = largest / 2 if actors else largest
    if task_room > largest or (actors and task_room > target and _room_beside(cpus, task_room) < sum(cpus) / 2):
        _scale(planned, tasks, target / task_room)
        task_room = max(planned[n].cpus for n in tasks)
    held = sum(planned[n].cpus * planned[n].min_workers for n in actors)
    room = _room_beside(cpus, task_room)
    if actors and held > room:
        _scale(planned, actors, room / held)
        # Pools stay at their minimum: an actor added later could take the room a task needs.
        for name in actors:
            planned[name] = planned[name].model_copy(update={"max_workers": planned[name].min_workers})
    return planned


def _room_beside(cpus: list[float], task: float) -> float:
    """CPUs the actors may hold so that, however Ray spreads them, some node keeps `task` CPUs free: if every node
    had less, the actors would hold more than this sum."""
    return sum(c - task for c in cpus if c >= task)


def _scale(planned: dict[str, Resources], names: list[str], factor: float) -> None:
    for name in names:
        # rounded down: a share rounded up could break the bound it was scaled to meet
        cpus = max(math.floor(planned[name].cpus * factor * 1000) / 1000, 0.001)
        planned[name] = planned[name].model_copy(update={"cpus": cpus})


def _check_devices(planned: dict[str, Resources], nodes: list[dict[str, float]]) -> None:
    """GPU and memory needs no single node can meet: a UserError before any video is touched."""
    gpu_stages = [name for name, res in planned.items() if res.gpus]
    if gpu_stages and not any(n.get("GPU", 0.0) for n in nodes):
        raise UserError(
            f"stages {', '.join(gpu_stages)} need a GPU and this Ray cluster has none; choose their CPU backend in "
            "the recipe or pass --address of a cluster with GPU workers"
        )
    largest_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    largest_memory = max((n.get("memory", 0.0) for n in nodes), default=0.0)
    for name, res in planned.items():
        if res.gpus > largest_gpu:
            raise UserError(f"stage {name} needs {res.gpus} GPU per worker and no node has more than {largest_gpu}")
        if res.memory_gb and res.memory_gb * 1024**3 > largest_memory:
            raise UserError(f"stage {name} needs {res.memory_gb} GiB per worker and the largest node has "
                            f"{largest_memory / 1024**3:.1f} GiB")


TASK_RETRIES = 2  # times a stage task is run again after its worker died (a crash, a lost node)


def _add_stage(ds, spec: StageSpec, res: Resources, runner_args: dict[str, Any]):
    import ray.data

    runner_args = {**runner_args, "worker_cpus": res.cpus}
    remote_args: dict[str, Any] = {"num_cpus": res.cpus}
    if res.gpus:
        remote_args["num_gpus"] = res.gpus
    if res.memory_gb:
        remote_args["memory"] = int(res.memory_gb * 1024**3)
    if spec.cls.actor:
        return ds.map_batches(
            StageRunner,
            fn_constructor_kwargs=runner_args,
            compute=ray.data.ActorPoolStrategy(min_size=res.min_workers, max_size=res.max_workers),
            batch_size=res.batch_size,
            batch_format="pyarrow",
            # Ray Data hands every pool actor its transformer and context as object-store references, which Ray
            # cannot restore when it restarts an actor (ray-project/ray#53727: the warning on every run). Actors
            # are therefore not restarted in place: a crashed actor's block errors, its shard stays pending and
            # the next run redoes it (the commit protocol's own recovery), while the pool starts a fresh actor.
            max_restarts=0,
            **remote_args,
        )
    return ds.map_batches(
        run_stage_batch,
        fn_kwargs=runner_args,
        batch_size=res.batch_size,
        batch_format="pyarrow",
        # Ray Data retries a task whose worker died for ever (max_retries=-1): a video that segfaults its decoder
        # would be decoded again and again and the run would never end. A few retries ride out a lost node; then
        # the block errors and its videos run again one at a time (run._retry_lost_videos), the culprit alone.
        max_retries=TASK_RETRIES,
        **remote_args,
    )
