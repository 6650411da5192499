"""A local OUT that cannot take a shard's manifest (a full disk, a quota): the shard stays pending with one line, no
partial file is left on the disk, and the next run completes it with the rows an uninterrupted run writes (and
removes what a killed writer left long ago).

The fault is real: the run's process gets a file size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write past
it fails with EFBIG as a write to a full disk fails with ENOSPC), under the manifests' size and over the run's other
files (run.json, the plan, commit records)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest

import media
from fixtures_run import clip_rows

pytestmark = pytest.mark.slow
COMMON = ["--recipe", "quickstart", "--shard-size", "1", "--no-progress", "--executor", "local"]
FILE_LIMIT = 16 * 1024  # these runs' run.json is 8 KB, their manifests 36 KB


def actcurate(*args, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit if file_limit else None)


def test_a_manifest_the_disk_cannot_take_leaves_its_shard_pending_and_no_partial_file(tmp_path):
    for i in range(3):
        media.make_video(tmp_path / "in" / f"v{i}.mp4", segments=(60, 55), fps=25, seed=i)
    reference = actcurate("run", *COMMON, "--input", tmp_path / "in", "--output", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "out"
    full = actcurate("run", *COMMON, "--input", tmp_path / "in", "--output", out, file_limit=FILE_LIMIT)
    assert full.returncode == 1, full.stderr[-3000:]
    for shard in ("shard-000000", "shard-000001", "shard-000002"):
        assert f"{shard} could not be committed and stays pending: [Errno 27] File too large" in full.stderr
    assert "3 shard(s) did not complete" in full.stdout and "Traceback" not in full.stderr
    assert not [p.name for p in out.rglob("*") if ".tmp-" in p.name]  # the partial manifests were removed
    assert not list(out.glob("commits/*.json"))  # nothing counted done

    # what a writer killed between its write and its rename leaves (hours ago), and one another run is writing now
    stale, young = out / "manifests" / "shard-000001.parquet.tmp-0badf00d", out / "run.json.tmp-12345678"
    for path in (stale, young):
        path.write_bytes(b"PAR1 cut short")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    resumed = actcurate("run", *COMMON, "--output", out)
    assert resumed.returncode == 0 and "3 of 3 shards" in resumed.stdout, resumed.stderr[-3000:]
    assert clip_rows(str(out)) == clip_rows(str(tmp_path / "reference"))
    assert not stale.exists() and young.exists()  # removed once older than any write in flight
