"""A real multi-node Ray cluster on this machine, started from the command line as an operator would.

    with LocalCluster(node_cpus=[1, 1]) as cluster:
        subprocess.run(["actcurate", "run", "--address", cluster.address, ...])

Each cluster has its own temp dir (so Ray's address file is written there, never where a bare ray.init looks) and a
free GCS port on 127.0.0.1. Every node is a `ray start` of its own; `kill_node(i)` SIGKILLs one node's processes.
`stop()` kills this cluster's processes (found by its temp dir) by pid, never with `ray stop`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    def __init__(self, node_cpus: list[int], start_timeout: float = 120.0):
        self.node_cpus = [int(c) for c in node_cpus]
        self.start_timeout = start_timeout
        # Short: Ray's unix socket paths live under the temp dir and must stay under 108 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="acr-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_ids: list[str] = []
        # Token auth, as Ray 2.5x+ enables it once a token exists in ~/.ray: every node and the driver get the same
        # mode and token through the environment, so the machine's own token file plays no part.
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self._node_pids: list[set[int]] = []

    # -- start -------------------------------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        try:
            for i, cpus in enumerate(self.node_cpus):
                self._start_node(i, cpus)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, index: int, cpus: float) -> None:
        before = self._ray_pids()
        common = ["--num-cpus", str(cpus), "--num-gpus", "0", "--node-ip-address", "127.0.0.1",
                  "--temp-dir", self.temp_dir, "--disable-usage-stats",
                  # node i says who it is: the test tells which node a worker ran on
                  "--resources", f'{{"acr_node_{index}": 1}}']
        if index == 0:
            cmd = [RAY, "start", "--head", "--port", str(self.port), "--include-dashboard", "false", *common]
        else:
            cmd = [RAY, "start", "--address", self.address, *common]
        env = {**os.environ, **self.env, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.start_timeout, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")
        # new processes that name the temp dir, less the workers earlier nodes started meanwhile (their children)
        earlier = set().union(*self._node_pids) if self._node_pids else set()
        self._node_pids.append(self._ray_pids() - before - _descendants(earlier))

    def _ray_pids(self) -> set[int]:
        """Processes whose command line names this cluster's temp dir (raylet, GCS, workers of every node)."""
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if self.temp_dir.encode() in cmdline:
                pids.add(int(entry.name))
        return pids

    def node_processes(self, index: int) -> set[int]:
        """The node's own processes and every live descendant (its workers), found through /proc."""
        roots = {p for p in self._node_pids[index] if Path(f"/proc/{p}").exists()}
        return roots | _descendants(roots)

    def busy_workers(self, index: int) -> list[str]:
        """Titles of the node's Ray workers that run a task or hold an actor now (`ray::MapWorker(...)`, ...)."""
        titles = []
        for pid in self.node_processes(index):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and not title.startswith("ray::IDLE"):
                titles.append(title)
        return titles

    # -- faults ------------------------------------------------------------------------------------------------------
    def kill_node(self, index: int) -> int:
        """SIGKILL every process of node `index` (raylet, its workers, its agents); returns how many."""
        pids = self.node_processes(index)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    # -- stop --------------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Kills this cluster's processes by pid. Never `ray stop`: it stops every Ray on the machine (psutil over all
        processes, no temp-dir filter), other users' clusters included."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._ray_pids()
            pids |= _descendants(pids)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while sig == signal.SIGTERM and time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
