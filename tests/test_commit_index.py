"""The commit index: `status` and a resume of a finished run read one summary object and two listings, not every
commit record and manifest; an entry whose objects changed since is checked from its record as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from faultproxy import FaultProxy
from fixtures_run import finished_run
from manifests.audit import status
from manifests.io import manifest_path, table_to_bytes
from pipeline.commits import COMMIT_INDEX, load_commits
from pipeline.recipe import load_recipe
from pipeline.run import RunOptions, run
from pipeline.storage import _s3_filesystem
from s3server import MotoServer

SHARDS = 30


def resume(output: str):
    return run(RunOptions(recipe=load_recipe("quickstart"), output=output, progress=False))


def test_a_resume_writes_the_index_and_changed_objects_are_checked_again(tmp_path):
    store = finished_run(str(tmp_path / "out"), tmp_path, SHARDS)
    before = status(store.root)
    assert load_commits(store)[1] == SHARDS  # no index: every record read and checked
    assert resume(store.root).videos_processed == 0  # nothing to do, no stage work; it writes the index
    assert store.exists(COMMIT_INDEX)
    records, unindexed = load_commits(store)
    assert unindexed == 0 and len(records) == SHARDS
    assert status(store.root) == before

    # a manifest replaced after the index (a --redo-errors that died before its commit record): that shard alone is
    # checked from its record, and its checksum no longer matches
    shard = sorted(records)[3]
    table = pa.Table.from_pylist([{"clip_id": "x"}])
    store.write_bytes(manifest_path(shard), table_to_bytes(table))
    # a shard committed after the index was written: read from its record
    extra = dict(records[sorted(records)[0]], shard_id="shard-extra")
    store.write_bytes("commits/shard-extra.json", json.dumps(extra).encode())
    records, unindexed = load_commits(store)
    assert unindexed == 2
    assert shard not in records and "shard-extra" in records  # its manifest (shard 0's) matches its record
    after = status(store.root)
    assert after["pending_shards"] == [shard] and after["shards"]["committed"] == SHARDS  # 29 + the extra one

    # a corrupt index is ignored, not trusted
    store.write_bytes(COMMIT_INDEX, b"{not json")
    assert load_commits(store)[1] == SHARDS + 1


def test_a_finished_runs_resume_reads_no_video_list(tmp_path, monkeypatch):
    """The plan's shard count (plan.json) tells that every shard is committed; its video list (a million videos:
    about 3 s and 600 MB in Python) is read only when there is work."""
    from pipeline.plan import PLAN_VIDEOS
    from pipeline.storage import Store

    store = finished_run(str(tmp_path / "out"), tmp_path, 3)
    reads = []
    read_bytes = Store.read_bytes
    monkeypatch.setattr(Store, "read_bytes", lambda self, name: reads.append(name) or read_bytes(self, name))
    result = resume(store.root)
    assert (result.shards_total, result.shards_committed_before, result.videos_processed) == (3, 3, 0)
    assert PLAN_VIDEOS not in reads and "plan/plan.json" in reads


@pytest.mark.slow
def test_status_over_s3_reads_a_bounded_number_of_objects(tmp_path, monkeypatch):
    with MotoServer() as s3, FaultProxy(s3.endpoint_url) as proxy:
        s3.create_bucket("curated")
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        _s3_filesystem.cache_clear()
        output = "s3://curated/finished"
        finished_run(output, tmp_path, SHARDS)

        def status_requests() -> tuple[dict, list]:
            proxy.log.clear()
            done = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", output, "--json"],
                                  capture_output=True, text=True, timeout=120, env={**os.environ, **env})
            assert done.returncode == 0, done.stderr[-2000:]
            return json.loads(done.stdout), list(proxy.log)

        unindexed, unindexed_log = status_requests()
        assert resume(output).videos_processed == 0
        indexed, log = status_requests()
        _s3_filesystem.cache_clear()
    assert indexed == unindexed and indexed["shards"]["committed"] == SHARDS
    reads = [path for method, path, _ in log if method == "GET" and "list-type" not in path]
    assert not [p for p in reads if "/commits/" in p or "/manifests/" in p], reads
    assert len(log) <= 12, log  # plan, run.json, the index, listings of commits/, manifests/ and reviews/
    # without the index every record and every manifest was read
    assert len([p for m, p, _ in unindexed_log if m == "GET" and "/commits/" in p]) >= SHARDS
