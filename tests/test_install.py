"""The package as Ray workers and users get it: a wheel in a fresh virtual environment, no source tree in sight.

Installing the dependencies from PyPI takes minutes, so the fresh environment sees them through a .pth file that
names this interpreter's site-packages. Python adds a directory listed in a .pth to sys.path but does not process
the .pth files inside it, so the editable install of this checkout (a .pth plus a finder there) stays off; the
tests check that it does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import media
from fixtures_run import clip_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
NESTED_PROMPT = "Describe {person} in one sentence.\n"
VERSION = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)

# Where the fresh environment looks: what it imported, and whether any editable-install finder came along.
PROBE = """
import importlib.resources, json, sys
import pipeline
from pipeline import resources
from pipeline.recipe import load_recipe, resolve_recipe_path
load_recipe("quickstart")
print(json.dumps({
    "pipeline": pipeline.__file__,
    "recipe": str(resolve_recipe_path("quickstart")),
    "recipes_package": str(importlib.resources.files("pipeline.recipes")),
    "prompts_readme": (resources.prompts_dir() / "README.md").is_file(),
    "nested_prompt": resources.prompt_text("teststyle", "probe"),
    "editable_finders": [m for m in sys.modules if m.startswith("__editable__")],
}))
"""


def _clean_env() -> dict[str, str]:
    """This session's environment without its PYTHONPATH (the tests run with the checkout on it)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _check(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=_clean_env(), **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


def _source_copy(dest: Path) -> Path:
    """The checkout without VCS data, tests, caches or outputs: an in-tree build would write build/ and
    *.egg-info into it (stale files from an old build/ can end up in the wheel)."""
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".*", "tests", "bench", "build", "dist", "*.egg-info",
                                                               "__pycache__", "*_out", "out"))
    # prompts get one folder per style: a nested template must reach the install too
    (dest / "prompts" / "teststyle").mkdir(exist_ok=True)
    (dest / "prompts" / "teststyle" / "probe.txt").write_text(NESTED_PROMPT)
    return dest


def _fresh_venv(root: Path) -> tuple[Path, Path]:
    """A venv of the same base interpreter, without pip, whose .pth shows it this session's dependencies."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(root)],
                   check=True)
    python = root / "bin" / "python"
    purelib = Path(_check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "_actcurate_test_deps.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    return python, purelib


def _pip_install(python: Path, *args) -> None:
    # pip comes from this session's site-packages (through the .pth) but installs into the fresh venv, whose
    # python then heads the console script; --ignore-installed: the editable actcurate there is neither seen
    # as satisfying the requirement nor touched.
    _check([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
            "--ignore-installed", "--disable-pip-version-check", *args])


def _probe(python: Path, cwd: Path) -> dict:
    return json.loads(_check([python, "-c", PROBE], cwd=cwd).stdout)


def test_wheel_in_a_fresh_venv_runs_the_quickstart_recipe(tmp_path):
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    _check([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
            "--disable-pip-version-check", "-w", dist, src])
    wheel = next(dist.glob("actcurate-*.whl"))
    shutil.rmtree(src)  # nothing left to import from but the wheel's files

    venv = tmp_path / "venv"
    python, purelib = _fresh_venv(venv)
    _pip_install(python, wheel)
    work = tmp_path / "work"
    work.mkdir()

    found = _probe(python, work)
    for key in ("pipeline", "recipe", "recipes_package"):
        assert Path(found[key]).is_relative_to(purelib), found
        assert not Path(found[key]).is_relative_to(REPO), found
    assert found["prompts_readme"] and found["nested_prompt"] == NESTED_PROMPT
    assert found["editable_finders"] == []

    script = venv / "bin" / "actcurate"
    assert script.read_text().splitlines()[0] == f"#!{python}"  # the wheel's console script, run by the venv
    version = _check([script, "--version"], cwd=work)
    assert VERSION in version.stdout

    video = media.make_video(work / "in" / "walk.mp4", segments=(50, 40), fps=25)
    out = work / "out"
    run = _check([script, "run", "--recipe", "quickstart", "--input", video.parent, "--output", out,
                  "--no-progress"], cwd=work, timeout=300)
    assert "1 of 1 shards" in run.stdout, run.stdout
    assert list((out / "commits").glob("*.json"))
    rows = clip_rows(str(out))
    # the 2 s scene has no person for the human check (pose, BlazePose from the model cache); the 1.6 s scene is
    # under the 2 s minimum
    assert [(r["reject_stage"], r["reject_rule"]) for r in rows] == [("pose", "min_persons"),
                                                                    ("scenes", "min_clip_length")], rows


def test_editable_install_reads_the_top_level_folders(tmp_path):
    """`pip install -e .` (the Makefile's) maps pipeline.recipes and pipeline.prompts onto recipes/ and prompts/."""
    src = _source_copy(tmp_path / "src")
    python, _ = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "-e", src)
    work = tmp_path / "work"
    work.mkdir()

    found = _probe(python, work)
    assert Path(found["pipeline"]) == src / "pipeline" / "__init__.py"
    assert Path(found["recipes_package"]) == src / "recipes"
    assert Path(found["recipe"]) == src / "recipes" / "quickstart.yaml"
    assert found["prompts_readme"] and found["nested_prompt"] == NESTED_PROMPT
    version = _check([tmp_path / "venv" / "bin" / "actcurate", "--version"], cwd=work)
    assert VERSION in version.stdout
