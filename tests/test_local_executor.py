"""The in-process executor of small runs: the same manifests as Ray, chosen by `executor: auto` only where a new local
Ray would start, and a profile that says where the run's time went."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import media
from fixtures_run import clip_rows, engine_recipe
from pipeline.errors import UserError
from pipeline.run import RunOptions, run, use_in_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("local-exec")
    media.make_video(root / "in" / "cuts.mp4", segments=(60, 60), fps=25, seed=1)
    media.make_video(root / "in" / "long shot.mp4", segments=(330,), fps=30, seed=2)  # 11 s: two windows
    media.make_zero_byte(root / "in" / "broken.mp4")
    return root


@pytest.fixture(scope="module")
def ray_run(ray_local, videos):
    out = videos / "ray-out"
    result = run(RunOptions(recipe=engine_recipe(), input=str(videos / "in"), output=str(out), progress=False,
                            shard_size=2, executor="auto"))  # auto: Ray is running in this process, so Ray
    return result, clip_rows(str(out))


def test_local_run_writes_the_manifests_ray_writes_and_profiles_itself(videos, ray_run, tmp_path):
    ray_result, ray_rows = ray_run
    assert ray_result.executor == "ray"
    out = tmp_path / "local-out"
    result = run(RunOptions(recipe=engine_recipe(), input=str(videos / "in"), output=str(out), progress=False,
                            shard_size=2, executor="local"))
    assert result.executor == "local" and not result.shards_pending
    assert clip_rows(str(out)) == ray_rows
    assert {r["status"] for r in ray_rows} == {"accepted", "error"} and len(ray_rows) == 5
    assert result.stage_counts == ray_result.stage_counts
    profile = result.profile
    assert set(profile["stage_setup"]) == {"probe", "scenes", "ocr", "motion"}
    assert all(n == 1 for n, *_ in profile["stage_setup"].values())  # each stage set up once, in this process
    assert profile["ray_start_s"] < 0.01 and profile["stream_s"] > 0 and profile["driver_cpu_s"] > 0
    # Native threads follow the worker's CPUs: every core in process, the stage's planned share (under 2) on Ray.
    stages = ("probe", "scenes", "ocr", "motion")
    assert profile["stage_threads"] == {stage: [os.cpu_count()] for stage in stages}
    assert ray_result.profile["stage_threads"] == {stage: [1] for stage in stages}
    # the Ray run reports its actors' set-up with the CPU each worker process had used when ready
    ray_setup = ray_result.profile["stage_setup"]
    assert {"ocr", "motion"} <= set(ray_setup) and all(cpu > 0 for _, _, cpu in ray_setup.values())


def test_auto_runs_small_runs_in_process_only_where_a_new_local_ray_would_start(ray_local, monkeypatch):
    options = dict(recipe=engine_recipe(), output="unused")
    assert use_in_process(RunOptions(**options, executor="local"), 1000)
    assert not use_in_process(RunOptions(**options, executor="ray"), 1)
    assert not use_in_process(RunOptions(**options), 1)  # Ray already runs in this process
    monkeypatch.setattr(ray_local, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert use_in_process(RunOptions(**options), 3)
    assert not use_in_process(RunOptions(**options), 10_000)  # a big run repays Ray's start-up
    assert not use_in_process(RunOptions(**options, address="10.0.0.1:6379"), 3)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert not use_in_process(RunOptions(**options), 3)
    with pytest.raises(UserError, match="executor 'threads'"):
        use_in_process(RunOptions(**options, executor="threads"), 3)


def test_cli_profile_line(tmp_path):
    """`--profile` prints where the time went as one JSON line; a small run in a fresh process starts no Ray."""
    media.make_video(tmp_path / "in" / "v.mp4", segments=(50,), fps=25)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: tiny\nstages:\n  probe: {}\n  scenes: {}\n")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--recipe", str(recipe), "--input",
                           str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--no-progress", "--profile"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("profile ")]
    profile = json.loads(line.removeprefix("profile "))
    assert profile["executor"] == "local"
    assert set(profile["stage_setup"]) == {"probe", "scenes"} and profile["ray_start_s"] < 0.01
    assert not (tmp_path / "out" / "local_run.json").exists()  # a finished in-process run leaves no mark


CRASHING_RUN = """
import os, sys
sys.path.insert(0, {tests!r})
from fixtures_run import engine_recipe
from pipeline.recipe import Recipe, StageSpec
from pipeline.run import RunOptions, run
from pipeline.stage import Stage, StageParams


class Crash(Stage):
    name = "crash"

    def process(self, clips):
        os.abort()  # what a segfaulting decoder or model does to the process that runs it


base = engine_recipe()
recipe = Recipe(base.name, base.description, base.stages + [StageSpec("crash", Crash, StageParams())], base.source)
run(RunOptions(recipe=recipe, input={input!r}, output={output!r}, progress=False, executor="auto"))
"""


def test_an_in_process_run_that_crashes_goes_on_on_ray_which_isolates_the_crash(ray_local, monkeypatch, tmp_path):
    """`auto` runs a small run's stages in a child process: when native code kills it (here os.abort, as a segfaulting
    decoder would), the same `actcurate run` goes on with the pending shards on Ray, whose workers isolate the video
    (its error row says a worker died on it); and since a video that crashes a process would crash every in-process
    rerun, later auto runs on that OUT take Ray too."""
    import os
    from pathlib import Path

    from pipeline.storage import Store

    media.make_video(tmp_path / "in" / "v.mp4", segments=(50,), fps=25)
    out = tmp_path / "out"
    script = CRASHING_RUN.format(tests=str(Path(__file__).parent), input=str(tmp_path / "in"), output=str(out))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the in-process run died (SIGABRT); running its pending shards again on Ray" in done.stderr
    [row] = clip_rows(str(out))
    assert row["status"] == "error" and "a worker process died while processing this video" in row["error_message"]
    assert (out / "local_run.json").exists()
    monkeypatch.setattr(ray_local, "is_initialized", lambda: False)  # as in a fresh process
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    options = RunOptions(recipe=engine_recipe(), output=str(out))
    assert not use_in_process(options, 1, Store(str(out)))
    assert use_in_process(options, 1, Store(str(tmp_path / "another-out")))
