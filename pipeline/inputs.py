"""Turn an input spec (directory, glob, list file or s3://prefix) into a sorted list of unique video URIs."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import posixpath
from collections.abc import Mapping
from types import MappingProxyType

import pyarrow.fs as pafs

from pipeline.errors import UserError
from pipeline.storage import filesystem_and_path, is_s3, normalize_uri, read_parquet_bytes

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .flv .wmv .3gp .ogv .asf .vob".split()
)
LIST_EXTENSIONS = (".txt", ".csv", ".jsonl", ".parquet")
# Optional per-video columns of a csv/jsonl/parquet list, kept in the plan for the exported dataset card.
LIST_ATTRIBUTES = ("license", "source")
NO_ATTRIBUTES = MappingProxyType(dict.fromkeys(LIST_ATTRIBUTES))  # shared by every URI a list gives none for
_GLOB_CHARS = set("*?[")


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def list_inputs(spec: str) -> list[str]:
    """Sorted, de-duplicated URIs. Entries of a list file are kept even if missing: they become error rows."""
    return list(read_inputs(spec))


def read_inputs(spec: str) -> dict[str, Mapping]:
    """Sorted, de-duplicated URIs -> their list attributes ({"license", "source"}: None where not given; the first
    entry of a URI listed twice wins)."""
    if not spec:
        raise UserError("no input given: pass --input with a directory, glob, list file or s3://bucket/prefix")
    entries: list[tuple[str, Mapping]] = []
    if spec.lower().endswith(LIST_EXTENSIONS):
        entries = _read_list_file(spec)
        uris = [u for u, _ in entries]
    elif is_s3(spec):
        uris = _list_tree(spec)
    elif _GLOB_CHARS & set(spec):
        uris = [normalize_uri(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(spec):
        uris = _list_tree(spec)
    elif os.path.isfile(spec):
        uris = [normalize_uri(spec)]
    else:
        raise UserError(f"input not found: {spec}")
    unique = sorted(set(uris))
    if not unique:
        raise UserError(f"no videos found in {spec} (extensions: {' '.join(sorted(VIDEO_EXTENSIONS))})")
    if not any(any(attrs.values()) for _, attrs in entries):  # most lists: no per-URI mapping to build
        return dict.fromkeys(unique, NO_ATTRIBUTES)
    attributes: dict[str, Mapping] = {}
    for uri, attrs in entries:
        attributes.setdefault(uri, attrs)
    return {u: attributes.get(u, NO_ATTRIBUTES) for u in unique}


def _attributes(row: dict) -> dict:
    return {k: (str(row[k]).strip() or None) if row.get(k) is not None else None for k in LIST_ATTRIBUTES}


def _list_tree(root: str) -> list[str]:
    fs, path = filesystem_and_path(root)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise UserError(f"cannot list {root}: {exc}") from None
    if is_s3(root):
        return [f"s3://{i.path}" for i in infos if i.type == pafs.FileType.File and is_video_name(i.base_name)]
    return [i.path for i in infos if i.type == pafs.FileType.File and is_video_name(i.base_name)]


def _read_list_file(spec: str) -> list[tuple[str, Mapping]]:
    fs, path = filesystem_and_path(spec)
    try:
        with fs.open_input_file(path) as f:
            data = f.read()
    except (OSError, FileNotFoundError) as exc:
        raise UserError(f"cannot read input list {spec}: {exc}") from None
    lower = spec.lower()
    if lower.endswith(".parquet"):
        table = read_parquet_bytes(data)
        if "uri" not in table.column_names:
            raise UserError(f"input list {spec} has no 'uri' column (columns: {', '.join(table.column_names)})")
        entries = [(r["uri"], _attributes(r)) for r in table.to_pylist() if r["uri"]]
    elif lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        if not reader.fieldnames or "uri" not in reader.fieldnames:
            raise UserError(f"input list {spec} has no 'uri' column in its header")
        entries = [(row["uri"].strip(), _attributes(row)) for row in reader if (row.get("uri") or "").strip()]
    elif lower.endswith(".jsonl"):
        entries = []
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                entries.append((row["uri"], _attributes(row)))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{spec} line {n}: expected a JSON object with a 'uri' key") from None
    else:
        lines = (line.strip() for line in data.decode("utf-8").splitlines())
        entries = [(line, NO_ATTRIBUTES) for line in lines if line and not line.startswith("#")]
    return [(_resolve_entry(spec, e), attrs) for e, attrs in entries]


def _resolve_entry(list_uri: str, entry: str) -> str:
    """Relative entries are relative to the list file's folder, as a user who moves both together expects."""
    if is_s3(entry) or entry.startswith("file://") or os.path.isabs(entry):
        return normalize_uri(entry)
    if is_s3(list_uri):
        return posixpath.join(posixpath.dirname(list_uri), entry)
    return normalize_uri(os.path.join(os.path.dirname(normalize_uri(list_uri)), entry))
