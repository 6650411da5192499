"""Local paths and S3 behind one small interface (pyarrow.fs), for inputs and for the output tree.

S3 settings come from the environment only: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for a non-AWS server,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION).
"""

from __future__ import annotations

import functools
import os
import posixpath
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipeline.errors import UserError


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def normalize_uri(uri: str) -> str:
    """S3 URIs stay as they are; local paths become absolute, so IDs do not depend on the working directory."""
    if is_s3(uri):
        return uri
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    return os.path.abspath(os.path.expanduser(uri))


# A crawl's S3 answers 503 SlowDown, resets connections and stalls at times: pyarrow's default is 3 attempts, too few
# for a run of hours. Each attempt backs off (the AWS SDK's standard strategy); reads and PUTs of whole objects are
# idempotent, so a retried PUT whose first answer was lost only writes the same bytes again.
S3_MAX_ATTEMPTS = int(os.environ.get("ACTCURATE_S3_MAX_ATTEMPTS", "10"))
S3_REQUEST_TIMEOUT_S = float(os.environ.get("ACTCURATE_S3_REQUEST_TIMEOUT_S", "60"))
S3_CONNECT_TIMEOUT_S = float(os.environ.get("ACTCURATE_S3_CONNECT_TIMEOUT_S", "10"))


@functools.lru_cache(maxsize=None)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {"region": region or "us-east-1",
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
                    "request_timeout": S3_REQUEST_TIMEOUT_S, "connect_timeout": S3_CONNECT_TIMEOUT_S}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _s3_filesystem(endpoint, region)


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), normalize_uri(uri)


def open_input(uri: str):
    """A seekable binary file for PyAV: a local path as is, an S3 object as a random-access stream."""
    if is_s3(uri):
        fs, path = filesystem_and_path(uri)
        return fs.open_input_file(path)
    return normalize_uri(uri)


def file_info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem_and_path(uri)
    return fs.get_file_info(path)


class Store:
    """A directory tree rooted at a local path or an s3://bucket/prefix; every path given to it is relative."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if is_s3(root) else normalize_uri(root)
        self.fs, self.base = filesystem_and_path(self.root)
        self.local = not is_s3(self.root)

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _path(self, rel: str) -> str:
        return posixpath.join(self.base, rel) if rel else self.base

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def size(self, rel: str) -> int | None:
        info = self.fs.get_file_info(self._path(rel))
        return None if info.type == pafs.FileType.NotFound else info.size

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def open_input_file(self, rel: str):
        """A random-access reader (Arrow's NativeFile): a reader of a file's footer fetches only that part."""
        return self.fs.open_input_file(self._path(rel))

    def write_bytes(self, rel: str, data: bytes, sync: bool = True) -> None:
        """Atomic: a reader sees the old content or the new, never a partial file.

        Locally: write a temporary name in the same folder, then rename. On S3 an object appears only once its
        upload completes, so one PUT is already atomic. `sync=False` skips the fsync (a killed process loses
        nothing; a machine crash may leave the file empty): for records a reader can do without.
        """
        path = self._path(rel)
        if self.local:
            _replace_local(path, lambda f: f.write(data), sync)
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def write_from(self, rel: str, source) -> None:
        """Like write_bytes, from a binary file object copied in chunks (large files never held in memory)."""
        path = self._path(rel)
        if self.local:
            _replace_local(path, lambda f: shutil.copyfileobj(source, f, 1 << 20), sync=False)
        else:
            with self.fs.open_output_stream(path) as f:
                shutil.copyfileobj(source, f, 1 << 20)

    def list(self, rel_dir: str) -> list[str]:
        """Names (not paths) of the files directly under rel_dir, sorted; empty if the folder does not exist."""
        selector = pafs.FileSelector(self._path(rel_dir), allow_not_found=True, recursive=False)
        infos = self.fs.get_file_info(selector)
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and ".tmp-" not in i.base_name)

    def list_info(self, rel_dir: str) -> dict[str, tuple[int, int]]:
        """The files directly under rel_dir (as `list`) with their size and modification time (ns), from one
        listing: on S3 one paginated LIST, without a request per object."""
        selector = pafs.FileSelector(self._path(rel_dir), allow_not_found=True, recursive=False)
        return {i.base_name: (i.size, i.mtime_ns) for i in self.fs.get_file_info(selector)
                if i.type == pafs.FileType.File and ".tmp-" not in i.base_name}

    def remove_stale_temporaries(self, rel_dir: str) -> int:
        """Remove the temporary files of local writes that never finished (a writer killed between its write and
        its rename) directly under rel_dir, once they are older than any write still in flight. Returns how many."""
        if not self.local:
            return 0  # an S3 object appears whole or not at all
        removed, cutoff = 0, time.time() - STALE_TEMPORARY_S
        try:
            entries = list(os.scandir(self._path(rel_dir)))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if ".tmp-" in entry.name and entry.is_file() and entry.stat().st_mtime < cutoff:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self._path(rel))


# A temporary file this old is no write in flight (a manifest's write takes seconds), even from another run on the
# same OUT: its writer was killed.
STALE_TEMPORARY_S = 3600.0


def _replace_local(path: str, write, sync: bool) -> None:
    """Write a temporary name beside `path`, then rename it over `path`. A failed write (a full disk, a file size
    limit) removes its temporary file rather than leave the partial bytes on the full disk."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_parquet_bytes(data: bytes):
    """A Parquet table from bytes in memory, read through Arrow's own buffer, not a Python file object: a read_table
    over io.BytesIO leaves Arrow's I/O threads a close that needs the GIL, and a process that exits meanwhile aborts
    at times ("terminate called without an active exception", exit 134 after its output; apache/arrow#33975)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))


def check_writable(store: Store) -> None:
    """Fail early, before any video is touched, when OUT cannot be written (bad bucket, read-only folder)."""
    probe = f".write-check-{uuid.uuid4().hex[:8]}"
    try:
        store.write_bytes(probe, b"ok")
        store.delete(probe)
    except Exception as exc:  # pyarrow raises OSError subclasses with the S3 error text
        raise UserError(f"cannot write to output {store.root}: {exc}") from None
