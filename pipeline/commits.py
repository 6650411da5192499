"""The commit ledger: a shard is done only when OUT/commits/<shard>.json exists and matches its manifest."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from manifests.io import manifest_path, write_manifest
from pipeline.storage import Store

COMMIT_DIR = "commits"


def commit_path(shard_id: str) -> str:
    return f"{COMMIT_DIR}/{shard_id}.json"


def commit_shard(store: Store, shard_id: str, table: pa.Table, recipe_hash: str) -> dict:
    """Manifest first (atomic), then the commit record. A crash between the two leaves the shard pending."""
    size, sha256 = write_manifest(store, shard_id, table)
    statuses = Counter(table.column("status").to_pylist())
    timings: dict[str, float] = {}
    for row in table.column("timings").to_pylist():
        for stage, seconds in (row or {}).items():
            if seconds is not None:
                timings[stage] = timings.get(stage, 0.0) + seconds
    record = {
        "shard_id": shard_id,
        "manifest": manifest_path(shard_id),
        "manifest_bytes": size,
        "manifest_sha256": sha256,
        "rows": table.num_rows,
        "videos": len(set(table.column("video_id").to_pylist())),
        "status_counts": dict(sorted(statuses.items())),
        "stage_seconds": {k: round(v, 6) for k, v in timings.items()},
        "recipe_hash": recipe_hash,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.write_bytes(commit_path(shard_id), json.dumps(record, indent=2).encode())
    return record


def _verified(store: Store, name: str) -> tuple[str, dict | None]:
    shard_id = name.removesuffix(".json")
    try:
        record = json.loads(store.read_bytes(commit_path(shard_id)))
        data = store.read_bytes(record["manifest"])
    except (OSError, FileNotFoundError, ValueError, KeyError):
        return shard_id, None
    if len(data) != record.get("manifest_bytes") or hashlib.sha256(data).hexdigest() != record.get("manifest_sha256"):
        return shard_id, None
    return shard_id, record


def committed_shards(store: Store) -> dict[str, dict]:
    """Commit records whose manifest exists with the recorded size and checksum (checked in parallel for S3)."""
    names = [n for n in store.list(COMMIT_DIR) if n.endswith(".json")]
    with ThreadPoolExecutor(max_workers=16 if not store.local else 4) as pool:
        results = list(pool.map(lambda n: _verified(store, n), names))
    return {shard_id: record for shard_id, record in results if record is not None}
