"""pose: person detection, body keypoints, the human rules, keyframes and motion facts (see stage.py)."""

from stages.pose.stage import PoseParams, PoseStage

__all__ = ["PoseParams", "PoseStage"]
