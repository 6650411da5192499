"""`actcurate run` as a library call: plan, skip committed shards, stream the rest through Ray, commit per shard."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from importlib import metadata

from manifests.io import MANIFEST_DIR, read_manifest
from manifests.schema import manifest_schema
from pipeline.collector import ShardCollector
from pipeline.commits import COMMIT_DIR, load_commits, write_commit_index
from pipeline.errors import UserError
from pipeline.executor import (DEFAULT_CHUNK_BYTES, build_dataset, decode_clips, describe_pending, ensure_ray,
                                namespace, run_in_process)
from pipeline.isolation import in_child_process
from pipeline.plan import Plan, PlannedVideo, open_or_create_plan, read_plan
from pipeline.progress import RunProgress, StageCounts, start_progress_actor
from pipeline.recipe import Recipe
from pipeline.stage import RunContext
from pipeline.storage import Store, check_writable

RUN_JSON = "run.json"
# A Ray dataset is built from its items in the driver, one block per video: a million pending videos would be a
# million pickled rows and blocks before the first one starts. So a run streams its pending shards in windows of
# about this many videos, one dataset each (actor pools start again per window: seconds per 10,000 videos).
WINDOW_VIDEOS = 10_000
# `executor: auto` runs at most this many pending videos in the driver itself, without Ray (see use_in_process).
# Measured with the quickstart on the shared clips on 2 cores (bench/pipeline.py): Ray's wall time against the
# in-process run's is 1.49x at 10 videos, 1.04x at 30, 0.93x at 100. Ray's lead grows with the cores it spreads
# stages over while the driver uses about 1.5, so the limit shrinks with the cores, to 8 from 6 cores up.
IN_PROCESS_MAX_VIDEOS = int(os.environ.get("ACTCURATE_IN_PROCESS_MAX_VIDEOS") or max(8, 48 // (os.cpu_count() or 1)))
VERSIONED_PACKAGES = ("actcurate", "ray", "av", "scenedetect", "opencv-python-headless", "pyarrow", "numpy")


@dataclass
class RunOptions:
    recipe: Recipe
    output: str
    input: str | None = None
    shard_size: int | None = None
    address: str | None = None
    redo_errors: bool = False
    allow_recipe_change: bool = False
    progress: bool | None = None  # None: bars on a terminal, log lines otherwise
    models_dir: str | None = None  # --models-dir: model files searched before the cache
    chunk_bytes: int = DEFAULT_CHUNK_BYTES  # a long video leaves the splitting stage in parts of about this size
    window_videos: int = WINDOW_VIDEOS  # pending videos streamed per Ray dataset (whole shards; see _windows)
    executor: str = "auto"  # ray | local (every stage in this process) | auto (see use_in_process)


@dataclass
class RunResult:
    output: str
    shards_total: int
    shards_committed_before: int
    shards_committed_now: list[str] = field(default_factory=list)
    shards_pending: list[str] = field(default_factory=list)
    videos_processed: int = 0
    seconds: float = 0.0
    stage_counts: dict[str, list[int]] = field(default_factory=dict)  # stage -> [clips in, out], as progress showed
    stage_nodes: dict[str, list[str]] = field(default_factory=dict)  # stage -> Ray node ids its workers ran on
    executor: str = ""  # "ray" or "local": where the stages ran
    # Where the time went (seconds; see `actcurate run --profile`): phases of the driver, its CPU, and per stage the
    # workers set up with their setup() time and, on Ray, the CPU each worker process had used when ready.
    profile: dict = field(default_factory=dict)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _record_run(store: Store, opts: RunOptions) -> None:
    """OUT/run.json holds run-level facts; a different recipe on the same OUT needs --allow-recipe-change."""
    recipe = opts.recipe
    info = json.loads(store.read_bytes(RUN_JSON)) if store.exists(RUN_JSON) else None
    if info and info["recipe_hash"] != recipe.hash and not opts.allow_recipe_change:
        raise UserError(
            f"{store.root} was run with recipe {info['recipe']['name']} (hash {info['recipe_hash']}); this recipe "
            f"has hash {recipe.hash}. Committed shards keep their old results. Pass --allow-recipe-change to "
            "process the remaining shards with the new recipe, or use a new --output."
        )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    history = (info or {}).get("history", [])
    history.append({"started_at": now, "recipe_hash": recipe.hash, "redo_errors": opts.redo_errors})
    record = {
        "recipe": recipe.to_dict(),
        "recipe_hash": recipe.hash,
        # what audit and status need, so they never import the stage modules (cv2, av, scenedetect)
        "split_stage": recipe.split_stage,
        "rules": {s.name: s.cls.rule_meanings() for s in recipe.stages},
        "recipe_source": recipe.source,
        "created_at": (info or {}).get("created_at", now),
        "started_at": now,
        "packages": package_versions(),
        "history": history,
    }
    store.write_bytes(RUN_JSON, json.dumps(record, indent=2).encode())


def _redo_targets(store: Store, plan: Plan, committed: dict[str, dict]):
    """Videos with an error row in committed shards, and the rows of those shards to keep as they are."""
    by_id = {v.video_id: v for v in plan.videos}
    expected: dict[str, list[PlannedVideo]] = {}
    kept: dict[str, list[dict]] = {}
    for shard_id, record in sorted(committed.items()):
        if not record.get("status_counts", {}).get("error"):
            continue
        rows = read_manifest(store, shard_id).to_pylist()
        errored = {r["video_id"] for r in rows if r["status"] == "error"}
        expected[shard_id] = [by_id[v] for v in sorted(errored, key=lambda v: by_id[v].order) if v in by_id]
        kept[shard_id] = [r for r in rows if r["video_id"] not in errored]
    return expected, kept


# Present while an in-process run works on OUT; left behind when that process died (a crash in native code, a kill)
LOCAL_RUN_MARK = "local_run.json"


def use_in_process(opts: RunOptions, pending_videos: int, store: Store | None = None) -> bool:
    """Whether this run's stages run in the driver, without Ray. `auto` does so for a small run that would start a
    new local Ray (no --address, no RAY_ADDRESS, none running in this process) on a machine without GPUs: Ray's
    start-up and a worker process per stage cost more CPU than a few videos' work (bench/pipeline.py). Not after
    an in-process run on this OUT died: a video that crashes its process would crash every rerun, while Ray's
    workers isolate it and it ends as its own error row."""
    if opts.executor in ("ray", "local"):
        return opts.executor == "local"
    if opts.executor != "auto":
        raise UserError(f"executor {opts.executor!r}: use auto, ray or local")
    if opts.address or os.environ.get("RAY_ADDRESS") or pending_videos > IN_PROCESS_MAX_VIDEOS:
        return False
    if store is not None and store.exists(LOCAL_RUN_MARK):
        return False
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():  # a Ray already running here (tests share one)
        return False
    return not glob.glob("/dev/nvidia[0-9]*")  # a GPU machine: stages may take their GPU share through Ray


def run(opts: RunOptions) -> RunResult:
    started = time.monotonic()
    profile: dict = {}
    recipe = opts.recipe
    store = Store(opts.output)
    context = RunContext(models_dir=str(Path(opts.models_dir).expanduser().resolve()) if opts.models_dir else None,
                         output=store.root)
    for spec in recipe.stages:
        spec.build(context).preflight()  # missing models, unreachable endpoints: fail before any video is touched
    profile["preflight_s"] = time.monotonic() - started
    summary, plan = open_or_create_plan(store, opts.input, opts.shard_size)
    if plan is None:  # an existing plan
        check_writable(store)
        for folder in ("", MANIFEST_DIR, COMMIT_DIR):  # where the commit protocol writes
            store.remove_stale_temporaries(folder)
    _record_run(store, opts)
    committed, unindexed = load_commits(store)
    all_committed = not opts.redo_errors and all(s in committed for s in summary.shard_ids)
    if plan is None and not all_committed:  # a finished run's resume reads no video list (a million: 3 s, 600 MB)
        plan = read_plan(store, summary)
    shards = plan.videos_by_shard() if plan is not None else {}
    expected = {s: videos for s, videos in shards.items() if s not in committed}
    kept: dict[str, list[dict]] = {}
    if opts.redo_errors:
        redo_expected, kept = _redo_targets(store, plan, committed)
        expected.update({s: v for s, v in redo_expected.items() if v})
    result = RunResult(store.root, summary.shards, len(committed), profile=profile)
    todo = [v for s in sorted(expected) for v in expected[s]]
    profile["plan_s"] = time.monotonic() - started - profile["preflight_s"]
    if not todo:
        if unindexed:  # the next status or resume reads one summary instead of these records
            _write_index_quietly(store, committed)
        result.seconds = time.monotonic() - started
        return result

    local = use_in_process(opts, len(todo), store)
    if local and opts.executor == "auto" and hasattr(os, "fork"):
        finished = in_child_process(lambda: _execute(opts, store, plan, committed, expected, kept, todo, result,
                                                     context, local, started))
        if finished.result is not None:
            return finished.result
        # the child died in native code: its committed shards stay; Ray's workers isolate the video that crashes
        sys.stderr.write(f"actcurate: the in-process run died ({finished.died}); running its pending shards again on "
                         "Ray, whose workers isolate the video that crashed\n")
        return run(dataclasses.replace(opts, executor="ray"))
    return _execute(opts, store, plan, committed, expected, kept, todo, result, context, local, started)


def _execute(opts: RunOptions, store: Store, plan: Plan, committed: dict[str, dict],
             expected: dict[str, list[PlannedVideo]], kept: dict[str, list[dict]], todo: list[PlannedVideo],
             result: RunResult, context: RunContext, local: bool, started: float) -> RunResult:
    """Stream the pending videos through the stages (in this process, or on Ray) and commit their shards."""
    recipe, profile = opts.recipe, result.profile
    result.executor = "local" if local else "ray"
    mark = time.monotonic()
    if not local:
        ensure_ray(opts.address)
    profile["ray_start_s"] = time.monotonic() - mark
    stage_columns = {c: t for spec in recipe.stages for c, t in spec.cls.columns.items()}
    schema = manifest_schema(recipe.stage_names(), stage_columns, recipe.split_stage)
    actor_name = f"actcurate-progress-{uuid.uuid4().hex[:8]}"

    def dataset_of(videos: list[PlannedVideo], one_video_per_call: bool = False):
        return build_dataset(recipe, videos, progress_actor=actor_name, context=context,
                             chunk_bytes=opts.chunk_bytes, one_video_per_call=one_video_per_call)

    windows = _windows(expected, opts.window_videos)
    if local:
        actor = StageCounts()
        first = run_in_process(recipe, todo, actor, context=context, chunk_bytes=opts.chunk_bytes)
    else:
        first = dataset_of(windows[0])  # lazy; checks the cluster's resources before the progress actor starts
        actor = start_progress_actor(namespace(), actor_name)
    order = {v.video_id: v.order for v in plan.videos if v.shard_id in expected}  # the pending shards' videos only
    collector = ShardCollector(store, schema, recipe.hash, expected, order, kept_rows=kept)
    split = recipe.split_stage
    video_level = len(recipe.stages) if split is None else recipe.stage_names().index(split) + 1
    mark = time.monotonic()
    with RunProgress(recipe.stage_names(), len(todo), actor=actor, interactive=opts.progress,
                     video_level_stages=video_level, explain_stall=None if local else describe_pending) as progress:
        records = dict(committed)

        def on_commit(shard_id: str, record: dict) -> None:
            records[shard_id] = record
            progress.videos_committed(len(expected[shard_id]))

        collector.on_commit = on_commit
        if local:
            store.write_bytes(LOCAL_RUN_MARK, json.dumps({"videos": [v.video_id for v in todo]}).encode())
            _stream_rows(first, collector)
            store.delete(LOCAL_RUN_MARK)  # not on an exception: a crash or kill leaves it for the next auto run
        else:
            for index, window in enumerate(windows):
                broken = _stream(first if index == 0 else dataset_of(window), collector)
                if broken:
                    progress.note(f"the run lost Ray workers mid-stream ({broken}); its unfinished videos run "
                                  "again on the nodes left")
            _retry_lost_videos(collector, dataset_of, progress)
        for shard_id, error in sorted(collector.commit_errors.items()):
            progress.note(f"{shard_id} could not be committed and stays pending: {error}")
    profile["stream_s"] = time.monotonic() - mark
    mark = time.monotonic()
    pending = set(collector.pending)  # a failed commit may have replaced the manifest its old record describes
    _write_index_quietly(store, {s: r for s, r in records.items() if s not in pending})
    profile["commit_s"] = collector.commit_seconds + time.monotonic() - mark
    if local:
        profile["stage_setup"] = actor.stage_setups()
        profile["stage_threads"] = actor.stage_threads()
    else:
        result.stage_nodes = _reported(actor, "stage_nodes")
        profile["stage_setup"] = _reported(actor, "stage_setups")
        profile["stage_threads"] = _reported(actor, "stage_threads")
        _kill_quietly(actor)
    result.stage_counts = progress.counts
    result.shards_committed_now = collector.committed
    result.shards_pending = collector.pending
    result.videos_processed = len(todo)
    result.seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    profile["driver_cpu_s"] = usage.ru_utime + usage.ru_stime
    profile["seconds"] = result.seconds
    return result


def _windows(expected: dict[str, list[PlannedVideo]], size: int) -> list[list[PlannedVideo]]:
    """The pending videos in shard order, cut into lists of about `size` videos that never split a shard (a shard
    commits within its window, so memory held for incomplete shards stays bounded too)."""
    windows: list[list[PlannedVideo]] = [[]]
    for shard_id in sorted(expected):
        if windows[-1] and len(windows[-1]) + len(expected[shard_id]) > size:
            windows.append([])
        windows[-1].extend(expected[shard_id])
    return windows


def _stream(dataset, collector: ShardCollector) -> str | None:
    """Feeds the dataset's rows to the collector (which commits each complete shard); returns why the stream broke
    (a node lost with an actor on it ends Ray Data's whole execution), or None when it ran to its end."""
    from ray.exceptions import RayError

    try:
        _stream_rows(dataset.iter_rows(), collector)
    except RayError as exc:
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]
    return None


