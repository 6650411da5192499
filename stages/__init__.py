"""Stages, one module each; STAGES maps recipe names to classes, in the order a pipeline runs them."""

from pipeline.stage import Stage
from stages.probe import ProbeStage
from stages.scenes import ScenesStage

STAGES: dict[str, type[Stage]] = {cls.name: cls for cls in (ProbeStage, ScenesStage)}

__all__ = ["STAGES", "ProbeStage", "ScenesStage"]
