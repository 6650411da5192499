"""Running a piece of work in a forked child process, so that a crash in native code (a segfaulting decoder or
model) ends the child, not the caller, which learns what happened."""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class ChildOutcome:
    result: Any = None  # what the work returned (None when it died)
    died: str | None = None  # how the child ended without an answer: "SIGSEGV", "exit status 3"


def in_child_process(work: Callable[[], Any]) -> ChildOutcome:
    """`work()` in a forked child: its return value comes back pickled, an exception it raises is raised here, and
    a child that dies without answering (a signal, os._exit) is reported in `died`. The child shares nothing with
    this process afterwards; what it wrote to files (committed shards) stays."""
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe and leave without running this process's exit handlers
        os.close(read_end)
        status = 0
        try:
            _die_with(parent)
            payload = pickle.dumps(("returned", work()))
        except BaseException as exc:  # noqa: BLE001 - every exception goes back to the caller to be raised there
            try:
                payload = pickle.dumps(("raised", exc))
            except Exception:  # an exception that does not pickle: its text at least
                payload = pickle.dumps(("raised", RuntimeError(f"{type(exc).__name__}: {exc}")))
            status = 1
        try:
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            payload = pipe.read()  # until the child's end closes: it answered, or it died
    finally:
        _, status = os.waitpid(pid, 0)
    if payload:
        kind, value = pickle.loads(payload)
        if kind == "raised":
            raise value
        return ChildOutcome(result=value)
    if os.WIFSIGNALED(status):
        return ChildOutcome(died=signal.Signals(os.WTERMSIG(status)).name)
    return ChildOutcome(died=f"exit status {os.waitstatus_to_exitcode(status)}")


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Linux: this child gets SIGKILL when its parent dies (a `kill -9` of the driver alone must not leave the
    child committing shards beside the next run)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