def _stream_rows(rows, collector: ShardCollector) -> None:
    for row in rows:
        collector.add(row["shard_id"], row["video_id"], row["part"], row["last"], decode_clips(row["clips"]))


def _retry_lost_videos(collector: ShardCollector, dataset_of, progress: RunProgress) -> None:
    """A worker that dies (a segfaulting decoder, a killed node) takes its whole batch with it: those videos are
    run again one per call, so only the video that kills a worker again is lost, and it becomes an error row (its
    shard commits; `--redo-errors` tries it again) instead of blocking its shard for ever. If the retry's stream
    itself breaks (the cluster keeps losing nodes), nothing says which video is to blame: their shards stay pending
    for the next run."""
    lost = collector.missing_videos()
    if not lost:
        return
    progress.note(f"{len(lost)} video(s) lost with a worker that died; running them again one at a time")
    for video in lost:
        collector.forget(video)
    broken = _stream(dataset_of(lost, one_video_per_call=True), collector)
    if broken:
        progress.note(f"the retry lost Ray workers too ({broken}); {len(collector.pending)} shard(s) stay pending")
        return
    for video in collector.missing_videos():
        collector.record_lost(video, RuntimeError(
            "a worker process died while processing this video, in its batch and again alone (a crash in a decoder "
            "or model, or a lost node); retry it with --redo-errors"))


def _reported(actor, report: str) -> dict:
    """One of the progress actor's reports (stage_nodes, stage_setups, stage_threads)."""
    import ray

    try:
        return ray.get(getattr(actor, report).remote(), timeout=10)
    except Exception:  # a report, not a result: never fail a finished run over it
        return {}


def _write_index_quietly(store: Store, records: dict[str, dict]) -> None:
    """The commit index is a cache for status and resume: a run never fails over it (they fall back to the
    records)."""
    try:
        write_commit_index(store, records)
    except OSError:
        pass


def _kill_quietly(actor) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:
        pass
