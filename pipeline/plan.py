"""Deterministic shard planning, written once to OUT/plan/ and reused by every later run on the same OUT."""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.clip import video_id_for
from pipeline.errors import UserError
from pipeline.inputs import LIST_ATTRIBUTES, read_inputs
from pipeline.storage import Store, check_writable, is_s3, normalize_uri, read_parquet_bytes

PLAN_JSON = "plan/plan.json"
PLAN_VIDEOS = "plan/videos.parquet"
DEFAULT_SHARD_SIZE = 64


@dataclass(frozen=True, slots=True)
class PlannedVideo:
    uri: str
    video_id: str
    shard_id: str
    order: int  # position in the sorted input; the manifest keeps this order
    license: str | None = None  # from the input list's optional columns (the exported dataset card lists them)
    source: str | None = None


@dataclass
class Plan:
    input_spec: str
    shard_size: int
    videos: list[PlannedVideo]

    @property
    def shard_ids(self) -> list[str]:
        return sorted({v.shard_id for v in self.videos})

    def videos_by_shard(self) -> dict[str, list[PlannedVideo]]:
        shards: dict[str, list[PlannedVideo]] = {}
        for v in self.videos:
            shards.setdefault(v.shard_id, []).append(v)
        return shards


@dataclass(frozen=True)
class PlanSummary:
    """What plan.json says of a plan: all that status, the audit and export need of it, so they never hold the
    video list (a million videos take about 260 MB as Python objects)."""

    input_spec: str
    shard_size: int
    videos: int
    shards: int

    @property
    def shard_ids(self) -> list[str]:
        return [shard_id_for(k) for k in range(self.shards)]  # make_plan numbers shards from 0, none empty


def shard_id_for(index: int) -> str:
    return f"shard-{index:06d}"


def make_plan(input_spec: str, shard_size: int) -> Plan:
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1 (got {shard_size})")
    inputs = read_inputs(input_spec)
    shard_ids = [shard_id_for(k) for k in range((len(inputs) + shard_size - 1) // shard_size)]  # one string a shard
    videos = [PlannedVideo(uri, video_id_for(uri), shard_ids[i // shard_size], i, **attrs)
              for i, (uri, attrs) in enumerate(inputs.items())]
    return Plan(input_spec, shard_size, videos)


def write_plan(store: Store, plan: Plan) -> PlanSummary:
    table = pa.table(
        {
            "uri": [v.uri for v in plan.videos],
            "video_id": [v.video_id for v in plan.videos],
            "shard_id": [v.shard_id for v in plan.videos],
            "order": pa.array([v.order for v in plan.videos], pa.int64()),
            **{k: pa.array([getattr(v, k) for v in plan.videos], pa.string()) for k in LIST_ATTRIBUTES},
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes(PLAN_VIDEOS, buf.getvalue())
    summary = PlanSummary(plan.input_spec, plan.shard_size, len(plan.videos), len(plan.shard_ids))
    meta = {"input": summary.input_spec, "shard_size": summary.shard_size, "videos": summary.videos,
            "shards": summary.shards}
    # plan.json last: its presence means the plan is complete.
    store.write_bytes(PLAN_JSON, json.dumps(meta, indent=2).encode())
    return summary


def read_plan_summary(store: Store) -> PlanSummary | None:
    if not store.exists(PLAN_JSON):
        return None
    meta = json.loads(store.read_bytes(PLAN_JSON))
    return PlanSummary(meta["input"], meta["shard_size"], meta["videos"], meta["shards"])


def read_plan_attributes(store: Store) -> dict[str, dict[str, str | None]]:
    """The input list's licence and source columns of the videos that have either, by URI (none: an empty dict,
    without holding the plan's other videos)."""
    table = read_parquet_bytes(store.read_bytes(PLAN_VIDEOS))
    present = [k for k in LIST_ATTRIBUTES if k in table.column_names]  # older plans lack them
    if not present:
        return {}
    given = functools.reduce(pc.or_, [pc.is_valid(table.column(k)) for k in present])
    rows = table.filter(given).select(["uri", *present]).to_pylist()
    return {row["uri"]: {k: row.get(k) for k in LIST_ATTRIBUTES} for row in rows}


def read_plan(store: Store, summary: PlanSummary | None = None) -> Plan | None:
    """The plan with its video list; `summary`: plan.json as the caller has read it already."""
    summary = summary or read_plan_summary(store)
    if summary is None:
        return None
    table = read_parquet_bytes(store.read_bytes(PLAN_VIDEOS))
    n = table.num_rows
    # Column by column into Python objects, each list freed once used; a shard's videos share one ID string.
    shard_ids = {s: s for s in table.column("shard_id").unique().to_pylist()}
    shards = [shard_ids[s] for s in table.column("shard_id").to_pylist()]
    attrs = [table.column(k).to_pylist() if k in table.column_names else [None] * n  # older plans lack them
             for k in LIST_ATTRIBUTES]
    videos = [PlannedVideo(*fields) for fields in zip(table.column("uri").to_pylist(),
                                                       table.column("video_id").to_pylist(), shards,
                                                       table.column("order").to_pylist(), *attrs, strict=True)]
    return Plan(summary.input_spec, summary.shard_size, videos)


def same_input(a: str, b: str) -> bool:
    """`videos`, `./videos/` and its absolute path name the same input."""
    def norm(spec: str) -> str:
        return spec.rstrip("/") if is_s3(spec) else normalize_uri(spec).rstrip("/")

    return norm(a) == norm(b)


def load_or_create_plan(store: Store, input_spec: str | None, shard_size: int | None) -> tuple[Plan, bool]:
    """The existing plan if OUT has one (checked against the options given), else a new one. Returns (plan, created)."""
    summary, new_plan = open_or_create_plan(store, input_spec, shard_size)
    return (new_plan or read_plan(store, summary)), new_plan is not None


def open_or_create_plan(store: Store, input_spec: str | None, shard_size: int | None
                        ) -> tuple[PlanSummary, Plan | None]:
    """OUT's plan checked against the options given, as its summary; the new plan too where there was none (an
    existing plan's videos are read by `read_plan` only when there is work: a finished run's resume needs none)."""
    existing = read_plan_summary(store)
    if existing is not None:
        if input_spec and not same_input(input_spec, existing.input_spec):
            raise UserError(
                f"{store.root} was planned from input {existing.input_spec!r}, not {input_spec!r}; "
                "use a new --output for a different input"
            )
        if shard_size and shard_size != existing.shard_size:
            raise UserError(
                f"{store.root} was planned with --shard-size {existing.shard_size}; resume with the same size or a new --output"
            )
        return existing, None
    if not input_spec:
        raise UserError(f"{store.root} has no plan yet: pass --input for the first run")
    plan = make_plan(input_spec, shard_size or DEFAULT_SHARD_SIZE)  # a bad input fails before OUT is created
    check_writable(store)
    return write_plan(store, plan), plan
