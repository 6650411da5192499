"""Stages, one module each; STAGES maps recipe names to classes, in the order a pipeline runs them."""

from pipeline.stage import Stage
from stages.aesthetic import AestheticStage
from stages.annotate import AnnotateStage
from stages.caption import CaptionStage, MomeStage
from stages.motion import MotionStage
from stages.ocr import OcrStage
from stages.pose import PoseStage
from stages.probe import ProbeStage
from stages.scenes import ScenesStage

STAGES: dict[str, type[Stage]] = {
    cls.name: cls for cls in (ProbeStage, ScenesStage, PoseStage, OcrStage, AestheticStage, MotionStage, CaptionStage,
                          MomeStage, AnnotateStage)
}


__all__ = ["STAGES", "AestheticStage", "AnnotateStage", "CaptionStage", "MomeStage", "MotionStage", "OcrStage",
           "PoseStage", "ProbeStage", "ScenesStage"]
