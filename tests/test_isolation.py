"""`in_child_process`: work in a forked child whose answer, exception or death comes back to the caller."""

from __future__ import annotations

import ctypes
import faulthandler
import os
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.isolation import in_child_process


def test_the_childs_answer_comes_back_and_its_side_effects_stay_its_own():
    parent_pid = os.getpid()
    outcome = in_child_process(lambda: {"pid": os.getpid(), "rows": list(range(100_000))})  # over a pipe's buffer
    assert outcome.died is None and outcome.result["rows"][-1] == 99_999
    assert outcome.result["pid"] != parent_pid


def test_an_exception_in_the_child_is_raised_in_the_caller():
    def refuse():
        raise UserError("no such recipe key: motion.min_flw")

    with pytest.raises(UserError, match="no such recipe key"):
        in_child_process(refuse)


def segfault() -> None:
    faulthandler.disable()  # pytest's handler would print a "Fatal Python error" traceback into the test log
    ctypes.string_at(0)  # a real segfault: reads address 0


def test_a_child_killed_by_native_code_is_reported_not_fatal():
    outcome = in_child_process(segfault)
    assert outcome.result is None and outcome.died == "SIGSEGV"
    assert in_child_process(lambda: os._exit(3)).died == "exit status 3"


def test_the_child_dies_with_its_parent(tmp_path):
    """A `kill -9` of the driver alone: its child must not go on committing shards beside the next run."""
    import subprocess
    import sys
    import time

    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "from pipeline.isolation import in_child_process\n"
              "import os\n"
              f"in_child_process(lambda: (open({str(tmp_path / 'child')!r}, 'w').write(str(os.getpid())), "
              "time.sleep(60)))\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    pid_file = tmp_path / "child"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the child outlived its killed parent")
