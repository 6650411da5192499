"""The model registry against a real local HTTP server: resume, checksums, interruption, offline, resolution."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from fixtures_registry import registered_artifacts
from httpfiles import FileServer
from httpproxy import ForwardProxy
from pipeline import models
from pipeline.errors import UserError
from pipeline.models import ChecksumMismatch

PAYLOAD = os.urandom(3 * models.CHUNK + 12345)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A test artifact served from the fake hub; cache and model folders in tmp."""
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ACTCURATE_MODELS", raising=False)
    with registered_artifacts() as add:
        yield add


def test_pull_verifies_and_resolves_from_the_cache(registry, monkeypatch, tmp_path):
    with FileServer({"/org/repo/resolve/main/w.onnx": PAYLOAD}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        registry(name="t", filename="w.onnx", source="hf:org/repo/w.onnx", sha256=DIGEST, size=len(PAYLOAD))
        path, note = models.pull("t")
    assert path.read_bytes() == PAYLOAD and note == "checksum verified"
    assert models.resolve("t") == tmp_path / "cache" / "w.onnx"
    again, note = models.pull("t")  # nothing fetched twice
    assert note == "already present, checksum verified"


def test_interrupted_download_resumes_with_a_range_request(registry, monkeypatch, tmp_path):
    with FileServer({"/w.onnx": PAYLOAD}) as hub:
        registry(name="t", filename="w.onnx", source=f"{hub.url}/w.onnx", sha256=DIGEST)
        hub.cut_after["/w.onnx"] = 2 * models.CHUNK + 7
        with pytest.raises(UserError, match="partial file is kept"):
            models.pull("t", timeout=5)
        part = tmp_path / "cache" / "w.onnx.part"
        assert part.stat().st_size == 2 * models.CHUNK + 7
        assert not (tmp_path / "cache" / "w.onnx").exists()  # never a partial file under the final name
        path, _ = models.pull("t", timeout=5)
        assert hub.requests[-1] == ("/w.onnx", f"bytes={2 * models.CHUNK + 7}-")
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_server_without_range_support_restarts_cleanly(registry, tmp_path):
    with FileServer({"/w.onnx": PAYLOAD}, honour_range=False) as hub:
        registry(name="t", filename="w.onnx", source=f"{hub.url}/w.onnx", sha256=DIGEST)
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "w.onnx.part").write_bytes(PAYLOAD[:1000])
        path, _ = models.pull("t")
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing_under_the_final_name(registry, tmp_path):
    with FileServer({"/w.onnx": PAYLOAD}) as hub:
        registry(name="t", filename="w.onnx", source=f"{hub.url}/w.onnx", sha256="0" * 64)
        with pytest.raises(ChecksumMismatch, match="does not match"):
            models.pull("t")
    assert not list((tmp_path / "cache").glob("w.onnx*"))


def test_unknown_checksum_is_pinned_on_first_pull_and_enforced_after(registry, tmp_path):
    files = {"/w.onnx": PAYLOAD}
    with FileServer(files) as hub:
        registry(name="t", filename="w.onnx", source=f"{hub.url}/w.onnx")
        path, note = models.pull("t")
        assert "pinned sha256" in note and DIGEST in note
        assert (tmp_path / "cache" / "w.onnx.sha256").read_text().split()[0] == DIGEST
        path.unlink()
        files["/w.onnx"] = PAYLOAD[::-1]  # the upstream file changed under the same name
        with pytest.raises(ChecksumMismatch):
            models.pull("t")


def test_mirror_is_used_when_the_primary_fails(registry):
    with FileServer({"/mirror/w.onnx": PAYLOAD}) as hub:
        registry(name="t", filename="w.onnx", source=f"{hub.url}/gone/w.onnx", mirrors=(f"{hub.url}/mirror/w.onnx",),
                 sha256=DIGEST)
        path, _ = models.pull("t")
    assert path.read_bytes() == PAYLOAD


def test_offline_pull_names_the_model_and_keeps_going_later(registry):
    registry(name="t", filename="w.onnx", source="http://127.0.0.1:9/w.onnx", sha256=DIGEST)  # nothing listens
    with pytest.raises(UserError, match="could not download model t"):
        models.pull("t", timeout=2)


def test_resolution_order_explicit_then_models_dir_then_cache(registry, monkeypatch, tmp_path):
    registry(name="t", filename="w.onnx", source="http://127.0.0.1:9/w.onnx")
    cache, mine = tmp_path / "cache", tmp_path / "mine"
    cache.mkdir()
    mine.mkdir()
    (cache / "w.onnx").write_bytes(b"c")
    assert models.resolve("t") == cache / "w.onnx"
    (mine / "w.onnx").write_bytes(b"m")
    monkeypatch.setenv("ACTCURATE_MODELS", str(mine))
    assert models.resolve("t") == mine / "w.onnx"
    explicit = tmp_path / "elsewhere.onnx"
    explicit.write_bytes(b"e")
    assert models.resolve("t", str(explicit)) == explicit
    with pytest.raises(UserError, match="does not exist"):
        models.resolve("t", str(tmp_path / "nope.onnx"))


def test_missing_model_error_names_the_pull_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path))
    with pytest.raises(UserError) as err:
        models.resolve("dwpose-pose")
    assert "actcurate models pull dwpose-pose" in str(err.value)
    cli = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "path", "dwpose-pose"],
                         capture_output=True, text=True, env={**os.environ, "ACTCURATE_CACHE": str(tmp_path)})
    assert cli.returncode == 2 and "models pull dwpose-pose" in cli.stderr and "Traceback" not in cli.stderr
    unknown = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "pull", "dwpose-pose", "nope"],
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown model 'nope'" in unknown.stderr


def test_pull_goes_through_the_proxy_the_environment_names(registry, monkeypatch):
    """The model calls' proxy rule (pipeline.proxies): through HTTP_PROXY with its credentials, and straight to a
    host NO_PROXY exempts by IP range (urllib's own reading of the environment knows no ranges)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with FileServer({"/w.onnx": PAYLOAD}) as hub, ForwardProxy(credentials=("u", "s3cr3t")) as proxy:
        registry(name="t", filename="w.onnx", source=f"{hub.url}/w.onnx", sha256=DIGEST)
        monkeypatch.setenv("HTTP_PROXY", proxy.url("u", "s3cr3t"))
        path, _ = models.pull("t", timeout=5)
        assert path.read_bytes() == PAYLOAD
        assert proxy.requests == [("GET", f"{hub.url}/w.onnx", proxy.expected)] and len(hub.requests) == 1
        path.unlink()
        monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
        models.pull("t", timeout=5)
        assert len(proxy.requests) == 1 and len(hub.requests) == 2  # straight to the server
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.setenv("HTTP_PROXY", "socks5://u:s3cr3t@127.0.0.1:1080")
        path.unlink()
        with pytest.raises(UserError, match="http:// proxies only") as info:
            models.pull("t", timeout=5)
        assert "s3cr3t" not in str(info.value)
