"""`actcurate audit` and `actcurate status`: what was kept, what was rejected and why, from the manifests alone."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from typing import Any

from manifests import fields, reviews
from manifests.io import read_manifests
from pipeline.commits import committed_shards
from pipeline.errors import UserError
from pipeline.plan import read_plan
from pipeline.storage import Store


def _open(output: str) -> tuple[Store, Any]:
    store = Store(output)
    plan = read_plan(store)
    if plan is None:
        raise UserError(f"{output} is not an actcurate output (no plan/plan.json); run `actcurate run` first")
    return store, plan


def status(output: str) -> dict:
    """Shards committed and pending, rows by status: from the commit records, without reading manifests."""
    store, plan = _open(output)
    committed = committed_shards(store)
    shards = plan.shard_ids
    counts: Counter = Counter()
    for record in committed.values():
        counts.update(record.get("status_counts", {}))
    done_videos = sum(record.get("videos", 0) for record in committed.values())
    review = reviews.summary(store)
    return {
        "output": store.root,
        "videos": {"total": len(plan.videos), "done": done_videos},
        "shards": {"total": len(shards), "committed": len(committed), "pending": len(shards) - len(committed)},
        "pending_shards": [s for s in shards if s not in committed],
        "clips": {"total": sum(counts.values()), **{k: counts.get(k, 0) for k in ("accepted", "rejected", "error")}},
        "reviews": {k: review[k] for k in ("records", "clips_reviewed", "review_accepted", "review_rejected",
                                           "caption_edits", "disputed")},
    }


def _stage_order(store: Store, table) -> tuple[list[str], str | None]:
    """The recipe's stage names and its splitting stage, from OUT/run.json (else the manifest's metadata): the
    audit never imports stage modules."""
    if store.exists("run.json"):
        info = json.loads(store.read_bytes("run.json"))
        return [next(iter(s)) for s in info["recipe"]["stages"]], info.get("split_stage")
    meta = table.schema.metadata or {}
    return json.loads(meta.get(b"stages", b"[]")), json.loads(meta.get(b"split_stage", b"null"))


def run_info(store: Store) -> dict | None:
    return json.loads(store.read_bytes("run.json")) if store.exists("run.json") else None


def audit(output: str) -> dict:
    return audit_with_rows(output)[0]


def audit_with_rows(output: str) -> tuple[dict, list[dict]]:
    """The report, and the manifests' core columns it was counted from (the HTML report's thumbnails use them)."""
    store, plan = _open(output)
    committed = committed_shards(store)
    table = read_manifests(store, sorted(committed))
    # the audit's counts need only the core columns and timings (stage columns hold nested per-frame lists)
    core = [c for c in table.column_names if c in fields.CORE_COLUMNS or c == "timings"] if table is not None else []
    rows = table.select(core).to_pylist() if table is not None else []
    order, split_stage = _stage_order(store, table) if table is not None else ([], None)
    split_at = order.index(split_stage) if split_stage in order else None
    shards = plan.shard_ids
    statuses = Counter(r["status"] for r in rows)
    report = {
        "output": store.root,
        "videos": {"total": len(plan.videos), "done": len({r["video_id"] for r in rows})},
        "clips": {"total": len(rows), **{k: statuses.get(k, 0) for k in ("accepted", "rejected", "error")}},
        "shards": {"total": len(shards), "committed": len(committed), "pending": len(shards) - len(committed)},
        "funnel": _funnel(rows, order, split_at),
        "reasons": _reasons(rows),
        "errors": _errors(rows),
        "throughput": _throughput(rows, order, split_at),
        "sources": _sources(rows),
        "scores": _scores(table, fields.recipe_params(run_info(store))) if table is not None else [],
        "reviews": reviews.summary(store, {r["clip_id"]: r["status"] for r in rows}),
        "model_calls": _model_calls(table, order) if table is not None else [],
        "qa": _qa(table, order) if table is not None else [],
    }
    return report, rows


def _death_index(row: dict, order: list[str]) -> int:
    stage = row["reject_stage"] or row["error_stage"]
    if row["status"] == "accepted" or stage not in order:
        return len(order)
    return order.index(stage)


def _funnel(rows: list[dict], order: list[str], split_at: int | None) -> list[dict]:
    """Rows in and out of each stage; before (and into) a splitting stage the unit is videos, after it clips."""
    deaths = [(_death_index(r, order), r["video_id"]) for r in rows]
    # A video's furthest stage: all of its rows passed every stage before the split together.
    video_reach: dict[str, int] = defaultdict(int)
    for d, vid in deaths:
        video_reach[vid] = max(video_reach[vid], d)
    funnel = []
    for k, stage in enumerate(order):
        before_split = split_at is not None and k <= split_at
        if before_split:
            n_in = sum(1 for d in video_reach.values() if d >= k)
        else:
            n_in = sum(1 for d, _ in deaths if d >= k)
        if split_at is not None and k < split_at:
            n_out = sum(1 for d in video_reach.values() if d > k)
        else:
            n_out = sum(1 for d, _ in deaths if d > k)
        unit_in = "videos" if before_split else "clips"
        unit_out = "videos" if split_at is not None and k < split_at else "clips"
        funnel.append({"stage": stage, "in": n_in, "out": n_out, "unit_in": unit_in, "unit_out": unit_out})
    return funnel


def _reasons(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] == "rejected":
            groups[(r["reject_stage"], r["reject_rule"])].append(r)
    out = []
    for (stage, rule), members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        values = [m["reject_value"] for m in members if m["reject_value"] is not None]
        thresholds = sorted({m["reject_threshold"] for m in members if m["reject_threshold"] is not None})
        entry = {"stage": stage, "rule": rule, "count": len(members), "thresholds": thresholds}
        if values:
            entry.update(value_min=min(values), value_median=statistics.median(values), value_max=max(values))
        out.append(entry)
    return out


def _errors(rows: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] == "error":
            groups[(r["error_stage"], r["error_type"])].append(r)
    return [
        {"stage": stage, "type": typ, "count": len(members), "example": members[0]["error_message"],
         "example_uri": members[0]["video_uri"]}
        for (stage, typ), members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def _throughput(rows: list[dict], order: list[str], split_at: int | None) -> list[dict]:
    """Seconds per stage. Clips split from one video carry copies of the video's earlier timings: count those once."""
    split_at = len(order) if split_at is None else split_at
    out = []
    for k, stage in enumerate(order):
        per_unit: dict = defaultdict(float)
        for i, r in enumerate(rows):
            seconds = (r.get("timings") or {}).get(stage)
            if seconds is None:
                continue
            if k < split_at:
                per_unit[r["video_id"]] = seconds  # a copy on every clip of the video
            elif k == split_at:
                per_unit[r["video_id"]] += seconds  # the video's decode, shared out over its clips
            else:
                per_unit[i] = seconds
        total = sum(per_unit.values())
        out.append({"stage": stage, "unit": "videos" if k <= split_at else "clips", "count": len(per_unit),
                    "seconds": round(total, 3),
                    "per_s": round(len(per_unit) / total, 2) if total > 0 else None})
    return out


