"""Review app latency on a big run: one million manifest rows over 1,000 shards (generated with pyarrow directly).

Starts the real server on 127.0.0.1 and times, over HTTP, filtered and sorted pages (first pages of new filters and
the keyset pages after them) and histograms of a filtered set. Prints the figures; the last line is one JSON object
with p50_ms and p95_ms over all timed requests (goal: p95 < 300 ms on 2 cores).

    python bench/review_paging.py [--rows 1000000] [--shards 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from manifests.schema import CORE_COLUMNS  # noqa: E402

WORDS = np.array("a person walks runs jumps waves cooks cuts bread opens door throws ball rides bike dances in "
                 "the kitchen street park gym slowly quickly".split())


def make_shard(rng: np.random.Generator, shard: int, rows: int) -> pa.Table:
    n = rows
    vid = np.array([f"{shard:06d}{v:04d}" for v in rng.integers(0, max(1, n // 4), n)])
    starts = np.round(rng.uniform(0, 60, n), 2)
    status = rng.choice(["accepted", "rejected", "error"], n, p=[0.55, 0.4, 0.05])
    rules = rng.choice(["min_flow", "max_text_boxes", "min_aesthetic", "min_persons"], n)
    rejected = status == "rejected"
    err = status == "error"
    motion = rng.gamma(2, 0.01, n)
    aesthetic = rng.normal(5, 0.8, n)
    caption = [" ".join(rng.choice(WORDS, 8)) for _ in range(n)]
    cols = {
        "clip_id": [f"{v}-{i:09d}" for i, v in enumerate(vid)],
        "video_id": vid, "video_uri": [f"/data/src{shard % 7}/{v}.mp4" for v in vid],
        "shard_id": np.full(n, f"shard-{shard:06d}"), "clip_index": np.arange(n, dtype=np.int32),
        "start_s": starts, "end_s": starts + rng.uniform(2, 10, n), "status": status,
        "reject_stage": np.where(rejected, "filters", None), "reject_rule": np.where(rejected, rules, None),
        "reject_value": np.where(rejected, motion, np.nan), "reject_threshold": np.where(rejected, 0.01, np.nan),
        "error_stage": np.where(err, "probe", None), "error_type": np.where(err, "VideoOpenError", None),
        "error_message": np.where(err, "not a readable video container", None),
    }
    table = pa.table({k: pa.array(v, CORE_COLUMNS[k], from_pandas=True) for k, v in cols.items()})
    extra = {
        "pose_single_person_ratio": pa.array(rng.uniform(0, 1, n)),
        "ocr_text_boxes": pa.array(rng.poisson(0.7, n).astype(np.int32)),
        "aesthetic_score": pa.array(aesthetic),
        "motion_score": pa.array(motion),
        "caption_text": pa.array(caption),
        "pose_keyframe_times": pa.array([[float(s), float(s) + 1] for s in starts[:n]], pa.list_(pa.float64())),
    }
    for k, v in extra.items():
        table = table.append_column(k, v)
    return table


def generate(out: Path, rows: int, shards: int) -> None:
    (out / "manifests").mkdir(parents=True)
    (out / "commits").mkdir()
    (out / "plan").mkdir()
    rng = np.random.default_rng(0)
    per = rows // shards
    base = make_shard(rng, 0, per)
    for s in range(shards):
        # one generated shard reused with new ids and shifted scores: generation stays a few seconds per 100k rows
        t = base.set_column(0, "clip_id", pa.array([f"s{s:06d}-{i:07d}" for i in range(per)]))
        t = t.set_column(t.schema.get_field_index("shard_id"), "shard_id", pa.array([f"shard-{s:06d}"] * per))
        # each shard its own videos, as a plan makes them (the audit counts a video within its shard)
        videos = [f"{s:06d}{v[6:]}" for v in base.column("video_id").to_pylist()]
        t = t.set_column(t.schema.get_field_index("video_id"), "video_id", pa.array(videos))
        t = t.set_column(t.schema.get_field_index("video_uri"), "video_uri",
                         pa.array([f"/data/src{s % 7}/{v}.mp4" for v in videos]))
        shift = rng.normal(0, 0.005)
        t = t.set_column(t.schema.get_field_index("motion_score"), "motion_score",
                         pa.array(np.abs(base.column("motion_score").to_numpy() + shift)))
        name = f"shard-{s:06d}"
        path = out / "manifests" / f"{name}.parquet"
        pq.write_table(t, path, compression="zstd")
        data = path.read_bytes()
        record = {"shard_id": name, "manifest": f"manifests/{name}.parquet", "manifest_bytes": len(data),
                  "manifest_sha256": hashlib.sha256(data).hexdigest(), "rows": per}
        (out / "commits" / f"{name}.json").write_text(json.dumps(record))
    # a plan without videos: the review app and the audit only need it to recognise an output
    pq.write_table(pa.table({"uri": pa.array([], pa.string()), "video_id": pa.array([], pa.string()),
                             "shard_id": pa.array([], pa.string()), "order": pa.array([], pa.int64())}),
                   out / "plan" / "videos.parquet")
    (out / "plan" / "plan.json").write_text(json.dumps({"input": "generated", "shard_size": 1, "videos": 0,
                                                        "shards": shards}))


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--out", help="reuse or create this folder (default: a temporary one, removed after)")
    ap.add_argument("--pages", type=int, default=60)
    args = ap.parse_args()
    tmp = None
    out = Path(args.out) if args.out else Path(tmp := tempfile.mkdtemp(prefix="review-bench-")) / "out"
    t0 = time.perf_counter()
    if not (out / "commits").exists():
        generate(out, args.rows, args.shards)
    print(f"generate: {time.perf_counter() - t0:.1f} s ({args.rows} rows, {args.shards} shards)")

    from pipeline.review_server import make_server

    t0 = time.perf_counter()
    server, app = make_server(str(out), "127.0.0.1", 0, "bench")
    print(f"server start (index load, precomputed histograms): {time.perf_counter() - t0:.1f} s, {app.index.n} rows")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1])

    cpu, slow = [], []

    def get(path: str, params: dict) -> tuple[float, dict]:
        # wall time is what a reviewer waits; CPU time (this process: server and client) is the cost without
        # the other processes on a shared machine
        t, c = time.perf_counter(), time.process_time()
        conn.request("GET", f"{path}?{urlencode(params)}")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200, body
        ms = (time.perf_counter() - t) * 1000
        cpu.append((time.process_time() - c) * 1000)
        slow.append((ms, path, {k: v for k, v in params.items() if k != "after"}, "after" in params))
        return ms, body

    rng = np.random.default_rng(1)
    pages, hists = [], []
    sorts = ["aesthetic_score", "motion_score", "pose_single_person_ratio", "clip_id"]
    for i in range(args.pages):
        # a new filter every third request (uncached mask), then two keyset pages after it
        if i % 3 == 0:
            params = {"status": str(rng.choice(["accepted", "rejected", "accepted,rejected"])),
                      "min.motion_score": f"{rng.uniform(0, 0.02):.4f}", "max.ocr_text_boxes": str(rng.integers(0, 3)),
                      "sort": sorts[i // 3 % len(sorts)], "order": str(rng.choice(["asc", "desc"])), "limit": "50"}
            if i % 9 == 0:
                params["q"] = str(rng.choice(WORDS[4:]))
            cursor = None
        p = dict(params, after=json.dumps(cursor)) if cursor else params
        ms, body = get("/api/clips", p)
        pages.append(ms)
        cursor = body["next"]
        if i % 3 == 1:
            ms, _ = get("/api/hist", dict(params, col=rng.choice(["aesthetic_score", "motion_score"])))
            hists.append(ms)
    server.shutdown()
    all_ms = pages + hists
    print(f"pages: {len(pages)}, p50 {percentile(pages, 50):.1f} ms, p95 {percentile(pages, 95):.1f} ms, "
          f"max {max(pages):.1f} ms")
    print(f"histograms: {len(hists)}, p50 {percentile(hists, 50):.1f} ms, p95 {percentile(hists, 95):.1f} ms")
    for ms, path, params, keyset in sorted(slow, key=lambda x: x[0], reverse=True)[:4]:
        print(f"slow: {ms:.0f} ms {path} {'next page' if keyset else 'first page'} {params}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"cpu per request: p50 {percentile(cpu, 50):.1f} ms, p95 {percentile(cpu, 95):.1f} ms; load average {load}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"rows": app.index.n, "shards": len(app.index.shards), "requests": len(all_ms),
                      "p50_ms": round(percentile(all_ms, 50), 1), "p95_ms": round(percentile(all_ms, 95), 1),
                      "page_p95_ms": round(percentile(pages, 95), 1), "hist_p95_ms": round(percentile(hists, 95), 1),
                      "cpu_p95_ms": round(percentile(cpu, 95), 1), "load_avg": load, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
