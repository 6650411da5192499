"""Shared fixtures: one local Ray for the whole session, the shared real clips, the repo's paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for every test that runs the executor (ray.init costs about 4 s here)."""
    import ray

    from pipeline.executor import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"the shared sample clips are not here ({SHARED_VIDEOS}); a user's fresh clone does not have them")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def blazepose_models() -> tuple[Path, Path]:
    """The real BlazePose files: from the model folder or cache (`make install` pulls them), else pulled now."""
    from pipeline import models
    from pipeline.errors import UserError
    from stages.pose import blazepose

    paths = []
    for name in (blazepose.DET_MODEL, blazepose.LANDMARK_MODEL):
        path = models.find(name)
        if path is None:
            try:
                path, _ = models.pull(name, timeout=120)
            except UserError as exc:
                pytest.skip(f"the BlazePose files are not here and cannot be pulled ({exc}); run"
                            f" `actcurate models pull {blazepose.DET_MODEL} {blazepose.LANDMARK_MODEL}`")
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(autouse=True)
def _no_cloud_credentials(monkeypatch):
    """Tests never talk to real AWS: any S3 test sets its own endpoint (a moto server on 127.0.0.1)."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield


os.environ.setdefault("RAY_DEDUP_LOGS", "0")
