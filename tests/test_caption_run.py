"""Captions through `actcurate run` as a user runs it (own processes, own Ray): a missing or wrong key stops the run
before any video, a run killed mid-shard and resumed pays for no finished call twice, --redo-errors re-asks only
what failed, and the key reaches no file under OUT and no output line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import media
from fixtures_run import clip_rows
from fixtures_vlm import VlmServer
from httpproxy import ForwardProxy
from manifests.audit import audit
from pipeline.calls import CallLedger

pytestmark = pytest.mark.slow
ACTCURATE = [sys.executable, "-m", "pipeline.cli"]
KEY = "sk-test-e2e-9f8e7d6c5b4a"
EXPERT_B = "OpenGVLab/InternVL3-8B"
RECIPE = """
name: captest
stages:
  probe: {}
  scenes: {min_clip_s: 1.0}
  caption: {style: haic, max_frames: 4, concurrency: 4, backoff_s: 0.05, backoff_max_s: 0.2, batch_size: 2}
  mome: {style: haic, concurrency: 4, backoff_s: 0.05, backoff_max_s: 0.2, batch_size: 2}
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("capvideos")
    for i in range(4):
        media.make_video(root / f"v{i}.mp4", segments=(40, 40), fps=25, seed=i)
    return root


def cli(*args, env, **kwargs):
    return subprocess.run([*ACTCURATE, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, **kwargs)


def test_missing_or_wrong_key_stops_before_any_video(videos, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    with VlmServer(api_key=KEY) as server:
        base = {"ACTCURATE_VLM_BASE_URL": server.url}
        env = {k: v for k, v in os.environ.items() if k != "ACTCURATE_VLM_API_KEY"}
        missing = subprocess.run([*ACTCURATE, "run", "--recipe", str(recipe), "--input", str(videos), "--output",
                                  str(tmp_path / "o1")], capture_output=True, text=True, timeout=120,
                                 env={**env, **base})
        wrong = cli("run", "--recipe", recipe, "--input", videos, "--output", tmp_path / "o2",
                    env={**base, "ACTCURATE_VLM_API_KEY": "sk-wrong-123456789"})
        assert server.stats()["requests"] == 0  # no chat call was made
    assert missing.returncode == 2 and wrong.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: caption: environment variable ACTCURATE_VLM_API_KEY (the key for {server.url}) is not set"]
    assert wrong.stderr.strip().splitlines() == [
        f"error: caption: {server.url} refused the key in ACTCURATE_VLM_API_KEY (HTTP 401)"]
    assert "sk-wrong" not in wrong.stderr + wrong.stdout
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # nothing planned, no video opened


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in (out / "calls").rglob("*.json")}


def settled(out: Path) -> dict[str, bytes]:
    """The call records once Ray's orphaned workers have died (they may finish a call or two after the kill)."""
    before = snapshot(out)
    while True:
        time.sleep(3)
        now = snapshot(out)
        if now.keys() == before.keys():
            return now
        before = now


def test_kill_resume_and_redo_errors_pay_for_no_call_twice(videos, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    # --executor ray: a run this small would run in process, and the check below reads Ray's worker logs too
    common = ["run", "--recipe", str(recipe), "--input", str(videos), "--output", str(out), "--shard-size", "2",
              "--no-progress", "--executor", "ray"]
    outputs = []
    ray_tmp = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    with VlmServer(api_key=KEY, latency=0.3) as server:
        env = {**os.environ, "ACTCURATE_VLM_BASE_URL": server.url, "ACTCURATE_VLM_API_KEY": KEY,
               "RAY_TMPDIR": str(ray_tmp)}
        # 1. killed once a few calls have finished, mid-shard
        proc = subprocess.Popen([*ACTCURATE, *common], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and len(snapshot(out)) < 4:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        outputs.append(proc.communicate()[0])
        first = settled(out)
        assert 4 <= len(first) < 32, "the kill must land part-way through the calls"
        # 2. resumed; expert B's first two answers fail for good (HTTP 400): two error rows
        server.reset()
        server.rules([{"model": EXPERT_B, "fault": "400", "times": 2}])
        resumed = cli(*common, env=env)
        outputs.append(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stderr
        second = snapshot(out)
        asked = server.stats()["requests"]
        assert asked == len(second) - len(first)  # every request is a new call: none finished before was asked again
        assert all(second[p] == data for p, data in first.items())  # and no finished record was rewritten
        rows = clip_rows(str(out))
        errored = [r for r in rows if r["status"] == "error"]
        assert len(rows) == 8 and len(errored) == 2 and {r["error_stage"] for r in errored} == {"mome"}
        assert any(r["caption_cached"] for r in rows)  # captions finished before the kill were not paid again
        # 3. --redo-errors: only the failed clips' missing calls (expert B, then the judge in both orders)
        server.reset()
        server.rules([])
        redo = cli(*common, "--redo-errors", env=env)
        outputs.append(redo.stdout + redo.stderr)
        assert redo.returncode == 0, redo.stderr
        log = server.stats()["log"]
        assert len(log) == 3 * 2 and sorted(e["model"] for e in log).count(EXPERT_B) == 2
        third = snapshot(out)
        # the two failed expert-B records were replaced; the judge calls they had blocked were added
        assert len(third) == len(second) + 2 * 2
        assert all(third[p] == data for p, data in second.items() if b'"outcome": "success"' in data)
        rows = clip_rows(str(out))
        assert [r["status"] for r in rows] == ["accepted"] * 8
        assert {r["mome_branch"] for r in rows} == {"consistent"}
        assert all(r["caption_frame_indices"] and r["caption_outcome"] == "success" for r in rows)
    assert {r["outcome"] for r in CallLedger(str(out)).all()} == {"success"}
    costs = {m["stage"]: m for m in audit(str(out))["model_calls"]}
    assert costs["caption"]["clips"] == 8 and costs["mome"]["prompt_tokens"] > 0 and costs["caption"]["cached_clips"]
    # paid by the runs that wrote the rows: a cached caption cost nothing; mome's calls less its cached ones
    assert costs["caption"]["paid_calls"] == sum(not r["caption_cached"] for r in rows) < 8
    # (at most 8 clips x 3 calls: whether any mome call had finished before the kill depends on the kill's timing)
    assert 0 < costs["mome"]["paid_calls"] == sum(r["mome_calls"] - r["mome_cached_calls"] for r in rows) <= 24
    assert all(costs[s]["output_tokens_per_s"] > 0 for s in ("caption", "mome"))
    # the key is nowhere under OUT and in no output line
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert all(KEY not in text for text in outputs)
    logs = [p for p in ray_tmp.rglob("*")
            if p.is_file() and not p.is_symlink() and p.suffix in (".log", ".out", ".err")]
    assert logs and not [p for p in logs if KEY.encode() in p.read_bytes()]  # nor in Ray's worker and driver logs
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_preflight_and_every_call_take_the_proxy_the_environment_names(videos, tmp_path):
    """A cluster whose nodes reach model endpoints only through a proxy: preflight and the calls use HTTP_PROXY (as
    `models pull` does), send its credentials to the proxy alone, and a refused proxy stops the run at start."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    secret = "proxy-pa55-7b3c"
    # the machine's own proxy settings out (an empty lower-case one would unset ours, as curl reads it)
    base = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    command = [*ACTCURATE, "run", "--recipe", str(recipe), "--input", str(videos), "--skip", "mome", "--output"]
    with VlmServer(api_key=KEY) as server, ForwardProxy(credentials=("ops", secret)) as proxy:
        env = {**base, "ACTCURATE_VLM_BASE_URL": server.url, "ACTCURATE_VLM_API_KEY": KEY,
               "HTTP_PROXY": proxy.url("ops", secret)}
        done = subprocess.run([*command, str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr
        asked = server.stats()["requests"]
        refused = subprocess.run([*command, str(tmp_path / "o2")], capture_output=True, text=True, timeout=300,
                                 env={**env, "HTTP_PROXY": proxy.url("ops", "wrong")})
    rows = clip_rows(str(tmp_path / "out"))
    assert len(rows) == 8 and all(r["status"] == "accepted" and r["caption_text"] for r in rows)
    posts = [target for method, target, _ in proxy.requests if method == "POST"]
    assert asked == len(posts) == 8  # every call went through the proxy, one per clip
    assert all(t == f"{server.url}/chat/completions" for t in posts)
    assert (proxy.requests[0][:2] == ("GET", f"{server.url}/models")  # preflight first
            and {auth for _, _, auth in proxy.requests[:9]} == {proxy.expected})
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: caption: proxy 127.0.0.1:{proxy.port} refused the credentials in its URL (HTTP 407)"]
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert secret.encode() not in written and secret not in done.stdout + done.stderr + refused.stderr
