"""Reading and writing manifest files (one Parquet file per shard under OUT/manifests/)."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import Store, read_parquet_bytes

MANIFEST_DIR = "manifests"


def manifest_path(shard_id: str) -> str:
    return f"{MANIFEST_DIR}/{shard_id}.parquet"


def table_to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_manifest(store: Store, shard_id: str, table: pa.Table) -> tuple[int, str]:
    """Atomic write; returns (size, sha256) for the commit record."""
    data = table_to_bytes(table)
    store.write_bytes(manifest_path(shard_id), data)
    return len(data), hashlib.sha256(data).hexdigest()


def read_manifest(store: Store, shard_id: str) -> pa.Table:
    return read_parquet_bytes(store.read_bytes(manifest_path(shard_id)))


def read_manifest_schema(store: Store, shard_id: str) -> pa.Schema:
    """A manifest's columns from its Parquet footer alone (on S3: ranged reads of the file's end)."""
    with store.open_input_file(manifest_path(shard_id)) as f:
        return pq.read_schema(f)


def read_manifests(store: Store, shard_ids: list[str]) -> pa.Table | None:
    """All rows of the given shards as one table; columns a recipe change added are null in older shards."""
    tables = [read_manifest(store, s) for s in shard_ids]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")
