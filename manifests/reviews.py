"""Human review records: append-only Parquet files under OUT/reviews/, never a rewrite of a manifest.

One file per write (a verdict, or a batch of them): appending is a new object, which works the same on a local
folder and on S3 and needs no lock between reviewers. A clip's review verdict is the latest accept/reject of any
reviewer; a caption edit is a verdict of its own ("caption") that carries the new text and its version.
"""

from __future__ import annotations

import io
import itertools
import time
import uuid
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import Store, read_parquet_bytes

REVIEW_DIR = "reviews"
VERDICTS = ("accept", "reject", "caption")
# The fixed reason list (keys 1-9 in the app); a reason outside it is refused, so counts stay comparable.
REASONS = ("no_person", "several_people", "no_action", "static_or_slideshow", "text_or_watermark", "low_quality",
           "cut_inside_clip", "wrong_caption", "other")

REVIEW_SCHEMA = pa.schema([
    ("review_id", pa.string()),
    ("clip_id", pa.string()),
    ("reviewer", pa.string()),
    ("time", pa.timestamp("ms", tz="UTC")),
    ("verdict", pa.string()),
    ("reason", pa.string()),
    ("caption_column", pa.string()),
    ("caption", pa.string()),
    ("caption_version", pa.int32()),  # the caption version the reviewer saw (0: the pipeline's), or wrote (edits)
    ("note", pa.string()),
])


class ReviewError(ValueError):
    pass


def check_record(rec: dict) -> dict:
    """A complete, valid record from what a client sent (unknown keys ignored)."""
    verdict = rec.get("verdict")
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {', '.join(VERDICTS)}")
    reason = rec.get("reason") or None
    if verdict == "reject" and reason not in REASONS:
        raise ReviewError(f"a reject needs a reason from: {', '.join(REASONS)}")
    if verdict == "caption" and not (isinstance(rec.get("caption"), str) and rec["caption"].strip()):
        raise ReviewError("a caption edit needs the new caption text")
    reviewer = str(rec.get("reviewer") or "").strip()
    if not reviewer or len(reviewer) > 100:
        raise ReviewError("reviewer name required (1-100 characters)")
    if not rec.get("clip_id"):
        raise ReviewError("clip_id required")
    return {
        "review_id": uuid.uuid4().hex,
        "clip_id": str(rec["clip_id"]),
        "reviewer": reviewer,
        "time": rec.get("time") or int(time.time() * 1000),
        "verdict": verdict,
        "reason": reason if verdict == "reject" else None,
        "caption_column": rec.get("caption_column") or None,
        "caption": rec.get("caption") if verdict == "caption" else None,
        "caption_version": int(rec.get("caption_version") or 0),
        "note": (str(rec["note"])[:2000] if rec.get("note") else None),
    }


