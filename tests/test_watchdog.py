"""The stall watchdog: a run with no clip moving and no commit for a set time says what it waits for."""

from __future__ import annotations

import time

from pipeline.executor import describe_pending
from pipeline.progress import RunProgress


def test_a_run_without_progress_says_what_is_pending_and_again_later(capsys):
    with RunProgress(["probe", "scenes"], 3, interactive=False, log_every_s=0.2, stall_s=1.0,
                     explain_stall=lambda: "pending Ray demands 1x {'CPU': 1.0}"):
        time.sleep(3.0)
    lines = [x for x in capsys.readouterr().err.splitlines() if "no progress for" in x]
    assert len(lines) >= 2, lines  # it repeats while the run stays stuck
    assert lines[0].startswith("[actcurate] no progress for 1s: pending Ray demands 1x {'CPU': 1.0}")


def test_commits_keep_the_watchdog_quiet_and_a_failing_explanation_still_warns(capsys):
    def broken() -> str:
        raise RuntimeError("GCS gone")

    with RunProgress(["probe"], 100, interactive=False, log_every_s=0.2, stall_s=1.0, explain_stall=broken) as p:
        for _ in range(12):
            p.videos_committed(1)
            time.sleep(0.2)
    assert "no progress" not in capsys.readouterr().err
    with RunProgress(["probe"], 1, interactive=False, log_every_s=0.2, stall_s=0.5, explain_stall=broken):
        time.sleep(1.5)
    assert "could not ask Ray what is pending: GCS gone" in capsys.readouterr().err


def test_describe_pending_names_a_demand_no_node_grants_now(ray_local):
    ray = ray_local
    total = ray.cluster_resources()["CPU"]

    @ray.remote
    def hold(seconds: float) -> None:
        time.sleep(seconds)

    holder = hold.options(num_cpus=0.5).remote(30)
    waiting = hold.options(num_cpus=total).remote(0)  # cannot start while the holder runs
    try:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline and f"{{'CPU': {total}}}" not in text:
            text = describe_pending()
            time.sleep(0.5)
        assert f"{{'CPU': {total}}}" in text, text
        assert "free CPUs per node" in text and "1 node(s) alive" in text
    finally:
        ray.cancel(waiting, force=True)
        ray.cancel(holder, force=True)
