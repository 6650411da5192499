"""Server-side queries over a run's manifests for the review app: filters, keyset pages, histograms, queues.

Only the scalar columns (core, scores, caption and MoME text) are loaded, once, into one Arrow table; a clip's
nested columns (pose records, OCR boxes) are read from its shard when its page opens. A page is a filter mask
(cached per filter), a keyset condition on (sort key, clip_id) and a top-k selection: no full sort, and the
browser only ever gets `limit` rows.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests import fields, reviews
from manifests.io import manifest_path
from manifests.schema import CORE_COLUMNS
from pipeline.commits import committed_shards
from pipeline.storage import Store

LIST_COLUMNS = ["clip_id", "video_id", "video_uri", "start_s", "end_s", "status", "reject_stage", "reject_rule",
                "reject_value", "error_type"]
HIST_BINS = 20
MAX_LIMIT = 500


@dataclass
class Filters:
    status: list[str] = field(default_factory=list)
    stage: str | None = None  # the stage that rejected or errored the clip
    rule: str | None = None  # reject rule, or error type
    text: str | None = None  # substring of any caption / MoME text, case-insensitive
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    review: str | None = None  # accept | reject | none | disputed
    video: str | None = None

    @classmethod
    def from_query(cls, q: dict[str, list[str]]) -> Filters:
        """From URL parameters: status=a,b stage= rule= q= review= video= min.<col>= max.<col>="""
        def one(name):
            v = q.get(name, [""])[0].strip()
            return v or None

        ranges: dict[str, list] = {}
        for key, values in q.items():
            bound, _, col = key.partition(".")
            if bound in ("min", "max") and col and values and values[0].strip():
                ranges.setdefault(col, [None, None])[0 if bound == "min" else 1] = float(values[0])
        status = [s for s in (one("status") or "").split(",") if s]
        return cls(status, one("stage"), one("rule"), one("q"), {k: tuple(v) for k, v in ranges.items()},
                   one("review"), one("video"))

    def key(self) -> tuple:
        return (tuple(self.status), self.stage, self.rule, self.text, tuple(sorted(self.ranges.items())),
                self.review, self.video)


class QueryError(ValueError):
    pass


class ClipIndex:
    def __init__(self, output: str, threads: int = 4):
        self.store = Store(output)
        self.lock = threading.Lock()
        committed = committed_shards(self.store)
        self.run_info = json.loads(self.store.read_bytes("run.json")) if self.store.exists("run.json") else None
        self.shards = sorted(committed)
        self.table = self._load(threads)
        schema = self.table.schema
        self.score_columns = [c for c in fields.score_columns(schema) if c in schema.names]
        self.caption_columns = fields.caption_columns(self.full_schema)
        self.mome_columns = fields.mome_columns(self.full_schema)
        self.text_columns = [c for c in fields.searchable_columns(self.full_schema) if c in schema.names]
        self.clip_ids = self.table.column("clip_id").combine_chunks()
        self.n = self.table.num_rows
        self._row_of = {c: i for i, c in enumerate(self.clip_ids.to_pylist())}
        uris = self.table.column("video_uri").to_pylist()
        self.videos = dict(zip(self.table.column("video_id").to_pylist(), uris))
        self._masks: OrderedDict = OrderedDict()
        self._conds: OrderedDict = OrderedDict()
        self._review_files: set[str] = set()
        self.review_rows: list[dict] = []
        self._keys: dict = {}
        self._numeric: dict[str, np.ndarray] = {}
        self.hist_edges = {c: self._edges(c) for c in self.score_columns}
        self.base_hists = {c: self._hist(c, None) for c in self.score_columns}  # precomputed: no filter
        for c in ["clip_id"] + self.score_columns:  # sort keys too: a first page never pays for a rank
            self._sort_key(c, False)
        self.refresh_reviews()

    # -- loading -------------------------------------------------------------------------------------------------
    def _read_shard(self, shard: str) -> pa.Table:
        path = self.store._path(manifest_path(shard))
        with self.store.fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            keep = [n for n in pf.schema_arrow.names if self._scalar(pf.schema_arrow.field(n))]
            t = pf.read(columns=keep)
        self._schemas[shard] = pf.schema_arrow  # every column, nested ones included: what a clip page shows
        return t.append_column("_shard_row", pa.array(np.arange(t.num_rows, dtype=np.int32)))

    def _scalar(self, f: pa.Field) -> bool:
        if f.name in CORE_COLUMNS:
            return True
        t = f.type
        return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
                or pa.types.is_large_string(t) or pa.types.is_boolean(t))

    def _load(self, threads: int) -> pa.Table:
        if not self.shards:
            self.full_schema = pa.schema([(n, t) for n, t in CORE_COLUMNS.items()])
            return pa.table({**{n: pa.array([], t) for n, t in CORE_COLUMNS.items()},
                             "_shard_row": pa.array([], pa.int32()), "duration_s": pa.array([], pa.float64())})
        self._schemas: dict[str, pa.Schema] = {}
        with ThreadPoolExecutor(threads) as pool:
            tables = list(pool.map(self._read_shard, self.shards))
        # a later recipe may have added columns: the union of the shards' schemas
        self.full_schema = pa.unify_schemas([self._schemas[s] for s in self.shards], promote_options="permissive")
        table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
        duration = pc.subtract(table.column("end_s"), table.column("start_s"))
        return table.append_column("duration_s", duration)

    # -- reviews -------------------------------------------------------------------------------------------------
    def refresh_reviews(self) -> None:
        """Review state as columns beside the manifest columns: latest verdict and how disputed a clip is."""
        # only the files written since the last refresh: one write is one new file
        with self.lock:
            new = [n for n in reviews.review_files(self.store) if n not in self._review_files]
            self._review_files.update(new)
            rows = sorted(self.review_rows + reviews.read_reviews(self.store, new).to_pylist(), key=lambda r: r["time"])
        verdicts, dispute = reviews.clip_verdicts(rows), reviews.disputes(rows)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["clip_id"]] = counts.get(r["clip_id"], 0) + 1
        with self.lock:
            self.review_rows = rows
            self.review_verdict = self._by_clip(verdicts, pa.string())
            self.review_dispute = self._by_clip(dispute, pa.int32(), 0)
            self.review_count = self._by_clip(counts, pa.int32(), 0)
            self._masks.clear()
            for k in [k for k in self._keys if k[0] in ("review_dispute", "review_count")]:
                del self._keys[k]

    def _by_clip(self, mapping: dict, typ, default=None) -> pa.Array:
        """A column aligned with the table from a clip -> value dict (index_in, not a Python loop over rows)."""
        if not mapping:
            return pa.array(np.full(self.n, default), typ) if default is not None else pa.nulls(self.n, typ)
        keys = pa.array(list(mapping), pa.string())
        pos = pc.index_in(self.clip_ids, value_set=keys)
        values = pc.take(pa.array(list(mapping.values()), typ), pos)
        return pc.fill_null(values, default) if default is not None else values

    # -- columns -------------------------------------------------------------------------------------------------
    def column(self, name: str) -> pa.Array:
        if name == "review_verdict":
            return self.review_verdict
        if name == "review_dispute":
            return self.review_dispute
        if name == "review_count":
            return self.review_count
        if name not in self.table.schema.names or name == "_shard_row":
            raise QueryError(f"unknown column {name!r}")
        return self.table.column(name).combine_chunks()

    def numeric(self, name: str) -> np.ndarray:
        """A float copy with NaN for nulls (cached): range filters and histograms run in NumPy."""
        arr = self._numeric.get(name)
        if arr is None:
            col = self.column(name)
            if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
                raise QueryError(f"{name} is not numeric")
            arr = np.asarray(pc.fill_null(col.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False))
            if name not in ("review_dispute", "review_count"):
                self._numeric[name] = arr
        return arr

    # -- filters -------------------------------------------------------------------------------------------------
    def mask(self, f: Filters) -> np.ndarray | None:
        """Boolean row mask of a filter (None: every row); the last 64 are cached so paging reuses them."""
        key = f.key()
        with self.lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        m = self._compute_mask(f)
        with self.lock:
            self._masks[key] = m
            while len(self._masks) > 64:
                self._masks.popitem(last=False)
        return m

    def _cached(self, key: tuple, compute) -> np.ndarray:
        """One condition's mask, cached on its own: a reviewer changes one filter at a time, so the others (a text
        search over every caption above all) are not computed again."""
        with self.lock:
            if key in self._conds:
                self._conds.move_to_end(key)
                return self._conds[key]
        m = compute()
        with self.lock:
            self._conds[key] = m
            while len(self._conds) > 128:
                self._conds.popitem(last=False)
        return m

    def _compute_mask(self, f: Filters) -> np.ndarray | None:
        conds = []

        def arrow(expr) -> np.ndarray:
            return np.asarray(pc.fill_null(expr, False).to_numpy(zero_copy_only=False), dtype=bool)

        def text_hits() -> np.ndarray:
            hit = np.zeros(self.n, bool)
            for col in self.text_columns:
                hit |= arrow(pc.match_substring(self.column(col), f.text, ignore_case=True))
            return hit

        if f.status:
            conds.append(self._cached(("status", tuple(sorted(f.status))), lambda: arrow(
                pc.is_in(self.column("status"), value_set=pa.array(f.status)))))
        if f.stage:
            conds.append(self._cached(("stage", f.stage), lambda: arrow(pc.or_(
                pc.equal(self.column("reject_stage"), f.stage), pc.equal(self.column("error_stage"), f.stage)))))
        if f.rule:
            conds.append(self._cached(("rule", f.rule), lambda: arrow(pc.or_(
                pc.equal(self.column("reject_rule"), f.rule), pc.equal(self.column("error_type"), f.rule)))))
        if f.video:
            conds.append(arrow(pc.equal(self.column("video_id"), f.video)))
        for col, (lo, hi) in f.ranges.items():
            values = self.numeric(col)
            with np.errstate(invalid="ignore"):
                c = np.isfinite(values)
                if lo is not None:
                    c &= values >= lo
                if hi is not None:
                    c &= values <= hi
            conds.append(c)
        if f.text:
            conds.append(self._cached(("text", f.text.lower()), text_hits))
        if f.review:  # not cached on its own: reviews change it
            verdict = self.review_verdict
            if f.review in ("accept", "reject"):
                conds.append(arrow(pc.equal(verdict, f.review)))
            elif f.review == "none":
                conds.append(arrow(pc.is_null(verdict)))
            elif f.review == "disputed":
                conds.append(np.asarray(self.review_dispute.to_numpy(zero_copy_only=False)) > 0)
            else:
                raise QueryError("review must be accept, reject, none or disputed")
        if not conds:
            return None
        m = conds[0].copy()
        for c in conds[1:]:
            m &= c
        return m

    # -- pages ---------------------------------------------------------------------------------------------------
    def _sort_key(self, sort: str, descending: bool) -> np.ndarray:
        """The order to page in, as one float array sorted ascending: values (negated for descending; strings by
        their rank) with nulls as +inf, so nulls come last either way. Ties are broken by row position."""
        cache_key = (sort, descending)
        key = self._keys.get(cache_key)
        if key is None and descending:
            asc = self._sort_key(sort, False)
            key = -asc
            key[np.isinf(asc)] = math.inf
            self._keys[cache_key] = key
        elif key is None:
            col = self.column(sort)
            if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
                key = np.asarray(pc.fill_null(col.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False))
            else:
                rank = pc.rank(col.cast(pa.string()), sort_keys="ascending", tiebreaker="dense")
                key = np.asarray(rank.to_numpy(), dtype=np.float64)
                key[np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)] = math.nan
            key = key.copy()
            key[~np.isfinite(key)] = math.inf
            self._keys[cache_key] = key
        return key

    def page(self, f: Filters, sort: str = "clip_id", descending: bool = False, after: tuple | None = None,
             limit: int = 50, columns: list[str] | None = None) -> dict:
        """One page in (sort, row position) order after the cursor [key value, clip_id] of the previous page's
        last row; also the total matching the filter and the next cursor. No full sort: a partition for the
        top `limit` of the rows left."""
        limit = max(1, min(int(limit), MAX_LIMIT))
        key = self._sort_key(sort, descending)
        m = self.mask(f)
        total = self.n if m is None else int(m.sum())
        cand = m
        if after is not None:
            value, clip = after
            r = self._row_of.get(clip)
            if r is None:
                raise QueryError("the page cursor names an unknown clip; start from the first page")
            v = math.inf if value is None else float(value)
            rows_after = np.arange(self.n) > r
            ks = (key > v) | ((key == v) & rows_after)
            cand = ks if cand is None else (cand & ks)
        idx = np.arange(self.n) if cand is None else np.flatnonzero(cand)
        vals = key[idx]
        k = limit + 1  # one more than the page: is there a next page
        if len(idx) > k:
            kth = np.partition(vals, k - 1)[k - 1]
            below = np.flatnonzero(vals < kth)
            ties = np.flatnonzero(vals == kth)[: k - len(below)]  # idx is ascending: ties in row order
            chosen = np.concatenate([below, ties])
        else:
            chosen = np.arange(len(idx))
        chosen = chosen[np.lexsort((idx[chosen], vals[chosen]))]
        rows_idx = idx[chosen]
        more = len(rows_idx) > limit
        rows_idx = rows_idx[:limit]
        rows = self.rows(rows_idx, columns, extra=[sort])
        nxt = None
        if more and len(rows_idx):
            last = int(rows_idx[-1])
            kv = float(key[last])
            nxt = [None if math.isinf(kv) else kv, self.clip_ids[last].as_py()]
        return {"total": total, "rows": rows, "next": nxt}

    def rows(self, idx, columns: list[str] | None = None, extra: list[str] = ()) -> list[dict]:
        idx = np.asarray(idx, dtype=np.int64)
        cols = list(dict.fromkeys((columns or LIST_COLUMNS) + [c for c in extra if c]))
        names = self.table.schema.names
        out = {c: self.table.column(c).take(idx).to_pylist() for c in cols if c in names}
        out["review_verdict"] = self.review_verdict.take(idx).to_pylist()
        out["review_dispute"] = self.review_dispute.take(idx).to_pylist()
        keys = list(out)
        return [{k: _clean(out[k][i]) for k in keys} for i in range(len(idx))]

    # -- histograms ----------------------------------------------------------------------------------------------
    def _edges(self, col: str) -> np.ndarray:
        values = self.numeric(col)
        finite = values[np.isfinite(values)]
        if not finite.size:
            return np.linspace(0, 1, HIST_BINS + 1)
        lo, hi = float(finite.min()), float(finite.max())
        return np.linspace(lo, hi if hi > lo else lo + 1, HIST_BINS + 1)

    def _hist(self, col: str, m: np.ndarray | None) -> dict:
        values = self.numeric(col)
        if m is not None:
            values = values[m]
        values = values[np.isfinite(values)]
        edges = self.hist_edges[col]
        counts, _ = np.histogram(values, edges)
        return {"column": col, "edges": edges.tolist(), "counts": counts.tolist(), "count": int(values.size)}

    def histogram(self, col: str, f: Filters) -> dict:
        if col not in self.hist_edges:
            raise QueryError(f"no histogram for {col!r}")
        m = self.mask(f)
        return self.base_hists[col] if m is None else self._hist(col, m)

    # -- queues --------------------------------------------------------------------------------------------------
    def queue(self, kind: str, f: Filters, n: int = 50, column: str | None = None, seed: int = 0) -> list[str]:
        """Clip ids to review in order. random: a seeded sample; stratified: equal shares from each score bin;
        disputed: most-disputed first; overlap: the same seeded sample for every reviewer (agreement)."""
        n = max(1, min(int(n), MAX_LIMIT))
        m = self.mask(f)
        idx = np.arange(self.n) if m is None else np.flatnonzero(m)
        if kind in ("random", "overlap"):
            # overlap: a fixed sample whatever the seed, so every reviewer who takes it judges the same clips
            rng = np.random.default_rng(0 if kind == "overlap" else seed)
            pick = rng.permutation(idx)[:n]
        elif kind == "stratified":
            if column not in self.hist_edges:
                raise QueryError("stratified queue needs a score column (col=)")
            values = self.numeric(column)[idx]
            ok = np.isfinite(values)
            idx, values = idx[ok], values[ok]
            bins = np.digitize(values, self.hist_edges[column][1:-1])
            rng = np.random.default_rng(seed)
            groups = [rng.permutation(idx[bins == b]) for b in np.unique(bins)]
            pick = []
            for round_ in range(n):  # round robin over bins: each bin gets an equal share while it has clips
                for g in groups:
                    if round_ < len(g) and len(pick) < n:
                        pick.append(g[round_])
                if len(pick) >= n or all(round_ >= len(g) for g in groups):
                    break
            pick = np.asarray(pick, dtype=np.int64)
        elif kind == "disputed":
            d = np.asarray(self.review_dispute.to_numpy(zero_copy_only=False))[idx]
            c = np.asarray(self.review_count.to_numpy(zero_copy_only=False))[idx]
            order = np.lexsort((-c, -d))
            pick = idx[order][d[order] > 0][:n]
        else:
            raise QueryError("queue must be random, stratified, disputed or overlap")
        return self.clip_ids.take(pa.array(np.asarray(pick, dtype=np.int64))).to_pylist()

    # -- one clip ------------------------------------------------------------------------------------------------
    def clip(self, clip_id: str) -> dict | None:
        """Every column of one clip (nested ones included, from its shard) and its review history."""
        i = self._row_of.get(clip_id)
        if i is None:
            return None
        shard = self.table.column("shard_id")[i].as_py()
        row_in_shard = self.table.column("_shard_row")[i].as_py()
        with self.store.fs.open_input_file(self.store._path(manifest_path(shard))) as fh:
            t = pq.read_table(fh)
        row = {k: _clean(v) for k, v in t.slice(row_in_shard, 1).to_pylist()[0].items()}
        with self.lock:
            history = [dict(r, time=r["time"].isoformat() if r["time"] else None)
                       for r in self.review_rows if r["clip_id"] == clip_id]
        return {"row": row, "reviews": history, "caption_columns": [c for c in self.caption_columns if c in row],
                "mome_columns": [c for c in self.mome_columns if c in row],
                "caption_edit": reviews.latest_captions(history).get(clip_id)}

    def meta(self) -> dict:
        def distinct(col):
            return sorted(x for x in pc.unique(self.column(col)).to_pylist() if x is not None)

        return {"clips": self.n, "shards": len(self.shards), "statuses": distinct("status"),
                "stages": sorted(set(distinct("reject_stage")) | set(distinct("error_stage"))),
                "rules": sorted(set(distinct("reject_rule")) | set(distinct("error_type"))),
                "score_columns": self.score_columns, "caption_columns": self.caption_columns,
                "mome_columns": self.mome_columns, "reasons": list(reviews.REASONS),
                "sort_columns": ["clip_id", "video_uri", "start_s", "status"] + self.score_columns
                + ["review_dispute", "review_count"],
                "thresholds": {c: fields.thresholds_for(c, fields.recipe_params(self.run_info))
                               for c in self.score_columns}}


def _clean(v):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v
