"""Source captions: the caption a clip's source dataset already had (HMI captions from the keyframes plus the
source dataset's original caption [E3]), read from a list file with `uri` and `caption` columns, which may be the
run's own input list."""

from __future__ import annotations

import csv
import io
import json


from pipeline.errors import UserError
from pipeline.inputs import _resolve_entry
from pipeline.storage import filesystem_and_path, read_parquet_bytes


def read_source_captions(spec: str) -> dict[str, str]:
    """{video URI (as the plan writes it): caption}; a row without a caption is left out."""
    fs, path = filesystem_and_path(spec)
    try:
        with fs.open_input_file(path) as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"caption.source_captions: cannot read {spec}: {exc}") from None
    lower = spec.lower()
    if lower.endswith(".parquet"):
        rows = read_parquet_bytes(data).to_pylist()
    elif lower.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    elif lower.endswith(".jsonl"):
        try:
            rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        except ValueError as exc:
            raise UserError(f"caption.source_captions: {spec} is not JSON lines ({exc})") from None
    else:
        raise UserError(f"caption.source_captions: {spec} must be a .csv, .jsonl or .parquet list")
    if rows and not {"uri", "caption"} <= set(rows[0]):
        raise UserError(f"caption.source_captions: {spec} needs 'uri' and 'caption' columns "
                        f"(it has: {', '.join(rows[0])})")
    return {_resolve_entry(spec, str(r["uri"]).strip()): str(r["caption"]).strip()
            for r in rows if r.get("uri") and r.get("caption") and str(r["caption"]).strip()}
