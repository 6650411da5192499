"""The manifest schema: core columns, then each stage's prefixed columns, then per-stage timings."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

from pipeline.clip import Clip

SCHEMA_VERSION = "1"

CORE_COLUMNS: dict[str, pa.DataType] = {
    "clip_id": pa.string(),
    "video_id": pa.string(),
    "video_uri": pa.string(),
    "shard_id": pa.string(),
    "clip_index": pa.int32(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "status": pa.string(),
    "reject_stage": pa.string(),
    "reject_rule": pa.string(),
    "reject_value": pa.float64(),
    "reject_threshold": pa.float64(),
    "error_stage": pa.string(),
    "error_type": pa.string(),
    "error_message": pa.string(),
}


def manifest_schema(stage_names: Sequence[str], stage_columns: dict[str, pa.DataType],
                    split_stage: str | None = None) -> pa.Schema:
    fields = [pa.field(name, typ) for name, typ in CORE_COLUMNS.items()]
    fields += [pa.field(name, typ) for name, typ in stage_columns.items()]
    fields.append(pa.field("timings", pa.struct([pa.field(s, pa.float64()) for s in stage_names])))
    # what the audit needs to read a manifest on its own: the stage order and where videos become clips
    metadata = {"schema_version": SCHEMA_VERSION, "stages": json.dumps(list(stage_names)),
                "split_stage": json.dumps(split_stage)}
    return pa.schema(fields, metadata=metadata)


def clip_row(clip: Clip, schema: pa.Schema) -> dict:
    row = {name: getattr(clip, name) for name in CORE_COLUMNS if name != "clip_id"}
    row["clip_id"] = clip.clip_id
    for field in schema:
        if field.name not in CORE_COLUMNS and field.name != "timings":
            row[field.name] = clip.columns.get(field.name)
    row["timings"] = {f.name: clip.timings.get(f.name) for f in schema.field("timings").type}
    return row


def clips_to_table(clips: Sequence[Clip], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([clip_row(c, schema) for c in clips], schema=schema)
