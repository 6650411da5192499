import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.inputs import list_inputs
from pipeline.plan import (load_or_create_plan, make_plan, read_plan, read_plan_attributes, read_plan_summary,
                           write_plan)
from pipeline.storage import Store


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for rel in ["a/one.mp4", "a/deep/two.MKV", "a/deep/notes.txt", "b ü.webm", "a/cover.jpg"]:
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_directory_is_recursive_and_filters_extensions(tree):
    uris = list_inputs(str(tree))
    assert [u.removeprefix(str(tree)) for u in uris] == ["/a/deep/two.MKV", "/a/one.mp4", "/b ü.webm"]


def test_glob(tree):
    assert [u.rsplit("/", 1)[1] for u in list_inputs(str(tree / "a" / "**" / "*.mp4"))] == ["one.mp4"]


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_list_files_dedupe_and_resolve_relative_entries(tree, fmt):
    entries = ["a/one.mp4", str(tree / "a/one.mp4"), "missing.mp4", "s3://bucket/x.mp4"]
    path = tree / f"list.{fmt}"
    if fmt == "txt":
        path.write_text("# comment\n" + "\n".join(entries) + "\n\n")
    elif fmt == "csv":
        path.write_text("uri,label\n" + "".join(f"{e},x\n" for e in entries))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"uri": e}) + "\n" for e in entries))
    else:
        pq.write_table(pa.table({"uri": entries}), path)
    uris = list_inputs(str(path))
    # The same file named twice (relative and absolute) is planned once; a missing entry is kept for its error row.
    assert uris == sorted([str(tree / "a/one.mp4"), str(tree / "missing.mp4"), "s3://bucket/x.mp4"])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_list_licence_and_source_columns_reach_the_plan(tree, fmt, tmp_path):
    rows = [{"uri": "a/one.mp4", "license": "CC BY 4.0", "source": "Pexels"}, {"uri": "b ü.webm", "license": ""}]
    path = tree / f"list.{fmt}"
    if fmt == "csv":
        path.write_text("uri,license,source\na/one.mp4,CC BY 4.0,Pexels\nb ü.webm,,\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    store = Store(str(tmp_path / f"out-{fmt}"))
    load_or_create_plan(store, str(path), 8)
    videos = {v.uri.rsplit("/", 1)[1]: (v.license, v.source) for v in read_plan(store).videos}
    assert videos == {"one.mp4": ("CC BY 4.0", "Pexels"), "b ü.webm": (None, None)}  # blank means not given
    # what export reads of them: only the videos that were given any
    assert {uri.rsplit("/", 1)[1]: v for uri, v in read_plan_attributes(store).items()} == {
        "one.mp4": {"license": "CC BY 4.0", "source": "Pexels"}}
    txt = tree / "list.txt"
    txt.write_text("a/one.mp4\n")
    assert [(v.license, v.source) for v in make_plan(str(txt), 8).videos] == [(None, None)]


def test_input_errors_are_clear(tree):
    with pytest.raises(UserError, match="input not found"):
        list_inputs(str(tree / "nope"))
    (tree / "empty").mkdir()
    with pytest.raises(UserError, match="no videos found"):
        list_inputs(str(tree / "empty"))
    bad = tree / "bad.csv"
    bad.write_text("path\nx.mp4\n")
    with pytest.raises(UserError, match="no 'uri' column"):
        list_inputs(str(bad))


def test_plan_is_deterministic_and_written_once(tree, tmp_path):
    p1 = make_plan(str(tree), 2)
    p2 = make_plan(str(tree), 2)
    assert p1.videos == p2.videos
    assert [v.shard_id for v in p1.videos] == ["shard-000000", "shard-000000", "shard-000001"]
    store = Store(str(tmp_path / "out"))
    plan, created = load_or_create_plan(store, str(tree), 2)
    assert created and read_plan(store).videos == plan.videos
    (tree / "a" / "new.mp4").write_bytes(b"x")  # a later file does not change the written plan
    again, created = load_or_create_plan(store, str(tree), None)
    assert not created and again.videos == plan.videos
    with pytest.raises(UserError, match="shard-size"):
        load_or_create_plan(store, None, 5)
    with pytest.raises(UserError, match="planned from input"):
        load_or_create_plan(store, str(tree / "a"), None)


def test_a_listed_uri_keeps_the_attributes_of_its_first_entry(tree):
    path = tree / "dupes.csv"
    path.write_text("uri,license,source\na/one.mp4,,\na/one.mp4,CC0,Pexels\nb.mp4,CC BY,\nb.mp4,CC0,\n")
    videos = {v.uri.rsplit("/", 1)[1]: (v.license, v.source) for v in make_plan(str(path), 8).videos}
    assert videos == {"one.mp4": (None, None), "b.mp4": ("CC BY", None)}


def test_a_large_plan_takes_bounded_memory_per_video(tmp_path):
    """Planning 100,000 listed URIs (a million: bench/scale.py) holds each video in 261 bytes and peaks at 299: no
    mapping per URI for lists without attributes, one shard ID string per shard, slotted records. Before, 369 held
    and 592 at the peak."""
    import gc
    import tracemalloc

    listing = tmp_path / "uris.txt"
    count = 100_000
    listing.write_text("".join(f"s3://crawl/day/{i % 97:02d}/v{i:07d}.mp4\n" for i in range(count)))
    gc.collect()
    tracemalloc.start()
    try:
        plan = make_plan(str(listing), 64)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(plan.videos) == count and plan.videos[-1].shard_id == f"shard-{(count - 1) // 64:06d}"
    assert held / count < 300, f"{held / count:.0f} bytes a planned video"
    assert peak / count < 400, f"{peak / count:.0f} bytes a video at the peak"


@pytest.mark.parametrize("videos, shard_size", [(10, 3), (9, 3), (1, 64)])
def test_the_plan_summary_gives_the_plans_counts_and_shards_without_its_videos(tmp_path, videos, shard_size):
    """status, the audit and export take these from plan.json alone: the shards must be the ones the plan made."""
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"/data/v{i}.mp4\n" for i in range(videos)))
    store = Store(str(tmp_path / "out"))
    write_plan(store, make_plan(str(listing), shard_size))
    summary, plan = read_plan_summary(store), read_plan(store)
    assert summary.videos == len(plan.videos) == videos and summary.shard_size == shard_size
    assert summary.shard_ids == plan.shard_ids and summary.shards == -(-videos // shard_size)
    assert read_plan_attributes(store) == {}  # a plain list gives none
    assert read_plan_summary(Store(str(tmp_path / "none"))) is None
