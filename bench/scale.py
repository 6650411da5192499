"""Many inputs: planning a list of a million URIs and an S3 prefix of many keys (moto, paginated), and `status` and a
resume of a finished many-shard run. Each measure runs in its own process, so its peak RSS is its own.

    .venv/bin/python bench/scale.py [--list-uris 1000000] [--s3-keys 20000] [--shards 10000]

The finished run is made with the engine's own commit path (commit_shard, one one-row manifest per shard), not by
hand. Its resume must start no stage work: the run returns "nothing to do" before Ray is even started, which the
bench checks by the absence of any Ray session for the child. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- the measures (each in a child process) -------------------------------------------------------------------------
def measure_plan(input_spec: str, output: str) -> dict:
    from pipeline.plan import load_or_create_plan
    from pipeline.storage import Store

    start = time.perf_counter()
    plan, _ = load_or_create_plan(Store(output), input_spec, 64)
    return {"videos": len(plan.videos), "seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": _peak_rss_mb()}


def measure_cli(*args: str) -> dict:
    """`actcurate ARGS` in this process, timed; Ray must not be started (no stage work)."""
    import ray
    from click.testing import CliRunner

    from pipeline.cli import main

    start = time.perf_counter()
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "peak_rss_mb": _peak_rss_mb(), "exit": result.exit_code,
            "ray_started": ray.is_initialized(), "last_line": result.output.strip().splitlines()[-1][:120]}


def make_finished_run(output: str, shards: int) -> dict:
    """A finished run of `shards` one-video shards, committed through the engine's commit path."""
    from fixtures_run import finished_run

    start = time.perf_counter()
    finished_run(output, Path(output).parent, shards)
    return {"shards": shards, "seconds": round(time.perf_counter() - start, 2)}


def list_floor(endpoint: str, prefix: str) -> dict:
    """A flat paginated ListObjectsV2 with boto3 and nothing else: what the S3 server itself costs."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    start, keys = time.perf_counter(), 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        keys += len(page.get("Contents", []))
    return {"keys": keys, "seconds": round(time.perf_counter() - start, 2)}


def moto_with_keys(keys: int):
    """An in-process moto server whose bucket is filled through moto's backend: 100,000 PUTs over HTTP take about
    ten minutes here, and only the listing is measured."""
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://127.0.0.1:%d" % server.get_host_and_port()[1]
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="crawl")
    backend = next(iter(s3_backends["123456789012"].values()))
    for i in range(keys):
        backend.put_object("crawl", f"day/{i % 97:02d}/v{i:07d}.mp4", b"")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_REGION": "us-east-1"}
    return server, endpoint, env


MEASURES = {"plan": measure_plan, "cli": measure_cli, "finished": make_finished_run, "floor": list_floor}


def child(name: str, *args: str, env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the bench ------------------------------------------------------------------------------------------------------
def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(MEASURES[sys.argv[2]](*_typed(sys.argv[3:]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--list-uris", type=int, default=1_000_000)
    # moto lists a page in time proportional to the whole bucket (100,000 keys: about 15 minutes here, whatever
    # the client); 20,000 keys show the client's cost against that floor
    parser.add_argument("--s3-keys", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=10_000)
    args = parser.parse_args()

    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="acs-scale-") as tmp:
        tmp = Path(tmp)
        if args.list_uris:
            listing = tmp / "uris.txt"
            with open(listing, "w") as f:
                for i in range(args.list_uris):
                    f.write(f"s3://crawl/day/{i % 97:02d}/v{i:07d}.mp4\n")
            plan = child("plan", str(listing), str(tmp / "list-out"))
            plan["seconds_per_100k"] = round(plan["seconds"] / (args.list_uris / 100_000), 2)
            figures["plan_list"] = plan
            print(f"plan of a {args.list_uris}-URI list: {plan}", file=sys.stderr)
        if args.s3_keys:
            server, endpoint, env = moto_with_keys(args.s3_keys)
            try:
                figures["s3_list_floor_boto3"] = child("floor", endpoint, "s3://crawl/day/")
                plan = child("plan", "s3://crawl/day/", str(tmp / "s3-out"), env=env)
            finally:
                server.stop()
            plan["seconds_per_100k"] = round(plan["seconds"] / (args.s3_keys / 100_000), 2)
            figures["plan_s3"] = plan
            print(f"plan of an S3 prefix of {args.s3_keys} keys: {plan}; boto3 listing alone: "
                  f"{figures['s3_list_floor_boto3']}", file=sys.stderr)
        if args.shards:
            out = str(tmp / "finished" / "out")
            (tmp / "finished").mkdir()
            figures["finished_run"] = child("finished", out, str(args.shards))
            figures["status"] = child("cli", "status", out)
            figures["resume"] = child("cli", "run", "--recipe", "quickstart", "--output", out)
            # the resume read every record (the finished run was made without an index) and wrote the index
            figures["status_indexed"] = child("cli", "status", out)
            figures["resume_indexed"] = child("cli", "run", "--recipe", "quickstart", "--output", out)
            print(f"status: {figures['status']}\nresume: {figures['resume']}\nwith the commit index: status "
                  f"{figures['status_indexed']}, resume {figures['resume_indexed']}", file=sys.stderr)
    print(json.dumps(figures))


def _typed(values: list[str]) -> list:
    return [int(v) if v.isdigit() else v for v in values]


if __name__ == "__main__":
    main()
