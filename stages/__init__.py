"""Stages, one module each; STAGES maps recipe names to classes, in the order a pipeline runs them."""

from pipeline.stage import Stage
from stages.aesthetic import AestheticStage
from stages.motion import MotionStage
from stages.ocr import OcrStage
from stages.pose import PoseStage
from stages.probe import ProbeStage
from stages.scenes import ScenesStage

STAGES: dict[str, type[Stage]] = {
    cls.name: cls for cls in (ProbeStage, ScenesStage, PoseStage, OcrStage, AestheticStage, MotionStage)
}


def split_index(stage_names: list[str]) -> int | None:
    """Position of the first stage that turns video rows into clip rows: the stages up to it see one row per video."""
    return next((i for i, name in enumerate(stage_names) if name in STAGES and STAGES[name].splits), None)


__all__ = ["STAGES", "split_index", "AestheticStage", "MotionStage", "OcrStage", "PoseStage", "ProbeStage", "ScenesStage"]
