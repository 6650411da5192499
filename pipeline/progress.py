"""Progress per stage: rich bars on a terminal, plain log lines otherwise.

Stage workers report counts to a small named Ray actor; the driver polls it from a background thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StageCounts:
    """Clips in and out of each stage, the nodes its workers ran on and its workers' set-up times. Stage workers
    report to it: as a named Ray actor (start_progress_actor), or as a plain object where every stage runs in the
    driver (the in-process executor of small runs)."""

    def __init__(self):
        self.counts: dict[str, list[int]] = {}
        self.nodes: dict[str, set[str]] = {}  # stage -> Ray node ids its workers ran on
        # stage -> [workers set up, seconds their setup() took, CPU seconds each worker process had used when ready
        # (interpreter start, imports, setup: the fixed cost a Ray worker pays before its first clip)]
        self.setups: dict[str, list[float]] = {}
        self.threads: dict[str, set[int]] = {}  # stage -> the native threads its workers ran (Stage.worker_threads)

    def add(self, stage: str, rows_in: int, rows_out: int, node: str | None = None, threads: int | None = None
            ) -> None:
        c = self.counts.setdefault(stage, [0, 0])
        c[0] += rows_in
        c[1] += rows_out
        if node:
            self.nodes.setdefault(stage, set()).add(node)
        if threads is not None:
            self.threads.setdefault(stage, set()).add(threads)

    def set_up(self, stage: str, seconds: float, ready_cpu_s: float = 0.0) -> None:
        s = self.setups.setdefault(stage, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += seconds
        s[2] += ready_cpu_s

    # list(items()) copies in one step under the GIL: in process, the progress thread reads while stages add
    def snapshot(self) -> dict[str, list[int]]:
        return {stage: list(c) for stage, c in list(self.counts.items())}

    def stage_setups(self) -> dict[str, list[float]]:
        return {stage: list(s) for stage, s in list(self.setups.items())}

    def stage_nodes(self) -> dict[str, list[str]]:
        return {stage: sorted(ids) for stage, ids in self.nodes.items()}

    def stage_threads(self) -> dict[str, list[int]]:
        return {stage: sorted(counts) for stage, counts in list(self.threads.items())}


def start_progress_actor(namespace: str, name: str):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the head node (where a cluster's driver runs): a worker node lost mid-run must not take the counts with it.
    heads = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]]
    node = heads[0] if heads else ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0)(StageCounts).options(
        name=name, namespace=namespace, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote()


# A run with no clip in or out of any stage and no commit for this long says what it waits for (0: never).
STALL_S = float(os.environ.get("ACTCURATE_STALL_S", "300"))


class RunProgress:
    """Shows clips in and out of every stage and videos committed, with rate and ETA."""

    def __init__(self, stage_names: list[str], total_videos: int, actor=None, console: Console | None = None,
                 interactive: bool | None = None, log_every_s: float = 10.0, video_level_stages: int = 0,
                 stall_s: float = STALL_S, explain_stall: Callable[[], str] | None = None):
        self.stage_names, self.total_videos, self.actor = stage_names, total_videos, actor
        # The first stages (up to the one that splits videos into clips) see one row per video: their total is known.
        self.video_level_stages = video_level_stages
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal if interactive is None else interactive
        self.videos_done = 0
        self.shards_done = 0
        self.counts: dict[str, list[int]] = {}  # stage -> [clips in, clips out], final after the run
        self.log_every_s = log_every_s
        self.stall_s = stall_s
        self.explain_stall = explain_stall or (lambda: "")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._started = time.monotonic()

    def __enter__(self) -> RunProgress:
        if self.interactive:
            self._progress = Progress(
                TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._progress.start()
            self._tasks["videos"] = self._progress.add_task("committed", total=self.total_videos, rate="")
            for k, name in enumerate(self.stage_names):
                total = self.total_videos if k < self.video_level_stages else None
                self._tasks[name] = self._progress.add_task(name, total=total, rate="")
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        counts = self._refresh()
        self.counts = {name: counts.get(name, [0, 0]) for name in self.stage_names}  # a stage no clip reached: 0
        if self._progress:
            self._progress.stop()
        else:
            self._log_line(self.counts)

    def note(self, message: str) -> None:
        """A line for the user that the bars or log lines alone would not tell."""
        if self._progress:
            self._progress.console.print(message)
        else:
            print(f"[actcurate] {message}", file=sys.stderr, flush=True)

    def videos_committed(self, n: int) -> None:
        self.videos_done += n
        self.shards_done += 1

    def _snapshot(self) -> dict[str, list[int]]:
        if self.actor is None:
            return {}
        if isinstance(self.actor, StageCounts):
            return self.actor.snapshot()
        import ray

        try:
            return ray.get(self.actor.snapshot.remote(), timeout=5)
        except Exception:  # progress is best effort; never fail a run over it
            return {}

    def _refresh(self) -> dict[str, list[int]]:
        counts = self._snapshot()
        if self._progress:
            elapsed = max(time.monotonic() - self._started, 1e-6)
            self._progress.update(self._tasks["videos"], completed=self.videos_done,
                                  rate=f"{self.videos_done / elapsed:.2f} videos/s")
            for name in self.stage_names:
                rows_in, rows_out = counts.get(name, [0, 0])
                self._progress.update(self._tasks[name], completed=rows_in,
                                      rate=f"out {rows_out}  {rows_in / elapsed:.1f}/s")
        return counts

    def _log_line(self, counts: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
        counts = self._snapshot() if counts is None else counts
        stages = "  ".join(f"{n} {counts.get(n, [0, 0])[0]}>{counts.get(n, [0, 0])[1]}" for n in self.stage_names)
        elapsed = time.monotonic() - self._started
        print(f"[actcurate] {elapsed:7.1f}s  videos committed {self.videos_done}/{self.total_videos}  "
              f"shards {self.shards_done}  {stages}", file=sys.stderr, flush=True)
        return counts

    def _poll(self) -> None:
        last_log = last_change = time.monotonic()
        last_seen = None
        while not self._stop.wait(0.5):
            now = time.monotonic()
            counts = None
            if self._progress:
                counts = self._refresh()
            elif now - last_log >= min(self.log_every_s, self.stall_s or self.log_every_s):
                counts = self._log_line()
                last_log = now
            if counts is not None and (self.videos_done, counts) != last_seen:
                last_seen, last_change = (self.videos_done, counts), now
            if self.stall_s and now - last_change >= self.stall_s:
                self._warn_stalled(now - last_change)
                last_change = now  # the next warning after another stall_s without progress

    def _warn_stalled(self, seconds: float) -> None:
        """The watchdog: a run that waits for ever must say on what (Ray's pending demands, free CPUs per node)."""
        try:
            detail = self.explain_stall()
        except Exception as exc:  # the explanation is best effort; the warning itself must come out
            detail = f"(could not ask Ray what is pending: {exc})"
        self.note(f"no progress for {seconds:.0f}s: {detail}".rstrip(": "))
