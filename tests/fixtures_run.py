"""Reading a run's output back in tests."""

from __future__ import annotations


def clip_rows(store_root: str) -> list[dict]:
    """Every manifest row of an output, sorted, with timings removed (they differ between runs)."""
    from manifests.io import read_manifests
    from pipeline.commits import committed_shards
    from pipeline.storage import Store

    store = Store(store_root)
    table = read_manifests(store, sorted(committed_shards(store)))
    rows = table.drop_columns(["timings"]).to_pylist() if table is not None else []
    return sorted(rows, key=lambda r: (r["video_uri"], r["clip_index"]))
