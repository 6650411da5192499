"""A real multi-node Ray cluster on this machine (`ray start --head` plus a second `ray start --address`), driven by
`actcurate run --address` in its own process, as an operator runs it: work lands on both nodes, a cluster too small
for its nodes is planned to fit, one that cannot run is refused in one line, a lost node ends in a clean resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media
from fixtures_run import clip_rows
from raycluster import LocalCluster, free_port

pytestmark = pytest.mark.slow
ACTCURATE = [sys.executable, "-m", "pipeline.cli"]
REPO = Path(__file__).resolve().parents[1]


def actcurate(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*ACTCURATE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=_env(env), cwd=REPO)


def _env(extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each test names its cluster itself
    return {**env, **(extra or {})}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster-videos")
    for i in range(12):
        media.make_video(root / f"v{i:02d}.mp4", segments=(75, 60), fps=25, seed=i)
    return root


COMMON = ["--recipe", "quickstart", "--shard-size", "1", "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(videos, tmp_path_factory) -> Path:
    """The same run on an embedded local Ray, uninterrupted: what every cluster run must equal."""
    out = tmp_path_factory.mktemp("cluster-reference") / "out"
    run = actcurate("run", *COMMON, "--input", videos, "--output", out)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def node_ids(cluster: LocalCluster) -> dict[str, int]:
    """Ray node id -> index of the `ray start` that made it (each node carries a resource acr_node_<index>)."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR');"
            "print(json.dumps({n['NodeID']: [k for k in n['Resources'] if k.startswith('acr_node_')]"
            " for n in ray.nodes() if n['Alive']}))" % cluster.address)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_env(cluster.env))
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {node: int(names[0].rsplit("_", 1)[1]) for node, names in found.items() if names}


def test_two_nodes_of_one_cpu_run_the_quickstart_on_both_nodes(videos, uninterrupted, tmp_path):
    """The reported hang: two 1-CPU nodes, quickstart stuck after probe on a {'CPU': 1.0} demand no node could
    grant (the actors' fractional shares left half a CPU free on each node)."""
    with LocalCluster([1, 1]) as cluster:
        run = actcurate("run", *COMMON, "--input", videos, "--output", tmp_path / "out", "--address", cluster.address,
                        env={**cluster.env, "ACTCURATE_STALL_S": "60"}, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "12 of 12 shards" in run.stdout
        assert "no progress for" not in run.stderr
        line = next(x for x in run.stdout.splitlines() if x.startswith("workers ran on"))
        reported = set(re.findall(r"\b[0-9a-f]{8}\b", line))
        nodes = node_ids(cluster)
        assert {n[:8] for n in nodes} == reported, (line, nodes)  # both nodes, and only this cluster's
    assert clip_rows(str(tmp_path / "out")) == clip_rows(str(uninterrupted))  # same rows wherever it ran


def test_a_cluster_that_cannot_run_the_recipe_is_refused_in_one_line(videos, tmp_path):
    with LocalCluster([0]) as cluster:
        started = time.monotonic()
        run = actcurate("run", "--recipe", "quickstart", "--input", videos, "--output", tmp_path / "o",
                        "--address", cluster.address, env=cluster.env, timeout=120)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert "has no CPU on any of its 1 node(s)" in run.stderr
        assert time.monotonic() - started < 90


def test_an_unreachable_address_fails_fast_in_one_line(videos, tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    for how in (["--address", dead], []):
        started = time.monotonic()
        run = actcurate("run", "--recipe", "quickstart", "--input", videos, "--output", tmp_path / "o", *how,
                        env={"ACTCURATE_RAY_CONNECT_TIMEOUT_S": "5", **({} if how else {"RAY_ADDRESS": dead})},
                        timeout=120)
        assert run.returncode == 2, run.stderr[-3000:]
        assert f"no Ray cluster answers at {dead}" in run.stderr and "Traceback" not in run.stderr
        assert time.monotonic() - started < 60


def test_sigkill_of_the_second_node_mid_run_then_resume_equals_an_uninterrupted_run(videos, uninterrupted, tmp_path):
    common = [*COMMON, "--input", videos]

    out = tmp_path / "killed"
    with LocalCluster([1, 1]) as cluster:
        env = {**cluster.env, "ACTCURATE_STALL_S": "20"}
        log = open(tmp_path / "killed.log", "w+")
        proc = subprocess.Popen([*ACTCURATE, "run", *map(str, common), "--output", str(out),
                                 "--address", cluster.address], stdout=log, stderr=subprocess.STDOUT,
                                env=_env(env), cwd=REPO, start_new_session=True)
        try:
            commits = out / "commits"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                if any("Map" in t for t in cluster.busy_workers(1)):  # stage work runs on the second node
                    break
                time.sleep(0.05)
            assert cluster.busy_workers(1), "no stage work reached the second node"
            assert cluster.kill_node(1) > 0
            done_at_kill = len(list(commits.glob("*.json")))
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        text = log.read()
        assert done_at_kill < 12, "the kill must land part-way through the run"
        # Either Ray's retries and the engine's per-video retry finished it, or it ended with shards pending and
        # said so; never a hang, never a traceback.
        assert proc.returncode in (0, 1), text[-3000:]
        if proc.returncode == 1:
            assert "shard(s) did not complete" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        # the resume runs on what is left of the cluster: the head alone, 1 CPU
        resumed = actcurate("run", *common, "--output", out, "--address", cluster.address, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert clip_rows(str(out)) == clip_rows(str(uninterrupted))  # no clip lost or doubled
