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


def finished_run(output: str, listing_dir, shards: int):
    """A finished run of `shards` one-video shards (each one error row), committed through the engine's commit path
    (no commit index yet); returns its Store."""
    from pipeline.clip import Clip

    def clips(video) -> list:
        clip = Clip(video_id=video.video_id, video_uri=video.uri, shard_id=video.shard_id)
        clip.fail("probe", RuntimeError("no such file"))
        return [clip]

    return committed_run(output, listing_dir, shards, 1, "quickstart", clips)


def accepted_run(output: str, listing_dir, videos: int, shard_size: int, clips_per_video: int, columns):
    """A finished haic run whose clips are all accepted: `clips_per_video` 2 s clips a video, each with the stage
    columns `columns(video_index, clip_index)` returns; returns its Store."""
    from pipeline.clip import Clip

    def clips(video) -> list:
        return [Clip(video_id=video.video_id, video_uri=video.uri, shard_id=video.shard_id, clip_index=k,
                     start_s=2.0 * k, end_s=2.0 * k + 2, columns=columns(video.order, k))
                for k in range(clips_per_video)]

    return committed_run(output, listing_dir, videos, shard_size, "haic", clips)


def committed_run(output: str, listing_dir, videos: int, shard_size: int, recipe_name: str, clips_of):
    """A finished run of `videos` videos (/data/vNNNNNNN.mp4) whose rows are `clips_of(planned_video)`, each shard
    committed through the engine's commit path (no commit index yet); returns its Store."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from manifests.schema import clips_to_table, manifest_schema
    from pipeline.commits import commit_shard
    from pipeline.plan import make_plan, write_plan
    from pipeline.recipe import load_recipe
    from pipeline.run import RunOptions, _record_run
    from pipeline.storage import Store

    listing = Path(listing_dir) / "finished.txt"
    listing.write_text("".join(f"/data/v{i:07d}.mp4\n" for i in range(videos)))
    store = Store(output)
    plan = make_plan(str(listing), shard_size)
    write_plan(store, plan)
    recipe = load_recipe(recipe_name)
    _record_run(store, RunOptions(recipe=recipe, output=output))
    stage_columns = {c: t for spec in recipe.stages for c, t in spec.cls.columns.items()}
    schema = manifest_schema(recipe.stage_names(), stage_columns, recipe.split_stage)

    def commit(shard: tuple[str, list]) -> None:
        shard_id, planned = shard
        commit_shard(store, shard_id, clips_to_table([c for v in planned for c in clips_of(v)], schema), recipe.hash)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(commit, plan.videos_by_shard().items()))
    return store
