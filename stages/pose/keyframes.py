"""M-ACM's pose-diverse keyframe sampling (papers_spec §3.4).

    P[t]   = the main person's body keypoints at frame t, centred on the person's box and divided by its diagonal [P]
    d(a,b) = ||P[a] - P[b]||_2
    k1     = argmax_t mean_s d(t, s)            (the frame farthest on average from all others)
    k_i+1  = argmax_{t not in K} d(t, k_i)      (the frame farthest from the previous keyframe; chosen frames excluded [P])
    until |K| = K_max, returned in time order [P].

Joints that are not visible in both frames of a pair do not count; the distance is rescaled to the full joint count
so that pairs with fewer shared joints are not favoured. Frames without the person (or with fewer than
`min_joints` visible joints) are no candidates; when they leave fewer than K candidates, the rest of the K is filled
with the frames farthest in time from those already chosen, so the caption stage always gets K frames where K
exist. Ties (a still pose) go to the frame farthest in time from the keyframes already chosen, then to the earlier
frame (k1: the earliest), so the result is deterministic and a static clip gets keyframes spread over its length.
"""

from __future__ import annotations

import numpy as np


def normalise_poses(keypoints: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T, J, 2) pixels to box-centred coordinates in units of the box diagonal."""
    boxes = np.asarray(boxes, np.float64)
    center = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    diag = np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    diag = np.where(diag > 0, diag, 1.0)
    return (np.asarray(keypoints, np.float64) - center[:, None, :]) / diag[:, None, None]


def pose_distances(poses: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(T, T) distances between normalised poses (T, J, 2) over the joints visible in both frames."""
    t, j = visible.shape
    both = visible[:, None, :] & visible[None, :, :]  # (T, T, J)
    diff = poses[:, None, :, :] - poses[None, :, :, :]
    sq = np.where(both, (diff ** 2).sum(-1), 0.0).sum(-1)
    shared = both.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.sqrt(sq * j / shared)
    return np.where(shared > 0, d, 0.0)


def select_keyframes(distances: np.ndarray, k: int, candidates: np.ndarray | None = None) -> list[int]:
    """M-ACM's rule on a precomputed distance matrix; returns frame indices in time order.

    `candidates` (bool, T) limits the pose-based picks; the remainder of K is filled by time spread.
    """
    return sorted(keyframe_sequence(distances, k, candidates))


def keyframe_sequence(distances: np.ndarray, k: int, candidates: np.ndarray | None = None) -> list[int]:
    """The keyframes in the order the rule picks them (k1 first)."""
    n = distances.shape[0]
    k = min(k, n)
    if k <= 0:
        return []
    cand = np.ones(n, bool) if candidates is None else np.asarray(candidates, bool)
    idx = np.nonzero(cand)[0]
    chosen: list[int] = []
    if idx.size:
        sub = distances[np.ix_(idx, idx)]
        mean = sub.mean(axis=1)
        current = int(idx[int(np.argmax(mean))])  # argmax returns the first maximum: the earliest frame
        chosen.append(current)
        while len(chosen) < min(k, idx.size):
            row = distances[current, idx].astype(np.float64).copy()
            row[np.isin(idx, chosen)] = -np.inf
            best = np.nonzero(row >= row.max() - 1e-9)[0]
            if best.size > 1:  # equally far (a still pose): the one farthest in time from the frames chosen
                gap = np.abs(idx[best][:, None] - np.asarray(chosen)[None, :]).min(axis=1)
                best = best[np.argmax(gap):]
            current = int(idx[int(best[0])])
            chosen.append(current)
    while len(chosen) < k:  # too few frames with the person: spread the rest in time
        rest = np.setdiff1d(np.arange(n), chosen)
        if chosen:
            gap = np.abs(rest[:, None] - np.asarray(chosen)[None, :]).min(axis=1)
            chosen.append(int(rest[int(np.argmax(gap))]))
        else:
            chosen.extend(int(i) for i in np.linspace(0, n - 1, k).round().astype(int))
            chosen = list(dict.fromkeys(chosen))
            if len(chosen) < k:
                continue
    return chosen[:k]


def pose_keyframes(keypoints: np.ndarray, scores: np.ndarray, boxes: np.ndarray, present: np.ndarray, k: int,
                   kpt_thr: float, min_joints: int = 3) -> list[int]:
    """Keyframes of a clip from the main person's keypoints (T, J, 2), scores (T, J), boxes (T, 4) and presence (T,)."""
    visible = (np.asarray(scores) > kpt_thr) & np.asarray(present, bool)[:, None]
    poses = normalise_poses(keypoints, boxes)
    candidates = visible.sum(axis=1) >= min_joints
    return select_keyframes(pose_distances(poses, visible), k, candidates)