def append_reviews(store: Store, records: list[dict]) -> str:
    """Write checked records as one new file; returns its path relative to OUT."""
    table = pa.Table.from_pylist([check_record(r) for r in records], schema=REVIEW_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    name = f"{REVIEW_DIR}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.parquet"
    store.write_bytes(name, buf.getvalue())
    return name


def review_files(store: Store) -> list[str]:
    return [n for n in store.list(REVIEW_DIR) if n.endswith(".parquet")]


def read_reviews(store: Store, files: list[str] | None = None) -> pa.Table:
    """Every record (or those of the given files), in time order."""
    files = review_files(store) if files is None else files
    tables = [read_parquet_bytes(store.read_bytes(f"{REVIEW_DIR}/{n}")) for n in files]
    if not tables:
        return REVIEW_SCHEMA.empty_table()
    return pa.concat_tables([t.cast(REVIEW_SCHEMA) for t in tables]).sort_by([("time", "ascending")])


def _rows(reviews: pa.Table | list[dict]) -> list[dict]:
    return reviews.to_pylist() if isinstance(reviews, pa.Table) else reviews


def reviewer_verdicts(reviews) -> dict[str, dict[str, str]]:
    """clip -> reviewer -> that reviewer's latest accept/reject."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for r in _rows(reviews):  # time order: later verdicts overwrite earlier ones
        if r["verdict"] in ("accept", "reject"):
            out[r["clip_id"]][r["reviewer"]] = r["verdict"]
    return out


def clip_verdicts(reviews) -> dict[str, str]:
    """clip -> the latest accept/reject of any reviewer (what status, audit and export apply)."""
    out: dict[str, str] = {}
    for r in _rows(reviews):
        if r["verdict"] in ("accept", "reject"):
            out[r["clip_id"]] = r["verdict"]
    return out


def latest_captions(reviews) -> dict[str, dict]:
    """clip -> its latest caption edit {caption_column, caption, caption_version, reviewer}."""
    out: dict[str, dict] = {}
    for r in _rows(reviews):
        if r["verdict"] == "caption":
            out[r["clip_id"]] = {k: r[k] for k in ("caption_column", "caption", "caption_version", "reviewer")}
    return out


def disputes(reviews) -> dict[str, int]:
    """clip -> how disputed it is: the size of the minority among its reviewers' verdicts (0: unanimous)."""
    out = {}
    for clip, by_reviewer in reviewer_verdicts(reviews).items():
        counts = Counter(by_reviewer.values())
        out[clip] = min(counts.get("accept", 0), counts.get("reject", 0))
    return out


def agreement(reviews) -> list[dict]:
    """Per pair of reviewers, on the clips both judged: share of equal verdicts and Cohen's kappa."""
    per_clip = reviewer_verdicts(reviews)
    reviewers = sorted({rv for v in per_clip.values() for rv in v})
    out = []
    for a, b in itertools.combinations(reviewers, 2):
        pairs = [(v[a], v[b]) for v in per_clip.values() if a in v and b in v]
        if not pairs:
            continue
        n = len(pairs)
        observed = sum(x == y for x, y in pairs) / n
        pa_acc = sum(x == "accept" for x, _ in pairs) / n
        pb_acc = sum(y == "accept" for _, y in pairs) / n
        expected = pa_acc * pb_acc + (1 - pa_acc) * (1 - pb_acc)
        kappa = 1.0 if expected == 1 else (observed - expected) / (1 - expected)
        out.append({"reviewers": [a, b], "clips": n, "agreement": round(observed, 4), "kappa": round(kappa, 4)})
    return out


def summary(store: Store, manifest_status: dict[str, str] | None = None, accepted_total: int | None = None,
            rows: list[dict] | None = None) -> dict:
    """Counts for `status` and `audit`. With clip -> manifest status, also what the reviews changed; the map may hold
    only the reviewed clips when `accepted_total` gives how many clips the pipeline accepted. `rows`: the records,
    where the caller has read them already."""
    rows = read_reviews(store).to_pylist() if rows is None else rows
    verdicts = clip_verdicts(rows)
    out = {
        "records": len(rows),
        "reviewers": sorted({r["reviewer"] for r in rows}),
        "clips_reviewed": len(verdicts),
        "review_accepted": sum(v == "accept" for v in verdicts.values()),
        "review_rejected": sum(v == "reject" for v in verdicts.values()),
        "caption_edits": len(latest_captions(rows)),
        "disputed": sum(1 for d in disputes(rows).values() if d > 0),
        "reasons": dict(sorted(Counter(r["reason"] for r in rows if r["verdict"] == "reject").items())),
        "agreement": agreement(rows),
    }
    if manifest_status is not None:
        accepted = [c for c, s in manifest_status.items() if s == "accepted"]
        out["accepted_review_rejected"] = sum(verdicts.get(c) == "reject" for c in accepted)
        total = len(accepted) if accepted_total is None else accepted_total
        out["accepted_after_review"] = total - out["accepted_review_rejected"]
    return out