def _sources(rows: list[dict]) -> list[dict]:
    """Clips by input source: the folder (or bucket prefix) a video came from, relative to what they share."""
    import posixpath

    folders = {r["video_uri"]: posixpath.dirname(r["video_uri"]) for r in rows}
    common = posixpath.commonpath(list(folders.values())) if len(set(folders.values())) > 1 else ""
    groups: dict[str, Counter] = defaultdict(Counter)
    videos: dict[str, set] = defaultdict(set)
    for r in rows:
        folder = folders[r["video_uri"]]
        name = (folder[len(common):].lstrip("/") or ".") if common else folder
        groups[name][r["status"]] += 1
        videos[name].add(r["video_id"])
    return [{"source": name, "videos": len(videos[name]), "clips": sum(c.values()),
             **{k: c.get(k, 0) for k in ("accepted", "rejected", "error")}}
            for name, c in sorted(groups.items())]


HIST_BINS = 20


def _scores(table, params: dict[str, dict]) -> list[dict]:
    """A histogram per numeric score column (all rows that carry it, and the accepted ones), with every threshold
    the recipe sets on it; bins span the values and the thresholds."""
    import numpy as np

    out = []
    accepted = np.asarray(table.column("status").to_numpy(zero_copy_only=False) == "accepted")
    for col in fields.score_columns(table.schema):
        if col == "duration_s":
            arr = (np.asarray(table.column("end_s").to_numpy(zero_copy_only=False), dtype=float)
                   - np.asarray(table.column("start_s").to_numpy(zero_copy_only=False), dtype=float))
        else:
            arr = np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=float)
        ok = np.isfinite(arr)
        if not ok.any():
            continue
        values, acc = arr[ok], accepted[ok]
        thresholds = fields.thresholds_for(col, params)
        lo = min([values.min()] + [t["value"] for t in thresholds])
        hi = max([values.max()] + [t["value"] for t in thresholds])
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, HIST_BINS + 1)
        counts, _ = np.histogram(values, edges)
        counts_acc, _ = np.histogram(values[acc], edges)
        out.append({"column": col, "stage": col.split("_", 1)[0] if col != "duration_s" else "clip",
                    "count": int(ok.sum()), "min": float(values.min()), "max": float(values.max()),
                    "median": float(np.median(values)), "edges": [float(e) for e in edges],
                    "counts": [int(c) for c in counts], "accepted": [int(c) for c in counts_acc],
                    "thresholds": thresholds})
    return out


