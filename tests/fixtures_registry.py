"""Test artifacts in the model registry, removed again when the test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline import models
from pipeline.models import ModelArtifact


@contextmanager
def registered_artifacts(**defaults) -> Iterator[Callable[..., ModelArtifact]]:
    """Yields `add(**fields)`, which registers a test artifact (`defaults` filling unset fields); every artifact
    added is unregistered on exit."""
    added: list[str] = []

    def add(**kwargs) -> ModelArtifact:
        artifact = models.register(ModelArtifact(licence="test", description="test model", **{**defaults, **kwargs}))
        added.append(artifact.name)
        return artifact

    try:
        yield add
    finally:
        for name in added:
            models.REGISTRY.pop(name, None)
