"""Reading a run's output back in tests."""

from __future__ import annotations

import yaml

from pipeline.recipe import build_recipe, resolve_recipe_path


def clip_rows(store_root: str) -> list[dict]:
    """Every manifest row of an output, sorted, with timings removed (they differ between runs)."""
    from manifests.io import read_manifests
    from pipeline.commits import committed_shards
    from pipeline.storage import Store

    store = Store(store_root)
    table = read_manifests(store, sorted(committed_shards(store)))
    rows = table.drop_columns(["timings"]).to_pylist() if table is not None else []
    return sorted(rows, key=lambda r: (r["video_uri"], r["clip_index"]))


def engine_recipe(overrides=()):
    """The quickstart recipe without its human check (pose): these tests are about the engine, on generated videos
    without people, and expect their scenes accepted."""
    path = resolve_recipe_path("quickstart")
    doc = yaml.safe_load(path.read_text())
    doc["stages"].pop("pose")
    doc["stages"]["motion"].pop("min_person_flow", None)  # measured on the people, whom pose finds
    return build_recipe(doc, source=str(path), overrides=list(overrides))
