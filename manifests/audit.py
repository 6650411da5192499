"""`actcurate audit` and `actcurate status`: what was kept, what was rejected and why, from the manifests alone."""

from __future__ import annotations

import json
import posixpath
import statistics
from array import array  # a rejected clip's value in 8 bytes, not a float object and its pointer
from collections import Counter, defaultdict
from collections.abc import Callable

from manifests import fields, reviews
from manifests.io import read_manifest
from pipeline.commits import committed_shards
from pipeline.errors import UserError
from pipeline.plan import PlanSummary, read_plan_summary
from pipeline.storage import Store


def _open(output: str) -> tuple[Store, PlanSummary]:
    store = Store(output)
    plan = read_plan_summary(store)
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
        "videos": {"total": plan.videos, "done": done_videos},
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


HIST_BINS = 20


def audit(output: str) -> dict:
    return audit_with_rows(output)[0]


def audit_with_rows(output: str, keep_rows: Callable[[list[dict], list[dict]], list[dict]] | None = None
                    ) -> tuple[dict, list[dict]]:
    """The report and, with `keep_rows(kept, shard_rows) -> kept`, the core-column rows it chooses to keep (the HTML
    report keeps a few per rejection rule for its thumbnails).

    The committed manifests are read one shard at a time and only counts (and the numeric score values) are kept, so
    memory grows with the run by a few numbers a clip, not by its rows."""
    store, plan = _open(output)
    committed = committed_shards(store)
    audit_pass = AuditPass(store, plan, committed)
    kept: list[dict] = []
    for shard_id in sorted(committed):
        rows = audit_pass.add(read_manifest(store, shard_id))
        if keep_rows is not None:
            kept = keep_rows(kept, rows)
    return audit_pass.report(), kept


class AuditPass:
    """The audit of a run's committed shards, fed their manifests one at a time by whoever reads them (the audit
    itself, or an export on its one pass over the same shards), then `report()`."""

    def __init__(self, store: Store, plan: PlanSummary, committed: dict, review_rows: list[dict] | None = None):
        self.store, self.plan, self.committed = store, plan, committed
        # the review records, read once (an export passes the ones it read)
        self.review_rows = reviews.read_reviews(store).to_pylist() if review_rows is None else review_rows
        self.verdicts = reviews.clip_verdicts(self.review_rows)
        self.tally: _Tally | None = None
        self.shards_added = 0

    def add(self, table) -> list[dict]:
        """Count one committed shard's whole manifest; returns its core-column rows."""
        if self.tally is None:
            self.tally = _Tally(*_stage_order(self.store, table), self.verdicts)
        self.shards_added += 1
        return self.tally.add(table)

    def report(self) -> dict:
        store, plan, committed = self.store, self.plan, self.committed
        if self.shards_added != len(committed):  # a reader that stopped early must not make a partial audit
            raise RuntimeError(f"the audit was given {self.shards_added} of {len(committed)} committed manifests")
        tally = self.tally or _Tally([], None, self.verdicts)
        shards = plan.shard_ids
        return {
            "output": store.root,
            "videos": {"total": plan.videos, "done": tally.videos},
            "clips": {"total": sum(tally.statuses.values()),
                      **{k: tally.statuses.get(k, 0) for k in ("accepted", "rejected", "error")}},
            "shards": {"total": len(shards), "committed": len(committed), "pending": len(shards) - len(committed)},
            "funnel": tally.funnel(),
            "reasons": tally.reasons(),
            "errors": tally.errors(),
            "throughput": tally.throughput(),
            "sources": tally.sources(),
            "scores": tally.scores(fields.recipe_params(run_info(store))),
            "reviews": reviews.summary(store, tally.reviewed_status,
                                       accepted_total=tally.statuses.get("accepted", 0), rows=self.review_rows),
            "model_calls": tally.model_calls(),
            "qa": tally.qa(),
        }


MODEL_CALL_KEYS = ("prompt_tokens", "output_tokens", "thinking_tokens", "latency_s", "cached", "cached_calls",
                   "attempts", "calls")


