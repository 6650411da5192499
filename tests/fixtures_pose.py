"""Scripted pose detections for the pose rule, keyframe and motion-fact tests: the models are replaced by a script,
so each case (one person, two people, static with a camera pan, slideshow, occluded, ...) sets exactly what the
stage sees."""

from __future__ import annotations

import math

import numpy as np

from pipeline.clip import Clip
from stages.pose import PoseParams, PoseStage

W, H = 320, 240
FPS = 5.0
LEFT_ARM, RIGHT_ARM = (5, 7, 9), (6, 8, 10)


# -- synthetic people ------------------------------------------------------------------------------------------------
def skeleton(cx: float, top: float, height: float, *, left_arm: float = 10.0, right_arm: float = 10.0,
             left_elbow: float = 0.0, right_elbow: float = 0.0, facing: float = 1.0, crouch: float = 0.0) -> np.ndarray:
    """COCO-17 keypoints (x, y) of a standing person, pixels. Arm angles in degrees from hanging down (0) through
    sideways (90) to straight up (180); elbow bends in degrees; facing 1 (to the camera), -1 (away), 0 (sideways);
    crouch 0..1 lowers the hips and folds the knees."""
    u = height
    half = 0.12 * u * facing  # shoulder half-width; the person's left is on the image right when facing the camera
    hip_y = top + (0.55 + 0.2 * crouch) * u
    knee_y = top + (0.75 + 0.08 * crouch) * u
    knee_out = 0.1 * u * crouch
    k = np.zeros((17, 2))
    k[0] = (cx, top + 0.06 * u)
    k[1], k[2] = (cx + 0.03 * u * facing, top + 0.04 * u), (cx - 0.03 * u * facing, top + 0.04 * u)
    k[3], k[4] = (cx + 0.06 * u * facing, top + 0.05 * u), (cx - 0.06 * u * facing, top + 0.05 * u)
    k[5], k[6] = (cx + half, top + 0.2 * u), (cx - half, top + 0.2 * u)
    for (s, e, w), angle, bend, side in ((LEFT_ARM, left_arm, left_elbow, 1), (RIGHT_ARM, right_arm, right_elbow, -1)):
        a = math.radians(angle)
        k[e] = k[s] + 0.16 * u * np.array([side * math.sin(a), math.cos(a)])
        b = math.radians(angle + bend)
        k[w] = k[e] + 0.15 * u * np.array([side * math.sin(b), math.cos(b)])
    k[11], k[12] = (cx + 0.08 * u * facing, hip_y), (cx - 0.08 * u * facing, hip_y)
    k[13], k[14] = (cx + 0.08 * u * facing + knee_out, knee_y), (cx - 0.08 * u * facing - knee_out, knee_y)
    k[15], k[16] = (cx + 0.08 * u * facing, top + u), (cx - 0.08 * u * facing, top + u)
    return k


def box_of(k: np.ndarray, pad: float = 0.08) -> np.ndarray:
    x1, y1 = k.min(axis=0)
    x2, y2 = k.max(axis=0)
    px, py = (x2 - x1) * pad + 2, (y2 - y1) * pad + 2
    return np.array([x1 - px, y1 - py, x2 + px, y2 + py])


class Scripted:
    """Stands in for both models: per frame, the persons (box, keypoints, keypoint scores) it should report."""

    def __init__(self, frames: list[list[tuple[np.ndarray, np.ndarray]]], scores: list[list[np.ndarray]] | None = None):
        self.frames = frames
        self.scores = scores
        self.det_calls = 0
        self.pose_jobs = 0
        self._order: list[int] = []

    # detector interface
    def detect(self, frames, params):
        self.det_calls += 1
        out = []
        for frame in frames:
            t = int(frame[0, 0, 2])  # the scripted frame index, written into one pixel by `clip_of`
            self._order.append(t)
            people = self.frames[t]
            boxes = np.array([box_of(k) for k, _ in people] if people else np.zeros((0, 4)), np.float32)
            out.append((boxes, np.full(len(people), 0.9, np.float32)))
        return out

    # pose interface
    def estimate(self, jobs, params):
        for frame, fp in jobs:
            t = int(frame[0, 0, 2])
            people = self.frames[t]
            kp = np.zeros((len(fp), 17, 2), np.float32)
            ks = np.zeros((len(fp), 17), np.float32)
            for i, box in enumerate(fp.boxes):
                # the stage clips boxes to the frame: match each to the nearest scripted person
                j = int(np.argmin([np.abs(np.clip(box_of(k), 0, [W, H, W, H]) - box).sum() for k, _ in people]))
                kp[i] = people[j][0]
                ks[i] = people[j][1]
            fp.keypoints, fp.keypoint_scores = kp, ks
            self.pose_jobs += 1


def person(k: np.ndarray, visible=None) -> tuple[np.ndarray, np.ndarray]:
    s = np.full(17, 0.9, np.float32)
    if visible is not None:
        s[:] = 0.1
        s[list(visible)] = 0.9
    return k.astype(np.float32), s


def clip_of(n: int, background: np.ndarray | None = None, pan: float = 0.0) -> Clip:
    """A clip of n frames at 5 fps; frames cut from `background` shifted by `pan` pixels a frame (a camera pan)."""
    frames = np.zeros((n, H, W, 3), np.uint8)
    if background is not None:
        for t in range(n):
            x0 = int(round(100 + pan * t))
            frames[t] = background[20:20 + H, x0:x0 + W]
    for t in range(n):
        frames[t, 0, 0, 2] = t
    clip = Clip(video_id="v", video_uri="/x.mp4", shard_id="s", start_s=0.0, end_s=n / FPS)
    clip.frames = frames
    clip.frame_times = [t / FPS for t in range(n)]
    return clip


def run(script: Scripted, clip: Clip | None = None, n: int | None = None, **params) -> Clip:
    stage = PoseStage(PoseParams(fps=FPS, **params))
    stage.detector = stage.pose = script
    clip = clip or clip_of(n or len(script.frames))
    (out,) = stage.process([clip])
    return out


def waving(n: int, cx: float = 160, height: float = 200, period: int = 5, shift: float = 0.0):
    """One person waving the left arm up and down (period in frames), optionally moved by `shift` px a frame."""
    return [[person(skeleton(cx + shift * t, 20, height, left_arm=100 + 60 * math.sin(2 * math.pi * t / period)))]
            for t in range(n)]


HMI = dict(min_single_person_ratio=0.9, min_visible_keypoints=12, min_motion=0.05)  # M-ACM's rules [S2] + [P]
HAIC = dict(min_persons=1, min_person_area=0.05, min_motion=0.05)  # HAIC's human existence and action filters [P]