def _model_calls(table, order: list[str]) -> list[dict]:
    """Cost drivers of the stages that call models (those with <stage>_prompt_tokens): tokens in, out and thinking,
    completions paid for (retries with new seeds included), calls answered from OUT/calls (not paid again), and
    output tokens per second of call latency."""
    out = []
    for stage in order:
        wanted = [f"{stage}_{k}" for k in ("prompt_tokens", "output_tokens", "thinking_tokens", "latency_s",
                                          "cached", "cached_calls", "attempts", "calls")]
        present = [c for c in wanted if c in table.column_names]
        if f"{stage}_prompt_tokens" not in present:
            continue
        rows = table.select(present).to_pylist()
        billed = [r for r in rows if r.get(f"{stage}_prompt_tokens") is not None]
        if not billed:
            continue

        def total(column: str) -> float:
            return sum(r.get(f"{stage}_{column}") or 0 for r in billed)

        latency = total("latency_s")
        output = total("output_tokens")
        # paid by the run that wrote each row: one call per clip with <stage>_attempts completions (none when
        # answered from OUT/calls), or <stage>_calls calls of which <stage>_cached_calls were answered so
        paid = sum(0 if r.get(f"{stage}_cached") else (r.get(f"{stage}_attempts") or 0) for r in billed) \
            if f"{stage}_attempts" in present else total("calls") - total("cached_calls")
        out.append({"stage": stage, "clips": len(billed), "prompt_tokens": int(total("prompt_tokens")),
                    "output_tokens": int(output), "thinking_tokens": int(total("thinking_tokens")),
                    "paid_calls": int(paid),
                    "cached_clips": sum(1 for r in billed
                                        if r.get(f"{stage}_cached") or r.get(f"{stage}_cached_calls")),
                    "latency_s": round(latency, 3),
                    "output_tokens_per_s": round(output / latency, 1) if latency > 0 else None})
    return out


def _qa(table, order: list[str]) -> list[dict]:
    """Per annotating stage (one with <stage>_dropped and <stage>_guessable): the questions (or triplets) kept on
    accepted clips, those a QA rule dropped, by rule, and the kept ones the blind check marked guessable."""
    out = []
    for stage in order:
        columns = [f"{stage}_{k}" for k in ("json", "dropped", "guessable")]
        if not all(c in table.column_names for c in columns):
            continue
        rows = table.select(columns + ["status"]).to_pylist()
        kept = 0
        for r in rows:
            if r["status"] == "accepted" and r[columns[0]]:
                value = json.loads(r[columns[0]])
                kept += len(value.get("questions", value.get("triplets", [])))
        dropped = Counter(d["rule"] for r in rows for d in r[columns[1]] or [])
        out.append({"stage": stage, "kept": kept, "dropped": dict(sorted(dropped.items())),
                    "guessable": sum(r[columns[2]] or 0 for r in rows if r["status"] == "accepted")})
    return out


