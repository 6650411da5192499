"""Finished model calls, recorded under OUT/calls/ as they complete, so no finished call is ever paid for twice.

One small JSON object per call at calls/<clip id>/<key>.json, keyed by (clip id, expert, prompt hash, frames hash).
One object per call (not appended shards) because S3 has no append and a call must be durable the moment it is paid
for: a worker killed right after loses nothing it had finished. A record never holds a key or a request header.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pipeline.redact import redactor
from pipeline.storage import Store

CALLS_DIR = "calls"
# Outcomes a resumed run reuses. An `error` call returned nothing usable, so --redo-errors asks again.
REUSABLE = frozenset({"success", "truncated", "blocked"})


def call_key(clip_id: str, expert: str, prompt_hash: str, frames_hash: str) -> str:
    return hashlib.sha256(f"{clip_id}|{expert}|{prompt_hash}|{frames_hash}".encode()).hexdigest()[:32]


class CallLedger:
    """Reads and writes call records under one run's OUT (local path or s3://); None output: records nothing."""

    def __init__(self, output: str | None):
        self.store = Store(output) if output else None
        self.local = self.store is None or self.store.local  # records are small local files: no thread needed
        # the secrets are those present when the ledger is made, as the model clients read their keys then
        self.redact = redactor()

    def _rel(self, clip_id: str, key: str) -> str:
        return f"{CALLS_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '_', clip_id)}/{key}.json"

    def get(self, clip_id: str, key: str) -> dict[str, Any] | None:
        """The finished call recorded for this key, if it can be reused (not an error)."""
        if self.store is None:
            return None
        rel = self._rel(clip_id, key)
        try:
            record = json.loads(self.store.read_bytes(rel))
        except (FileNotFoundError, OSError, ValueError):  # missing, or cut short by a machine crash
            return None
        return record if record.get("outcome") in REUSABLE else None

    def put(self, clip_id: str, key: str, record: dict[str, Any]) -> None:
        if self.store is None:
            return
        # redact: an error message may quote a server's answer, which may echo a header
        data = self.redact(json.dumps({**record, "key": key}, sort_keys=True, default=str))
        # no fsync: a killed worker loses nothing; after a machine crash an empty record reads as missing and the
        # call is asked again (fsync per call put the disk on every call's critical path)
        self.store.write_bytes(self._rel(clip_id, key), data.encode(), sync=False)

    def all(self) -> list[dict[str, Any]]:
        """Every record (for audits and tests): lists calls/<clip>/ folders."""
        if self.store is None:
            return []
        out = []
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.store._path(CALLS_DIR), allow_not_found=True, recursive=True)
        for info in self.store.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.endswith(".json") and ".tmp-" not in info.base_name:
                with self.store.fs.open_input_stream(info.path) as f:
                    out.append(json.loads(f.read()))
        return out
