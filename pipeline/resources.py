"""The files shipped with the package: recipes (top-level `recipes/`) and prompt templates (`prompts/`).

In the repository they are top-level folders; pyproject.toml installs them as the packages `pipeline.recipes`
and `pipeline.prompts` (package-dir), so a wheel carries them inside `pipeline/`. Everything that reads them goes
through this module.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _folder(package: str, folder: str) -> Path:
    # Code running from a source tree (PYTHONPATH, an editable install, Ray's --working-dir) reads the folder
    # next to it: importing `pipeline.recipes` there may find nothing (the working dir shadows the installed
    # `pipeline`) or another checkout's folder (an editable install's finder made from another tree).
    source = _SOURCE_ROOT / folder
    if (_SOURCE_ROOT / "pyproject.toml").is_file() and (source / "__init__.py").is_file():
        return source
    found = importlib.resources.files(package)  # an installed wheel: site-packages/pipeline/<folder>
    if not isinstance(found, Path):  # a zip import; recipes are opened by path
        raise RuntimeError(f"{package} must be installed as files on disk, not in an archive: {found}")
    return found


def recipes_dir() -> Path:
    return _folder("pipeline.recipes", "recipes")


def prompts_dir() -> Path:
    return _folder("pipeline.prompts", "prompts")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The packaged recipe NAME (quickstart, haic, ...); FileNotFoundError if there is none."""
    if name not in available_recipes():
        raise FileNotFoundError(f"no packaged recipe {name!r}")
    return recipes_dir() / f"{name}.yaml"


def prompt_text(style: str, name: str) -> str:
    """The template prompts/STYLE/NAME (".txt" added when NAME has no suffix)."""
    parts = (style, name if Path(name).suffix else f"{name}.txt")
    if any(not p or p in (".", "..") or "/" in p or "\\" in p for p in parts):
        raise ValueError(f"a prompt is named by a style folder and a file name, got {style!r}, {name!r}")
    return prompts_dir().joinpath(*parts).read_text(encoding="utf-8")