# -- rendering --------------------------------------------------------------------------------------------------------
def render_text(report: dict, console) -> None:
    from rich.table import Table

    v, c, s = report["videos"], report["clips"], report["shards"]
    console.print(f"[bold]actcurate audit[/bold] {report['output']}")
    console.print(f"videos {v['done']}/{v['total']} done   shards {s['committed']}/{s['total']} committed"
                  f" ({s['pending']} pending)")
    console.print(f"clips {c['total']}: [green]{c['accepted']} accepted[/green], "
                  f"[yellow]{c['rejected']} rejected[/yellow], [red]{c['error']} error[/red]")
    funnel = Table(title="funnel", title_justify="left")
    for col in ("stage", "in", "out", "dropped"):
        funnel.add_column(col, justify="left" if col == "stage" else "right")
    for f in report["funnel"]:
        funnel.add_row(f["stage"], f"{f['in']} {f['unit_in']}", f"{f['out']} {f['unit_out']}",
                       str(f["in"] - f["out"]) if f["unit_in"] == f["unit_out"] else "")
    console.print(funnel)
    if report["reasons"]:
        reasons = Table(title="rejections", title_justify="left")
        for col in ("stage", "rule", "count", "values (min / median / max)", "threshold"):
            reasons.add_column(col)
        for r in report["reasons"]:
            values = (f"{_fmt(r['value_min'])} / {_fmt(r['value_median'])} / {_fmt(r['value_max'])}"
                      if "value_min" in r else "")
            reasons.add_row(r["stage"], r["rule"], str(r["count"]), values,
                            ", ".join(_fmt(t) for t in r["thresholds"]))
        console.print(reasons)
    if report["errors"]:
        errors = Table(title="errors", title_justify="left")
        for col in ("stage", "type", "count", "example"):
            errors.add_column(col)
        for e in report["errors"]:
            errors.add_row(e["stage"], e["type"], str(e["count"]), f"{e['example']}  [dim]({e['example_uri']})[/dim]")
        console.print(errors)
    through = Table(title="throughput", title_justify="left")
    for col in ("stage", "processed", "seconds", "per second"):
        through.add_column(col, justify="left" if col == "stage" else "right")
    for t in report["throughput"]:
        through.add_row(t["stage"], f"{t['count']} {t['unit']}", f"{t['seconds']:.2f}", _fmt(t["per_s"]))
    console.print(through)
    rv = report.get("reviews") or {}
    if rv.get("records"):
        console.print(f"reviews: {rv['clips_reviewed']} clips reviewed by {len(rv['reviewers'])} reviewer(s): "
                      f"{rv['review_accepted']} accepted, {rv['review_rejected']} rejected, "
                      f"{rv['caption_edits']} caption edits, {rv['disputed']} disputed; "
                      f"{rv['accepted_after_review']} accepted clips left after review")


    if report.get("model_calls"):
        calls = Table(title="model calls", title_justify="left")
        for col in ("stage", "clips", "prompt tokens", "output tokens", "thinking tokens", "paid calls",
                    "cached clips", "call seconds", "output tokens/s"):
            calls.add_column(col, justify="left" if col == "stage" else "right")
        for m in report["model_calls"]:
            calls.add_row(m["stage"], str(m["clips"]), str(m["prompt_tokens"]), str(m["output_tokens"]),
                          str(m["thinking_tokens"]), str(m["paid_calls"]), str(m["cached_clips"]),
                          f"{m['latency_s']:.2f}",
                          _fmt(m["output_tokens_per_s"]))
        console.print(calls)
    for q in report.get("qa") or []:
        dropped = ", ".join(f"{rule} {n}" for rule, n in q["dropped"].items()) or "none"
        console.print(f"QA ({q['stage']}): {q['kept']} kept on accepted clips, {q['guessable']} of them guessable "
                      f"blind; dropped: {dropped}")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)
