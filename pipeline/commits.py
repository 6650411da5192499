"""The commit ledger: a shard is done only when OUT/commits/<shard>.json exists and matches its manifest."""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from manifests.io import MANIFEST_DIR, manifest_path, write_manifest
from pipeline.storage import Store

COMMIT_DIR = "commits"
# A summary of verified commit records, so that `status` and a resume read one object and two listings instead of
# every record and every manifest (on S3, two GETs per shard). A cache, never the truth: an entry counts only while
# the listed size and modification time of its commit record and of its manifest are still the ones it recorded;
# any other commit record is read and checked against its manifest as before.
COMMIT_INDEX = "commit_index.json"


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
    """Commit records whose manifest exists with the recorded size and checksum."""
    return load_commits(store)[0]


def load_commits(store: Store) -> tuple[dict[str, dict], int]:
    """The committed shards' records, and how many of them were read and checked one by one (checked in parallel for
    S3) because the commit index did not vouch for them."""
    commits = store.list_info(COMMIT_DIR)
    index = _read_index(store)
    manifests = store.list_info(MANIFEST_DIR) if index else {}
    records: dict[str, dict] = {}
    unindexed = []
    for name in sorted(n for n in commits if n.endswith(".json")):
        shard_id = name.removesuffix(".json")
        entry = index.get(shard_id)
        if entry and tuple(entry["commit"]) == commits[name] and \
                tuple(entry["manifest"]) == manifests.get(posixpath.basename(entry["record"]["manifest"])):
            records[shard_id] = entry["record"]
        else:
            unindexed.append(name)
    with ThreadPoolExecutor(max_workers=16 if not store.local else 4) as pool:
        results = list(pool.map(lambda n: _verified(store, n), unindexed))
    records.update({shard_id: record for shard_id, record in results if record is not None})
    return dict(sorted(records.items())), len(unindexed)


def write_commit_index(store: Store, records: dict[str, dict]) -> None:
    """Record the verified `records` with the listed size and time of each commit record and manifest (the run writes
    it when it ends). A record whose objects are not listed as it describes them is left out."""
    commits, manifests = store.list_info(COMMIT_DIR), store.list_info(MANIFEST_DIR)
    entries = {}
    for shard_id, record in records.items():
        commit = commits.get(f"{shard_id}.json")
        manifest = manifests.get(posixpath.basename(record["manifest"]))
        if commit and manifest and manifest[0] == record.get("manifest_bytes"):
            entries[shard_id] = {"record": record, "commit": list(commit), "manifest": list(manifest)}
    store.write_bytes(COMMIT_INDEX, json.dumps({"version": 1, "shards": entries}).encode(), sync=False)


def _read_index(store: Store) -> dict[str, dict]:
    try:
        index = json.loads(store.read_bytes(COMMIT_INDEX))
    except (OSError, FileNotFoundError, ValueError):
        return {}
    return index.get("shards", {}) if isinstance(index, dict) and index.get("version") == 1 else {}
