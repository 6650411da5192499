"""Captions: VLM backends, the dataset styles (schema first) and MoME cross-verification."""

from stages.caption.mome import MomeStage
from stages.caption.stage import CaptionStage

__all__ = ["CaptionStage", "MomeStage"]
