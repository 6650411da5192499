"""Benchmark annotations from the final caption: QA in the HAIC, HMI and ActionArt styles, HOI triplets."""

from stages.annotate.stage import AnnotateStage

__all__ = ["AnnotateStage"]
