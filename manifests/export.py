"""`actcurate export`: a run's accepted clips as a dataset a trainer loads, in the released datasets' shapes.

Reads the manifests, OUT/run.json, OUT/plan (the input list's licence and source columns) and OUT/reviews (later
verdicts: review-rejected clips are left out, edited captions win). Writes, to a local folder or s3:// prefix:
the format's files per split, clip files on request, a README.md dataset card and export.json (counts, the file
list). Output is deterministic: the same OUT and options give the same bytes.

Every exported field comes from the one mapping table, MAPPING, below; the README and the card render it.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import json
import posixpath
import tarfile
import tempfile
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests import reviews
from manifests.annotations import LETTERS, final_caption
from manifests.audit import AuditPass, run_info
from manifests.io import read_manifest, read_manifest_schema
from pipeline.commits import committed_shards
from pipeline.errors import UserError
from pipeline.inputs import NO_ATTRIBUTES
from pipeline.plan import read_plan_attributes, read_plan_summary
from pipeline.storage import Store

FORMATS = ("haic", "hmi", "hoigen", "actionart", "webdataset", "parquet")
CLIP_METHODS = ("none", "copy", "encode")
SPLITS = ("train", "test")
EXPORT_JSON = "export.json"
CARD = "README.md"
CLIP_DIR = "clips"


# ---------------------------------------------------------------------------------------------------------- items
@dataclass
class Item:
    """One exported clip (`row`: its manifest row plus what export derives) or one of its annotations (`part`)."""
    row: dict
    part: dict = field(default_factory=dict)


def _letters(options) -> list[str]:
    return [f"({letter}) {o}" for letter, o in zip(LETTERS, options or [])]


def _frame_number(row: dict, t: float) -> int | None:
    """A source-video time as a frame number inside the clip (0: the clip's first frame), at the clip's mean rate
    (its frame count over its span; else the probed rate; None when neither is known)."""
    duration = row["end_s"] - row["start_s"]
    rate = (row.get("scenes_frame_count") or 0) / duration if duration > 0 else 0
    rate = rate or row.get("probe_fps_avg")
    return max(0, round((t - row["start_s"]) * rate)) if rate else None


def _keyframe_times(row: dict) -> list[float]:
    return list(row.get("pose_keyframe_times") or row.get("caption_frame_times") or [])


def _hoi_categories(row: dict) -> str:
    triplets = (row.get("_annotation") or {}).get("triplets") or []
    return "; ".join(" ".join(x for x in (t.get("verb"), t.get("object")) if x) for t in triplets)


@dataclass(frozen=True)
class Field:
    name: str
    source: str  # the manifest column(s) or rule it comes from, as the README shows it
    ours: bool  # True: our choice (the papers leave it unknown); False: the shape papers_spec.md gives
    get: Callable[[Item], Any]


def _col(name: str, column: str, ours: bool = False) -> Field:
    return Field(name, column, ours, lambda it: it.row.get(column))


def _part(name: str, key: str, ours: bool = False, source: str = "annotate_json") -> Field:
    return Field(name, f"{source} .{key}", ours, lambda it: it.part.get(key))


VIDEO = Field("video", "clips/<clip_id>.mp4 with --clips, else video_uri", False, lambda it: it.row["_video"])
CLIP_ID = _col("clip_id", "clip_id", ours=True)
SPLIT = Field("split", "sha256(video_id) < --test-share: test, else train", True, lambda it: it.row["_split"])
START = _col("start", "start_s", ours=True)
END = _col("end", "end_s", ours=True)
CAPTION = Field("caption", "review edit, else mome_caption, else caption_text", False, lambda it: it.row["_caption"])
SOURCE = Field("source", "input list `source`, else the video's folder name", False, lambda it: it.row["_source"])
GUESSABLE = _part("guessable", "guessable", True)  # the blind check's mark; --drop-guessable leaves these out
OPTIONS = Field("options", "annotate_json .options, prefixed (A)..(D)", False, lambda it: _letters(it.part.get("options")))


@dataclass(frozen=True)
class FileSpec:
    stem: str
    kind: str  # jsonl | csv
    unit: str  # what one record is: clip, or a key of the clip's annotate_json (questions, pose_descriptions, ...)
    fields: tuple[Field, ...]
    needs_caption: bool = True


# THE mapping: format -> its files -> their fields, each from a manifest column or a rule. Papers_spec.md §1.5,
# §3.6 and §4.6 give the [P] shapes (ours=False); everything they leave unknown is marked ours=True.
MAPPING: dict[str, tuple[FileSpec, ...]] = {
    "haic": (
        FileSpec("haic_captions", "jsonl", "clip", (VIDEO, CAPTION, CLIP_ID, SPLIT, START, END)),
        FileSpec("haic_bench_qa", "jsonl", "questions", (
            VIDEO, _part("category", "category"), _part("question", "question"), OPTIONS, _part("answer", "answer"),
            GUESSABLE, CLIP_ID, SPLIT)),
    ),
    "hmi": (
        FileSpec("hmi", "jsonl", "clip", (
            VIDEO, SOURCE, _col("start", "start_s"), _col("end", "end_s"),
            Field("keyframes", "pose_keyframe_times (else caption_frame_times) as frame numbers in the clip", False,
                  lambda it: [_frame_number(it.row, t) for t in _keyframe_times(it.row)]),
            CAPTION,
            Field("qa", "annotate_json .questions: dimension, type (open or tf), question, answer (+ guessable: ours)",
                  False,
                  lambda it: [{"dimension": q.get("dimension"), "type": "tf" if q.get("type") == "true_false" else "open",
                               "question": q.get("question"), "answer": q.get("answer"),
                               "guessable": q.get("guessable")} for q in it.row["_questions"]]),
            Field("keyframe_times", "pose_keyframe_times (else caption_frame_times), source-video seconds", True,
                  lambda it: _keyframe_times(it.row)),
            CLIP_ID, SPLIT)),
    ),
    "hoigen": (
        FileSpec("hoigen_caption_info", "csv", "clip", (
            Field("video_path", VIDEO.source, False, VIDEO.get), CAPTION,
            Field("hoi_categories", "annotate_json .triplets as 'verb object; ...'", True, lambda it: _hoi_categories(it.row)),
            SOURCE,
            Field("duration", "end_s - start_s", False, lambda it: round(it.row["end_s"] - it.row["start_s"], 6)),
            _col("fps", "probe_fps_avg"), _col("width", "probe_width"), _col("height", "probe_height"),
            _col("aesthetic", "aesthetic_score"), _col("flow", "motion_score"), _col("ocr_boxes", "ocr_text_boxes"),
            _col("moe_branch", "mome_branch"), CLIP_ID, SPLIT, START, END)),
    ),
    "actionart": (
        FileSpec("actionart_captions", "jsonl", "clip", (VIDEO, CAPTION, CLIP_ID, SPLIT, START, END)),
        FileSpec("actionart_pose", "jsonl", "pose_descriptions", (
            VIDEO, _part("frame_index", "frame_index", True), _part("time", "time", True), _part("text", "text", True),
            CLIP_ID, SPLIT), needs_caption=False),
        FileSpec("actionart_spatial", "jsonl", "spatial_differences", (
            VIDEO, *(_part(k, k, True) for k in ("frame_a", "frame_b", "time_a", "time_b", "text")), CLIP_ID, SPLIT),
            needs_caption=False),
        FileSpec("actionart_qa", "jsonl", "questions", (
            VIDEO, _part("subtask", "subtask", True), _part("question", "question", True),
            Field("options", OPTIONS.source, True, OPTIONS.get), _part("answer", "answer", True), GUESSABLE, CLIP_ID,
            SPLIT),
            needs_caption=False),
    ),
}
# webdataset and parquet carry one flat record per clip: these fields, then every scalar manifest column as is.
FLAT_FIELDS: tuple[Field, ...] = (
    CLIP_ID, VIDEO, SPLIT, CAPTION,
    Field("caption_source", "review, mome_caption or caption_text", True, lambda it: it.row["_caption_source"]),
    SOURCE, Field("license", "input list `license`", True, lambda it: it.row["_license"]),
    Field("duration_s", "end_s - start_s", True, lambda it: it.row["end_s"] - it.row["start_s"]),
    Field("clip_method", "how the clip file was made: copy, encode or none", True, lambda it: it.row["_clip_method"]),
)
FLAT_TYPES = {"duration_s": pa.float64()}
FLAT_SKIP = {"status", "reject_stage", "reject_rule", "reject_value", "reject_threshold", "error_stage", "error_type",
             "error_message", "shard_id", "timings"}
LIST_COLUMNS = ("pose_keyframe_times", "caption_frame_times")  # the only per-frame lists a format reads
ANNOTATION_STYLE = {"haic": "haic", "hmi": "hmi", "hoigen": "hoigen", "actionart": "actionart"}
QUESTION_GROUP = {"haic": "category", "hmi": "dimension", "actionart": "subtask"}


def mapping_rows(fmt: str | None = None) -> list[dict]:
    """The mapping table as rows (format, file, field, source, ours) for the README and the dataset card."""
    out = []
    for name, files in MAPPING.items():
        for spec in files:
            out += [{"format": name, "file": f"{spec.stem}.{spec.kind}", "field": f.name, "source": f.source,
                     "ours": f.ours} for f in spec.fields]
    for name in ("webdataset", "parquet"):
        out += [{"format": name, "file": "<clip_id>.json" if name == "webdataset" else "<split>.parquet",
                 "field": f.name, "source": f.source, "ours": f.ours} for f in FLAT_FIELDS]
        out.append({"format": name, "file": out[-1]["file"], "field": "(every scalar manifest column)",
                    "source": "the column as is (per-frame lists and error fields left out)", "ours": True})
    return [r for r in out if fmt is None or r["format"] == fmt]


def mapping_markdown(fmt: str | None = None) -> str:
    rows = [[r["format"], f"`{r['file']}`", f"`{r['field']}`", r["source"], "ours" if r["ours"] else "papers_spec [P]"]
            for r in mapping_rows(fmt)]
    return "\n".join(_table(["format", "file", "field", "from", "choice"], rows)).rstrip()


# ---------------------------------------------------------------------------------------------------------- export
@dataclass
class ExportOptions:
    output: str  # the run's OUT
    fmt: str
    to: str
    clips: str = "none"
    test_share: float = 0.1
    drop_guessable: bool = False
    samples_per_shard: int = 1000  # webdataset
    workers: int = 4  # clip files cut at once


def video_fraction(video_id: str) -> float:
    """A video's place in [0, 1): the first 60 bits of sha256(video_id)."""
    return int(hashlib.sha256(video_id.encode()).hexdigest()[:15], 16) / 16 ** 15


def _caption(row: dict, edit: dict | None) -> tuple[str | None, str | None]:
    """The exported caption and where it came from: a reviewer's edit wins over the pipeline's final caption."""
    if edit and edit.get("caption"):
        return edit["caption"], "review"
    text = final_caption(row)
    if not text:
        return None, None
    return text, "mome_caption" if text == row.get("mome_caption") else "caption_text"


def split_of(video_id: str, test_share: float) -> str:
    """Stable per video: a video never changes split when the corpus grows, and never sits in two."""
    return "test" if video_fraction(video_id) < test_share else "train"


def _without_clip_file(row: dict) -> dict:
    row["_clip_method"], row["_video"] = "none", row["video_uri"]
    return row


class Tally:
    """What the dataset card and export.json say about the exported clips, counted as they stream past.

    A video's clips arrive one after another (they share a shard, sorted by URI within it), so a video is counted
    when the stream moves on to it: no set of video IDs grows with the run."""

    def __init__(self, question_group: str | None):
        self.question_group = question_group
        self.clips: Counter = Counter()  # split -> clips
        self.videos: Counter = Counter()  # split -> videos
        self.annotated = 0
        self.questions: Counter = Counter()
        self.models: Counter = Counter()  # (column, model) -> clips
        self.licences: Counter = Counter()  # licence -> videos
        self.sources: Counter = Counter()  # source -> videos
        self._video_id: str | None = None
        self._model_columns: dict[tuple, list[str]] = {}

    def counted(self, stream: Iterator[tuple[dict, bytes | None]]) -> Iterator[tuple[dict, bytes | None]]:
        for row, clip in stream:
            self.add(row)
            yield row, clip

    def add(self, row: dict) -> None:
        self.clips[row["_split"]] += 1
        if row["video_id"] != self._video_id:
            self._video_id = row["video_id"]
            self.videos[row["_split"]] += 1
            self.licences[row["_license"] or "not given"] += 1
            self.sources[row["_source"]] += 1
        self.annotated += bool(row["_annotation"])
        if self.question_group:
            self.questions.update(q.get(self.question_group) or "?" for q in row["_questions"])
        columns = tuple(row)  # the same for every row of a shard: find its model columns once
        if columns not in self._model_columns:
            self._model_columns[columns] = [k for k in columns if not k.startswith("_")
                                            and (k.endswith("_model") or k.endswith("_backend"))]
        for k in self._model_columns[columns]:
            if isinstance(row[k], str) and row[k]:
                self.models[(k, row[k])] += 1

    @property
    def total(self) -> int:
        return sum(self.clips.values())

    def splits(self) -> dict:
        return {s: {"clips": self.clips[s], "videos": self.videos[s]} for s in SPLITS}


@dataclass
class ExportResult:
    to: str
    files: list[str]
    stats: dict


class Exporter:
    """Selects the rows, derives what every format shares, then hands them to the format's writer."""

    def __init__(self, opts: ExportOptions):
        if opts.fmt not in FORMATS:
            raise UserError(f"unknown format {opts.fmt!r}; choose one of {', '.join(FORMATS)}")
        if opts.clips not in CLIP_METHODS:
            raise UserError(f"--clips must be one of {', '.join(CLIP_METHODS)}")
        if not 0 <= opts.test_share <= 1:
            raise UserError(f"--test-share must be between 0 and 1 (got {opts.test_share})")
        self.opts = opts
        self.src = Store(opts.output)
        self.plan = read_plan_summary(self.src)
        if self.plan is None:
            raise UserError(f"{opts.output} is not an actcurate output (no plan/plan.json); run `actcurate run` first")
        self.dst = Store(opts.to)
        self.listing: list[str] = []  # every file written, relative to --to
        self.stats: dict[str, Any] = {"left_out": Counter(), "written": Counter(), "clip_methods": Counter(),
                                      "clip_errors": [], "copy_fallbacks": Counter()}

    # -- rows ------------------------------------------------------------------------------------------------------
    def rows(self) -> Iterator[dict]:
        """The accepted rows to export, each with what the formats derive, in (video_uri, start_s, clip_id) order.

        Read one committed shard at a time, so memory holds one shard's rows however large the run: the plan puts
        videos into shards in sorted URI order, and a video's clips are all in its shard, so shard order and then
        the order within a shard is the order of the whole run."""
        shard_ids = self.shard_ids
        if not shard_ids:
            raise UserError(f"{self.opts.output} has no committed shards yet; nothing to export")
        review_rows = self.review_rows
        verdicts, edits = reviews.clip_verdicts(review_rows), reviews.latest_captions(review_rows)
        self.stats["reviewed_records"] = len(review_rows)
        self.stats["review_caption_edits"] = 0
        attributes = read_plan_attributes(self.src)  # licence and source from the input list, where given
        left = self.stats["left_out"]
        for shard_id in shard_ids:
            manifest = read_manifest(self.src, shard_id)
            self.audit.add(manifest)
            table = self._exported_columns(manifest)
            for status, count in Counter(table.column("status").to_pylist()).items():
                if status != "accepted":
                    left[f"pipeline_{status}"] += count
            accepted = table.filter(pc.equal(table.column("status"), "accepted")).to_pylist()
            for row in sorted(accepted, key=lambda r: (r["video_uri"], r["start_s"], r["clip_id"])):
                if verdicts.get(row["clip_id"]) == "reject":
                    left["review_rejected"] += 1
                    continue
                given = attributes.get(row["video_uri"], NO_ATTRIBUTES)
                row["_split"] = split_of(row["video_id"], self.opts.test_share)
                row["_caption"], row["_caption_source"] = _caption(row, edits.get(row["clip_id"]))
                self.stats["review_caption_edits"] += row["_caption_source"] == "review"
                row["_source"] = given["source"] or posixpath.basename(posixpath.dirname(row["video_uri"]))
                row["_license"] = given["license"]
                row["_annotation"] = self._annotation(row)
                row["_questions"] = self._questions(row)
                yield row

    @staticmethod
    def _exported_columns(table: pa.Table) -> pa.Table:
        """Per-frame lists (boxes, keypoints, OCR text) are never exported: they stay in Arrow and are dropped."""
        return table.select([f.name for f in table.schema if not pa.types.is_nested(f.type) or f.name in LIST_COLUMNS])

    @functools.cached_property
    def committed(self) -> dict[str, dict]:
        """The committed shards' records (verified once: on S3 the commit records are requests)."""
        return committed_shards(self.src)

    @functools.cached_property
    def shard_ids(self) -> list[str]:
        return sorted(self.committed)

    @functools.cached_property
    def review_rows(self) -> list[dict]:
        """OUT/reviews' records, read once for the rows and the card's audit."""
        return reviews.read_reviews(self.src).to_pylist()

    @functools.cached_property
    def audit(self) -> AuditPass:
        """The run's audit for the card, fed the manifests `rows` reads (no second pass over them)."""
        return AuditPass(self.src, self.plan, self.committed, self.review_rows)

    @functools.cached_property
    def schema(self) -> pa.Schema:
        """The exported columns of every committed shard as one schema (a column a recipe change added is null in
        older shards), from the Parquet footers alone."""
        schemas = [read_manifest_schema(self.src, s) for s in self.shard_ids]
        unified = pa.unify_schemas(schemas, promote_options="permissive")
        return self._exported_columns(unified.empty_table()).schema

    def _annotation(self, row: dict) -> dict | None:
        """The clip's annotations when they are of this format's style (haic QA makes no hmi QA)."""
        style = ANNOTATION_STYLE.get(self.opts.fmt)
        text = row.get("annotate_json")
        if not text or (style and row.get("annotate_style") != style):
            return None
        try:
            return json.loads(text)
        except ValueError:
            self.stats["left_out"]["unreadable_annotate_json"] += 1
            return None

    def _questions(self, row: dict) -> list[dict]:
        questions = list((row["_annotation"] or {}).get("questions") or [])
        if self.opts.drop_guessable:
            guessable = [q for q in questions if q.get("guessable")]
            if guessable:
                self.stats["left_out"]["guessable_questions"] += len(guessable)
            questions = [q for q in questions if not q.get("guessable")]
        return questions

    # -- files -----------------------------------------------------------------------------------------------------
    def put(self, rel: str, data: bytes) -> None:
        self.dst.write_bytes(rel, data, sync=False)
        self.listing.append(rel)

    def put_file(self, rel: str, source) -> None:
        self.dst.write_from(rel, source)
        self.listing.append(rel)

    def clip_stream(self, rows: Iterable[dict]) -> Iterator[tuple[dict, bytes | None]]:
        """Each row with its clip file's bytes (None with --clips none), in order, cut `workers` at a time with at
        most twice that many files in memory; a clip whose file cannot be made is left out and counted."""
        rows = (_without_clip_file(row) for row in rows)
        if self.opts.clips == "none":
            yield from ((row, None) for row in rows)
            return
        from manifests.export_clips import cut_clip  # PyAV only when clip files are asked for

        def cut(row):
            try:
                return cut_clip(row["video_uri"], row["start_s"], row["end_s"], self.opts.clips,
                                row.get("scenes_frame_count"))
            except Exception as exc:  # a source gone or unreadable: this clip only
                return exc

        workers = max(1, self.opts.workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque = deque()
            todo = iter(rows)
            for row in itertools.islice(todo, 2 * workers):
                pending.append((row, pool.submit(cut, row)))
            while pending:
                row, future = pending.popleft()
                for nxt in itertools.islice(todo, 1):
                    pending.append((nxt, pool.submit(cut, nxt)))
                result = future.result()
                if isinstance(result, Exception):
                    self.stats["clip_errors"].append({"clip_id": row["clip_id"],
                                                      "error": f"{type(result).__name__}: {result}"[:300]})
                    self.stats["left_out"]["clip_file_error"] += 1
                    continue
                row["_video"], row["_clip_method"] = f"{CLIP_DIR}/{row['clip_id']}.mp4", result.method
                self.stats["clip_methods"][result.method] += 1
                if result.note:
                    self.stats["copy_fallbacks"][result.note] += 1
                yield row, result.data

    # -- run -------------------------------------------------------------------------------------------------------
    def run(self) -> ExportResult:
        self._check_destination()
        writer = WRITERS[self.opts.fmt](self)
        self.tally = Tally(QUESTION_GROUP.get(self.opts.fmt))
        writer.write(self.tally.counted(self.clip_stream(writer.select(self.rows()))))
        self.stats["splits"] = self.tally.splits()
        self.stats["questions"] = dict(sorted(self.tally.questions.items()))
        self.put(CARD, render_card(self, self.tally).encode())
        listing = sorted([*self.listing, EXPORT_JSON])
        summary = self._summary(listing)
        self.put(EXPORT_JSON, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
        return ExportResult(self.dst.root, listing, summary)

    def _summary(self, listing: list[str]) -> dict:
        s = self.stats
        return {"format": self.opts.fmt, "clips": self.opts.clips, "test_share": self.opts.test_share,
                "drop_guessable": self.opts.drop_guessable, "run": self.src.root, "splits": s["splits"],
                "written": dict(sorted(s["written"].items())), "left_out": dict(sorted(s["left_out"].items())),
                "clip_methods": dict(sorted(s["clip_methods"].items())),
                "copy_fallbacks": dict(sorted(s["copy_fallbacks"].items())), "clip_errors": s["clip_errors"],
                "questions": s["questions"], "review_caption_edits": s["review_caption_edits"], "files": listing}

    def _check_destination(self) -> None:
        """Into an empty folder, or over an earlier export (its files are replaced; files it no longer makes go)."""
        import pyarrow.fs as pafs

        infos = self.dst.fs.get_file_info(pafs.FileSelector(self.dst.base, allow_not_found=True, recursive=True))
        present = {posixpath.relpath(i.path, self.dst.base) for i in infos if i.type == pafs.FileType.File}
        if not present:
            return
        if EXPORT_JSON not in present:
            raise UserError(f"{self.dst.root} is not empty and holds no earlier export; choose an empty --to")
        previous = set(json.loads(self.dst.read_bytes(EXPORT_JSON)).get("files", []))
        for rel in sorted(previous & present):
            self.dst.delete(rel)


# ---------------------------------------------------------------------------------------------------------- writers
class Writer:
    """One format: which rows it takes and the files it writes (through exporter.put / put_file), with counts.
    Rows stream through once; a format's files are spooled to temporary files and uploaded whole at the end."""

    def __init__(self, exporter: Exporter):
        self.ex = exporter
        self.fmt = exporter.opts.fmt

    def select(self, rows: Iterable[dict]) -> Iterable[dict]:
        return rows

    def write(self, stream: Iterator[tuple[dict, bytes | None]]) -> None:
        """Consume (row, clip file bytes or None) in order."""
        for row, clip in stream:
            if clip is not None:
                self.ex.put(row["_video"], clip)
            self.add(row)
        self.finish()

    def add(self, row: dict) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class TextSpool:
    """A text file written line by line to a temporary file, uploaded when closed."""

    def __init__(self):
        self.raw = tempfile.TemporaryFile()
        self.text = io.TextIOWrapper(self.raw, encoding="utf-8", newline="")
        self.records = 0

    def upload(self, ex: Exporter, path: str) -> None:
        self.text.flush()
        self.text.detach()
        self.raw.seek(0)
        ex.put_file(path, self.raw)
        self.raw.close()
        ex.stats["written"][path] = self.records


class TableWriter(Writer):
    """The JSONL/CSV formats (haic, hmi, hoigen, actionart): files per split, records from MAPPING."""

    def __init__(self, exporter: Exporter):
        super().__init__(exporter)
        self.spools: dict[tuple[int, str], tuple[TextSpool, csv.DictWriter | None]] = {}

    def select(self, rows):
        if not any(spec.needs_caption for spec in MAPPING[self.fmt]):
            yield from rows
            return
        for row in rows:
            if row["_caption"]:
                yield row
            else:
                self.ex.stats["left_out"]["no_caption"] += 1

    def add(self, row):
        for index, spec in enumerate(MAPPING[self.fmt]):
            for item in self._items(spec, row):
                record = {f.name: f.get(item) for f in spec.fields}
                spool, writer = self._spool(index, spec, row["_split"])
                if writer is None:
                    spool.text.write(json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n")
                else:
                    writer.writerow(record)
                spool.records += 1

    def _spool(self, index: int, spec: FileSpec, split: str) -> tuple[TextSpool, csv.DictWriter | None]:
        """A file is opened at its first record: no empty files (the card says what is absent)."""
        key = (index, split)
        if key not in self.spools:
            spool = TextSpool()
            writer = None
            if spec.kind == "csv":
                writer = csv.DictWriter(spool.text, fieldnames=[f.name for f in spec.fields], lineterminator="\n")
                writer.writeheader()
            self.spools[key] = (spool, writer)
        return self.spools[key]

    def finish(self):
        specs = MAPPING[self.fmt]
        for (index, split), (spool, _) in sorted(self.spools.items()):
            spool.upload(self.ex, f"{specs[index].stem}.{split}.{specs[index].kind}")

    @staticmethod
    def _items(spec: FileSpec, row: dict) -> Iterator[Item]:
        if spec.unit == "clip":
            yield Item(row)
        elif spec.unit == "questions":
            yield from (Item(row, q) for q in row["_questions"])
        else:
            yield from (Item(row, p) for p in (row["_annotation"] or {}).get(spec.unit) or [])


class FlatWriter(Writer):
    """webdataset and parquet: one flat record per clip (FLAT_FIELDS, then the scalar manifest columns)."""

    @functools.cached_property
    def schema(self) -> pa.Schema:
        derived = [pa.field(f.name, FLAT_TYPES.get(f.name, pa.string())) for f in FLAT_FIELDS]
        names = {f.name for f in derived}
        scalar = [f for f in self.ex.schema if f.name not in FLAT_SKIP and f.name not in names
                  and not pa.types.is_nested(f.type)]
        return pa.schema(derived + scalar)

    @functools.cached_property
    def scalar_names(self) -> list[str]:
        return self.schema.names[len(FLAT_FIELDS):]

    def record(self, row: dict) -> dict:
        item = Item(row)
        record = {f.name: f.get(item) for f in FLAT_FIELDS}
        record.update((name, row.get(name)) for name in self.scalar_names)
        return record


class ParquetWriter(FlatWriter):
    """`parquet/<split>.parquet`, written a row group at a time; records wait as Arrow batches, not Python dicts."""

    BATCH = 1_000  # records turned into Arrow at a time
    ROW_GROUP = 20_000

    def __init__(self, exporter: Exporter):
        super().__init__(exporter)
        self.records: dict[str, list[dict]] = defaultdict(list)
        self.batches: dict[str, list[pa.Table]] = defaultdict(list)
        self.files: dict[str, tuple[Any, pq.ParquetWriter]] = {}
        self.written: Counter = Counter()

    def add(self, row):
        split = row["_split"]
        self.records[split].append(self.record(row))
        self.written[split] += 1
        if len(self.records[split]) == self.BATCH:
            self._batch(split)
            if sum(t.num_rows for t in self.batches[split]) >= self.ROW_GROUP:
                self._write(split)

    def _batch(self, split: str) -> None:
        records = self.records.pop(split, [])
        if records:
            self.batches[split].append(pa.Table.from_pylist(records, schema=self.schema))

    def _write(self, split: str) -> None:
        if split not in self.files:
            spool = tempfile.TemporaryFile()
            self.files[split] = (spool, pq.ParquetWriter(spool, self.schema, compression="zstd"))
        self.files[split][1].write_table(pa.concat_tables(self.batches.pop(split)), row_group_size=self.ROW_GROUP)

    def finish(self):
        for split in SPLITS:
            self._batch(split)
            if self.batches.get(split):
                self._write(split)
            if split not in self.files:
                continue
            spool, writer = self.files.pop(split)
            writer.close()
            spool.seek(0)
            path = f"parquet/{split}.parquet"
            self.ex.put_file(path, spool)
            spool.close()
            self.ex.stats["written"][path] = self.written[split]


class WebDatasetWriter(FlatWriter):
    """Tar shards `webdataset/<split>-NNNNNN.tar`; a sample = `<clip_id>.json` (+ `<clip_id>.mp4` with --clips).
    Members in sorted order with fixed owner, mode and time, so the same rows give the same bytes. Each split's
    open shard is spooled to a temporary file and uploaded when full: clip files never pile up in memory."""

    def write(self, stream):
        size = max(1, self.ex.opts.samples_per_shard)
        open_shards: dict[str, tuple[tarfile.TarFile, Any, int]] = {}
        shard_index: Counter = Counter()
        for row, clip in stream:
            split = row["_split"]
            if split not in open_shards:
                spool = tempfile.TemporaryFile()
                open_shards[split] = (tarfile.open(fileobj=spool, mode="w", format=tarfile.USTAR_FORMAT), spool, 0)
            tar, spool, count = open_shards[split]
            self._add_sample(tar, row, clip)
            open_shards[split] = (tar, spool, count + 1)
            if count + 1 == size:
                self._close(split, shard_index, *open_shards.pop(split))
        for split in sorted(open_shards):
            self._close(split, shard_index, *open_shards.pop(split))

    def _add_sample(self, tar: tarfile.TarFile, row: dict, clip: bytes | None) -> None:
        key = row["clip_id"]
        record = self.record(row)
        members = []
        if clip is not None:
            record["video"] = f"{key}.mp4"
            members.append((f"{key}.mp4", clip))
        members.append((f"{key}.json", json.dumps(record, sort_keys=True, ensure_ascii=False).encode()))
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            tar.addfile(info, io.BytesIO(data))

    def _close(self, split: str, shard_index: Counter, tar: tarfile.TarFile, spool, count: int) -> None:
        tar.close()
        spool.seek(0)
        path = f"webdataset/{split}-{shard_index[split]:06d}.tar"
        shard_index[split] += 1
        self.ex.put_file(path, spool)
        spool.close()
        self.ex.stats["written"][path] = count


WRITERS: dict[str, type[Writer]] = {"haic": TableWriter, "hmi": TableWriter, "hoigen": TableWriter,
                                    "actionart": TableWriter, "parquet": ParquetWriter, "webdataset": WebDatasetWriter}


def export(opts: ExportOptions) -> ExportResult:
    return Exporter(opts).run()


# ---------------------------------------------------------------------------------------------------------- card
def _cell(value) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(v) for v in r) + " |" for r in rows), ""]


def front_matter(written: list[str]) -> list[str]:
    """The Hugging Face card header: one config per file kind, its splits' files, so that
    `datasets.load_dataset(DIR, "<config>")` loads it."""
    configs: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(written):
        if path.startswith("webdataset/"):
            split = posixpath.basename(path).split("-")[0]
            configs["default"][split] = f"webdataset/{split}-*.tar"
        elif path.startswith("parquet/"):
            configs["default"][posixpath.basename(path).split(".")[0]] = path
        else:
            stem, split, _ = path.split(".")
            configs[stem][split] = path
    out = ["---", "configs:"]
    for name, splits in configs.items():
        out += [f"- config_name: {name}", "  data_files:"]
        out += [f"  - split: {split}\n    path: {path}" for split, path in splits.items()]
    return [*out, "---", ""]


def render_card(ex: Exporter, tally: Tally) -> str:
    opts, stats = ex.opts, ex.stats
    info = run_info(ex.src) or {}
    recipe = info.get("recipe", {})
    report = ex.audit.report()
    out = [*front_matter(list(stats["written"])), f"# {recipe.get('name', 'actcurate')} — {opts.fmt} export", "",
           f"Curated with actcurate from `{ex.src.root}` (recipe `{recipe.get('name')}`, hash "
           f"`{info.get('recipe_hash')}`). Format `{opts.fmt}`; clip files: `{opts.clips}`.", "",
           "## Contents", ""]
    out += _table(["split", "clips", "videos"], [[s, stats["splits"][s]["clips"], stats["splits"][s]["videos"]]
                                                  for s in SPLITS])
    out.append(f"Split by source video (no video in two splits): a video is in `test` when the first 60 bits of "
               f"sha256(video_id) / 2^60 < {opts.test_share} (`--test-share`), else in `train`.")
    out.append("")
    out += ["## Files", ""]
    out += _table(["file", "records"], [[f"`{p}`", n] for p, n in sorted(stats["written"].items())])
    style = ANNOTATION_STYLE.get(opts.fmt)
    if style:
        if not tally.annotated:
            out.append(f"No clip carries `{style}` annotations (the annotate stage did not run with style `{style}`): "
                       f"QA and other annotation files are absent or empty; the captions are complete.")
        else:
            out.append(f"{tally.annotated} of {tally.total} clips carry `{style}` annotations.")
        out.append("")
    if stats["questions"]:
        out += [f"### Questions by {QUESTION_GROUP[opts.fmt]}", ""]
        out += _table([QUESTION_GROUP[opts.fmt], "questions"], [[k, v] for k, v in stats["questions"].items()])
    out += ["## Left out", ""]
    left = dict(stats["left_out"])
    notes = {"pipeline_rejected": "rejected by a filter (see the funnel)", "pipeline_error": "errors in the run",
             "review_rejected": "accepted by the pipeline, rejected in review (OUT/reviews)",
             "no_caption": "accepted but without a caption", "guessable_questions":
             "questions the blind text-only model answered (annotate_json .guessable), left out by --drop-guessable",
             "clip_file_error": "the clip file could not be cut", "unreadable_annotate_json": "annotations unreadable"}
    out += _table(["what", "count", "meaning"], [[k, v, notes.get(k, "")] for k, v in sorted(left.items())])
    out.append(f"Reviews: {stats['reviewed_records']} review records; {left.get('review_rejected', 0)} clips left out "
               f"by review; {stats['review_caption_edits']} exported captions are reviewers' edits.")
    out += ["", "## How the clips were curated", "", "Stages and parameters (thresholds) of the recipe, in order:", ""]
    out += _table(["stage", "parameters"], [[name, ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(p.items()))
                                            or "(defaults)"] for s in recipe.get("stages", []) for name, p in s.items()])
    out += ["Funnel (units: videos before the split into clips, clips after):", ""]
    out += _table(["stage", "in", "out"], [[f["stage"], f["in"], f["out"]] for f in report["funnel"]])
    if report["reasons"]:
        out += ["Rejections by rule:", ""]
        out += _table(["stage", "rule", "clips"], [[r["stage"], r["rule"], r["count"]] for r in report["reasons"]])
    for qa in report.get("qa", []):  # the annotate stage's QA checks, over the whole run (the audit's figures)
        out += [f"Questions of `{qa['stage']}` in the run: {qa['kept']} kept on accepted clips, "
                f"{qa['guessable']} of them marked guessable; dropped by QA rule:", ""]
        out += _table(["rule", "questions"], [[k, v] for k, v in qa["dropped"].items()]) if qa["dropped"] \
            else ["(none)", ""]
    out += ["## Models", ""]
    models = tally.models
    out += _table(["column", "model", "clips"], [[f"`{k}`", v, n] for (k, v), n in sorted(models.items())]) if models \
        else ["No model columns in the exported rows.", ""]
    out += ["## Sources and licences", "", "As given in the input list (`license`, `source` columns):", ""]
    out += _table(["licence", "videos"], [[k, n] for k, n in sorted(tally.licences.items())])
    out += _table(["source", "videos"], [[k, n] for k, n in sorted(tally.sources.items())])
    if opts.clips != "none":
        out += ["## Clip files", "",
                "Each clip is its manifest span [start_s, end_s) of the source video, video only. `copy`: the packets "
                "stream-copied where the span starts on a keyframe and needs no frame outside it; otherwise (and "
                "with `--clips encode`) re-encoded with libx264 (crf 18, fixed options).", ""]
        out += _table(["method", "clips"], [[k, v] for k, v in sorted(stats["clip_methods"].items())])
        if stats["copy_fallbacks"]:
            out += _table(["copy fell back to encode because", "clips"],
                          [[k, v] for k, v in sorted(stats["copy_fallbacks"].items())])
    out += ["## Fields", "", "Where the papers leave a field unknown, the choice is ours (marked so).", "",
            mapping_markdown(opts.fmt), ""]
    return "\n".join(out)
