"""S3 that misbehaves, between the pipeline and a moto server: a fault-injecting proxy on 127.0.0.1 answers 503
SlowDown, resets connections, stalls, and drops the answer of a PUT the server already stored. Inputs are retried;
a shard is committed whole or left pending, never half-written or counted done; the audit reads S3 through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import media
from fixtures_run import clip_rows
from faultproxy import FaultProxy
from s3server import MotoServer

pytestmark = pytest.mark.slow
ACTCURATE = [sys.executable, "-m", "pipeline.cli"]
COMMON = ["--recipe", "quickstart", "--shard-size", "1", "--no-progress"]


def actcurate(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*ACTCURATE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def rows_on(env: dict, output: str) -> list[dict]:
    """clip_rows of an S3 output, read in this process through the given endpoint."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from pipeline.storage import _s3_filesystem

        _s3_filesystem.cache_clear()
        return clip_rows(output)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-videos")
    with MotoServer() as server:
        server.create_bucket("raw")
        server.create_bucket("curated")
        for i in range(4):
            path = media.make_video(root / f"v{i}.mp4", segments=(60, 55), fps=25, seed=i)
            server.upload("raw", f"crawl/v{i}.mp4", path)
        reference = actcurate("run", *COMMON, "--input", "s3://raw/crawl/", "--output", "s3://curated/reference",
                              env=server.env)
        assert reference.returncode == 0, reference.stderr[-3000:]
        yield server


def test_retried_faults_end_in_the_same_manifests_and_the_audit_reads_through_them(s3):
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.add_fault("GET", r"^/raw\?|^/raw/\?", "503", times=2)  # the listing of the input prefix
        proxy.add_fault("GET", r"^/raw/crawl/v", "503", times=3)  # video reads (probe, scenes)
        proxy.add_fault("GET", r"^/raw/crawl/v", "reset", times=3)
        proxy.add_fault("GET", r"^/raw/crawl/v", "slow", every=4, seconds=1.5)
        proxy.add_fault("PUT", r"/manifests/", "put_lost_answer", times=2)  # stored, but the answer is lost
        proxy.add_fault("PUT", r"/commits/", "503", times=2)
        proxy.add_fault("PUT", r"/commits/", "reset", times=1)
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}
        run = actcurate("run", *COMMON, "--input", "s3://raw/crawl/", "--output", "s3://curated/faulty", env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "4 of 4 shards" in run.stdout
        for kind, least in (("503", 7), ("reset", 4), ("slow", 1), ("put_lost_answer", 2)):
            assert proxy.fired(kind) >= least, (kind, proxy.log)
        report = actcurate("audit", "s3://curated/faulty", "--json", env=env)
        assert report.returncode == 0, report.stderr[-3000:]
        assert json.loads(report.stdout)["videos"] == {"total": 4, "done": 4}
        assert not [r for r in rows_on(env, "s3://curated/faulty") if r["status"] == "error"]
    assert rows_on(s3.env, "s3://curated/faulty") == rows_on(s3.env, "s3://curated/reference")


def test_a_commit_that_keeps_failing_leaves_its_shard_pending_then_a_resume_completes_it(s3):
    with FaultProxy(s3.endpoint_url) as proxy:
        # every attempt at shard 2's commit record fails; its manifest goes through
        proxy.add_fault("PUT", r"/commits/shard-000002\.json", "503", every=1)
        env = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url, "ACTCURATE_S3_MAX_ATTEMPTS": "3"}
        run = actcurate("run", *COMMON, "--input", "s3://raw/crawl/", "--output", "s3://curated/pending", env=env)
        assert run.returncode == 1, run.stderr[-3000:]
        assert "shard-000002 could not be committed and stays pending" in run.stderr
        assert "1 shard(s) did not complete" in run.stdout and "Traceback" not in run.stderr
        status = json.loads(actcurate("status", "s3://curated/pending", "--json", env=env).stdout)
        assert status["shards"] == {**status["shards"], "committed": 3, "pending": 1}
        assert status["pending_shards"] == ["shard-000002"]
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="curated", Prefix="pending/")["Contents"]}
    assert "pending/manifests/shard-000002.parquet" in keys  # written, but not counted: no commit record
    assert "pending/commits/shard-000002.json" not in keys
    resumed = actcurate("run", *COMMON, "--output", "s3://curated/pending", env=s3.env)
    assert resumed.returncode == 0 and "4 of 4 shards" in resumed.stdout, resumed.stderr[-3000:]
    assert rows_on(s3.env, "s3://curated/pending") == rows_on(s3.env, "s3://curated/reference")