class _Tally:
    """The audit's counts, added up one shard at a time. Every clip of a video is in the video's shard, so whatever
    is counted per video (how far it got, its stage seconds before the split) is complete within a shard."""

    def __init__(self, order: list[str], split_stage: str | None, verdicts: dict[str, str]):
        self.order = order
        self.split_at = order.index(split_stage) if split_stage in order else None
        self.verdicts = verdicts
        self.reviewed_status: dict[str, str] = {}  # manifest status of the clips a reviewer gave a verdict on
        self.statuses: Counter = Counter()
        self.videos = 0
        self.clip_deaths: Counter = Counter()  # stage index a clip stopped at (len(order): accepted) -> clips
        self.video_reach: Counter = Counter()  # the furthest stage index any clip of a video reached -> videos
        self.rejected: dict[tuple, dict] = {}  # (stage, rule) -> count, values, thresholds
        self.failed: dict[tuple, dict] = {}  # (stage, type) -> count and the first example
        self.stage_time = [[0, 0.0] for _ in order]  # units counted, seconds
        self.folders: dict[str, Counter] = defaultdict(Counter)  # video folder -> statuses and "_videos"
        self.score_values: dict[str, list] = {}  # column -> [(values, accepted mask) per shard], in schema order
        self.calls: dict[str, Counter] = defaultdict(Counter)
        self.qa_counts: dict[str, Counter] = {}

    def add(self, table) -> list[dict]:
        """Count one shard's manifest; returns its core-column rows."""
        core = [c for c in table.column_names if c in fields.CORE_COLUMNS or c == "timings"]
        rows = table.select(core).to_pylist()
        self.statuses.update(r["status"] for r in rows)
        self.videos += len({r["video_id"] for r in rows})
        for r in rows:
            if r["clip_id"] in self.verdicts:
                self.reviewed_status[r["clip_id"]] = r["status"]
        self._deaths(rows)
        self._reasons(rows)
        self._throughput(rows)
        self._sources(rows)
        self._scores(table)
        self._model_calls(table)
        self._qa(table)
        return rows

    # -- funnel
    def _death_index(self, row: dict) -> int:
        stage = row["reject_stage"] or row["error_stage"]
        if row["status"] == "accepted" or stage not in self.order:
            return len(self.order)
        return self.order.index(stage)

    def _deaths(self, rows: list[dict]) -> None:
        reach: dict[str, int] = defaultdict(int)
        for r in rows:
            d = self._death_index(r)
            self.clip_deaths[d] += 1
            reach[r["video_id"]] = max(reach[r["video_id"]], d)
        self.video_reach.update(reach.values())

    def funnel(self) -> list[dict]:
        """Rows in and out of each stage; before (and into) a splitting stage the unit is videos, after it clips."""
        def reaching(counts: Counter, k: int, past: bool) -> int:
            return sum(n for d, n in counts.items() if (d > k if past else d >= k))

        split_at, out = self.split_at, []
        for k, stage in enumerate(self.order):
            before_split = split_at is not None and k <= split_at
            n_in = reaching(self.video_reach if before_split else self.clip_deaths, k, past=False)
            early = split_at is not None and k < split_at
            n_out = reaching(self.video_reach if early else self.clip_deaths, k, past=True)
            out.append({"stage": stage, "in": n_in, "out": n_out, "unit_in": "videos" if before_split else "clips",
                        "unit_out": "videos" if early else "clips"})
        return out

    # -- rejections and errors
    def _reasons(self, rows: list[dict]) -> None:
        for r in rows:
            if r["status"] == "rejected":
                group = self.rejected.setdefault((r["reject_stage"], r["reject_rule"]),
                                                 {"count": 0, "values": array("d"), "thresholds": set()})
                group["count"] += 1
                if r["reject_value"] is not None:
                    group["values"].append(r["reject_value"])
                if r["reject_threshold"] is not None:
                    group["thresholds"].add(r["reject_threshold"])
            elif r["status"] == "error":
                group = self.failed.setdefault((r["error_stage"], r["error_type"]),
                                               {"count": 0, "example": r["error_message"],
                                                "example_uri": r["video_uri"]})
                group["count"] += 1

    def reasons(self) -> list[dict]:
        out = []
        for (stage, rule), g in sorted(self.rejected.items(), key=lambda kv: (-kv[1]["count"], kv[0])):
            entry = {"stage": stage, "rule": rule, "count": g["count"], "thresholds": sorted(g["thresholds"])}
            if g["values"]:
                entry.update(value_min=min(g["values"]), value_median=statistics.median(g["values"]),
                             value_max=max(g["values"]))
            out.append(entry)
        return out

    def errors(self) -> list[dict]:
        return [{"stage": stage, "type": typ, **g}
                for (stage, typ), g in sorted(self.failed.items(), key=lambda kv: (-kv[1]["count"], kv[0]))]

    # -- throughput
    def _throughput(self, rows: list[dict]) -> None:
        """Clips split from one video carry copies of the video's earlier timings: count those once."""
        split_at = len(self.order) if self.split_at is None else self.split_at
        for k, stage in enumerate(self.order):
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
            self.stage_time[k][0] += len(per_unit)
            self.stage_time[k][1] += sum(per_unit.values())

    def throughput(self) -> list[dict]:
        split_at = len(self.order) if self.split_at is None else self.split_at
        return [{"stage": stage, "unit": "videos" if k <= split_at else "clips", "count": count,
                 "seconds": round(total, 3), "per_s": round(count / total, 2) if total > 0 else None}
                for k, (stage, (count, total)) in enumerate(zip(self.order, self.stage_time))]

    # -- sources
    def _sources(self, rows: list[dict]) -> None:
        seen = set()
        for r in rows:
            folder = posixpath.dirname(r["video_uri"])
            self.folders[folder][r["status"]] += 1
            if r["video_id"] not in seen:
                seen.add(r["video_id"])
                self.folders[folder]["_videos"] += 1

    def sources(self) -> list[dict]:
        """Clips by input source: the folder (or bucket prefix) a video came from, relative to what they share."""
        common = posixpath.commonpath(list(self.folders)) if len(self.folders) > 1 else ""
        groups: dict[str, Counter] = defaultdict(Counter)
        for folder, counts in self.folders.items():
            groups[(folder[len(common):].lstrip("/") or ".") if common else folder].update(counts)
        return [{"source": name, "videos": c["_videos"], "clips": sum(n for k, n in c.items() if k != "_videos"),
                 **{k: c.get(k, 0) for k in ("accepted", "rejected", "error")}}
                for name, c in sorted(groups.items())]

    # -- scores
    def _scores(self, table) -> None:
        import numpy as np

        accepted = np.asarray(table.column("status").to_numpy(zero_copy_only=False) == "accepted")
        for col in fields.score_columns(table.schema):
            if col == "duration_s":
                arr = (np.asarray(table.column("end_s").to_numpy(zero_copy_only=False), dtype=float)
                       - np.asarray(table.column("start_s").to_numpy(zero_copy_only=False), dtype=float))
            else:
                arr = np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=float)
            ok = np.isfinite(arr)
            parts = self.score_values.setdefault(col, [])  # the column's place: where its schema first has it
            if ok.any():
                parts.append((arr[ok], accepted[ok]))

    def scores(self, params: dict[str, dict]) -> list[dict]:
        """A histogram per numeric score column (all rows that carry it, and the accepted ones), with every threshold
        the recipe sets on it; bins span the values and the thresholds."""
        import numpy as np

        out = []
        for col, parts in self.score_values.items():
            if not parts:
                continue
            values = np.concatenate([v for v, _ in parts])
            acc = np.concatenate([a for _, a in parts])
            thresholds = fields.thresholds_for(col, params)
            lo = min([values.min()] + [t["value"] for t in thresholds])
            hi = max([values.max()] + [t["value"] for t in thresholds])
            if hi <= lo:
                hi = lo + 1.0
            edges = np.linspace(lo, hi, HIST_BINS + 1)
            counts, _ = np.histogram(values, edges)
            counts_acc, _ = np.histogram(values[acc], edges)
            out.append({"column": col, "stage": col.split("_", 1)[0] if col != "duration_s" else "clip",
                        "count": int(values.size), "min": float(values.min()), "max": float(values.max()),
                        "median": float(np.median(values)), "edges": [float(e) for e in edges],
                        "counts": [int(c) for c in counts], "accepted": [int(c) for c in counts_acc],
                        "thresholds": thresholds})
        return out

    # -- model calls
    def _model_calls(self, table) -> None:
        for stage in self.order:
            present = [k for k in MODEL_CALL_KEYS if f"{stage}_{k}" in table.column_names]
            if "prompt_tokens" not in present:
                continue
            rows = table.select([f"{stage}_{k}" for k in present]).to_pylist()
            billed = [{k: r[f"{stage}_{k}"] for k in present} for r in rows
                      if r[f"{stage}_prompt_tokens"] is not None]
            if not billed:
                continue
            totals = self.calls[stage]
            totals["clips"] += len(billed)
            for key in ("prompt_tokens", "output_tokens", "thinking_tokens", "latency_s"):
                totals[key] += sum(r.get(key) or 0 for r in billed)
            # paid by the run that wrote each row: one call per clip with <stage>_attempts completions (none when
            # answered from OUT/calls), or <stage>_calls calls of which <stage>_cached_calls were answered so
            totals["paid_calls"] += sum(0 if r.get("cached") else (r.get("attempts") or 0) for r in billed) \
                if "attempts" in present else sum((r.get("calls") or 0) - (r.get("cached_calls") or 0) for r in billed)
            totals["cached_clips"] += sum(1 for r in billed if r.get("cached") or r.get("cached_calls"))

    def model_calls(self) -> list[dict]:
        """Cost drivers of the stages that call models (those with <stage>_prompt_tokens): tokens in, out and
        thinking, completions paid for (retries with new seeds included), calls answered from OUT/calls (not paid
        again), and output tokens per second of call latency."""
        out = []
        for stage in self.order:
            t = self.calls.get(stage)
            if not t:
                continue
            latency, output = t["latency_s"], t["output_tokens"]
            out.append({"stage": stage, "clips": t["clips"], "prompt_tokens": int(t["prompt_tokens"]),
                        "output_tokens": int(output), "thinking_tokens": int(t["thinking_tokens"]),
                        "paid_calls": int(t["paid_calls"]), "cached_clips": t["cached_clips"],
                        "latency_s": round(latency, 3),
                        "output_tokens_per_s": round(output / latency, 1) if latency > 0 else None})
        return out

    # -- QA
    def _qa(self, table) -> None:
        """Per annotating stage (one with <stage>_json, _dropped and _guessable): the questions (or triplets) kept
        on accepted clips, those a QA rule dropped, by rule, and the kept ones the blind check marked guessable."""
        for stage in self.order:
            columns = [f"{stage}_{k}" for k in ("json", "dropped", "guessable")]
            if not all(c in table.column_names for c in columns):
                continue
            counts = self.qa_counts.setdefault(stage, Counter())
            for r in table.select(columns + ["status"]).to_pylist():
                accepted = r["status"] == "accepted"
                if accepted and r[columns[0]]:
                    value = json.loads(r[columns[0]])
                    counts["_kept"] += len(value.get("questions", value.get("triplets", [])))
                counts.update(d["rule"] for d in r[columns[1]] or [])
                if accepted:
                    counts["_guessable"] += r[columns[2]] or 0

    def qa(self) -> list[dict]:
        return [{"stage": stage, "kept": c["_kept"],
                 "dropped": dict(sorted((k, n) for k, n in c.items() if not k.startswith("_"))),
                 "guessable": c["_guessable"]}
                for stage, c in self.qa_counts.items()]


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
