"""Motion facts: a deterministic, keypoint-derived account of how the main person moves, for grounding captions
(ActionArt's pose-description proxy task, papers_spec §2) and for QA about body parts, directions and counts.

Everything is computed from the main person's COCO-17 body keypoints on the analysed frames, in units of the
person's torso length (shoulder centre to hip centre) so that size and zoom do not matter. "left"/"right" in a part
name is the person's own side (COCO's labels); directions of movement are in the picture ("toward the left of the
frame"), "up" is up in the picture. Whole-body movement is measured after removing the camera's motion.

Facts (each an event with part, action, direction, count, start_s, end_s, amount; and one short sentence):
  limb movement   per arm, leg and the head: the end point (wrist, ankle, nose) relative to its joint anchor moves
                  by at least MOVE torso lengths; direction from the net displacement, or "up and down"/"side to side"
                  when it goes and comes back; repetitions = swings out to the far band (35%/65% of its range)
  raises          wrist above the shoulder (above the head when above the nose); lowering; counts when repeated
  bends           elbow or knee angle from straight (>= 150 / 155 deg) to bent (<= 100 / 120 deg); counts
  crouches        hip height above the ankles drops below 70% of the standing height; "stands up" when it returns
  turns           shoulder order and width: facing the camera / sideways / facing away, and changes between them
  moves           whole-body displacement of the hip centre (>= 1 torso length) across the frame, closer to or
                  away from the camera (torso length x1.3 / /1.3), jumps (hips and ankles rise together)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NOSE, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR, L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN = 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16
LIMBS = {  # part: (anchor, middle joint, end point)
    "left arm": (L_SH, L_EL, L_WR),
    "right arm": (R_SH, R_EL, R_WR),
    "left leg": (L_HIP, L_KN, L_AN),
    "right leg": (R_HIP, R_KN, R_AN),
}
MOVE = {"arm": 0.35, "leg": 0.35, "head": 0.2}  # torso lengths the end point must travel to count as moving
BENDS = {"arm": (150.0, 100.0), "leg": (155.0, 120.0)}  # (straight at or above, bent at or below), degrees
TORSO_PER_BOX_HEIGHT = 0.3  # fallback torso length when shoulders or hips are not visible


def _smooth(x: np.ndarray) -> np.ndarray:
    """Median of 3 over the valid (non-NaN) samples, in order; NaNs stay NaN."""
    out = x.copy()
    idx = np.nonzero(~np.isnan(x))[0]
    if idx.size >= 3:
        v = x[idx]
        med = np.median(np.stack([np.r_[v[0], v[:-1]], v, np.r_[v[1:], v[-1]]]), axis=0)
        out[idx] = med
    return out


def episodes(x: np.ndarray, on: float, off: float, above: bool = True) -> list[tuple[int, int | None]]:
    """Spans where a signal is "on" with hysteresis: it switches on at `on` and off at `off` (above=True: on when
    x >= on, off when x <= off; above=False mirrors). NaN samples keep the state. Returns (start, end) sample
    indices, end None when still on at the last sample; a signal on from its first valid sample starts at it."""
    sign = 1.0 if above else -1.0
    spans: list[tuple[int, int | None]] = []
    state, start = None, 0
    for i, v in enumerate(x):
        if np.isnan(v):
            continue
        v = sign * v
        if state is None:
            state = v >= sign * on
            start = i
            continue
        if not state and v >= sign * on:
            state, start = True, i
        elif state and v <= sign * off:
            state = False
            spans.append((start, i))
    if state:
        spans.append((start, None))
    return spans


def _cycles(x: np.ndarray) -> int:
    """Oscillations of a signal between the bands at 35% and 65% of its 10-90% range: the number of excursions
    to the far band (an oscillation starting mid-way and ending mid-way counts each of its swings once)."""
    v = x[~np.isnan(x)]
    if v.size < 4:
        return 0
    lo, hi = np.percentile(v, 10), np.percentile(v, 90)
    if hi - lo <= 0:
        return 0
    upper, lower = lo + 0.65 * (hi - lo), lo + 0.35 * (hi - lo)
    state, transitions = None, 0
    for s in v:
        new = True if s >= upper else False if s <= lower else state
        if state is not None and new != state:
            transitions += 1
        state = new
    return (transitions + 1) // 2  # up-down-up-down-up-down: 5 transitions, 3 cycles; there and back once: 1


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Angle at b (degrees) of the triangle a-b-c, per frame."""
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / np.maximum(np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1), 1e-9)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


class _Clip:
    def __init__(self, times, keypoints, scores, present, boxes, to_first, kpt_thr):
        self.t = np.asarray(times, np.float64)
        self.k = np.asarray(keypoints, np.float64)[:, :17]
        present = np.asarray(present, bool)
        self.vis = (np.asarray(scores)[:, :17] > kpt_thr) & present[:, None]
        self.present = present
        self.boxes = np.asarray(boxes, np.float64)
        self.to_first = to_first
        torso = np.full(len(self.t), np.nan)
        ok = self.vis[:, [L_SH, R_SH, L_HIP, R_HIP]].all(axis=1)
        if ok.any():
            sh = (self.k[:, L_SH] + self.k[:, R_SH]) / 2
            hip = (self.k[:, L_HIP] + self.k[:, R_HIP]) / 2
            torso[ok] = np.linalg.norm(sh - hip, axis=1)[ok]
        fallback = TORSO_PER_BOX_HEIGHT * (self.boxes[:, 3] - self.boxes[:, 1])
        if np.isnan(torso).all():
            torso = fallback
        else:
            torso = np.where(np.isnan(torso), np.nanmedian(torso), torso)
        self.torso = np.where(present & (torso > 0), torso, np.nan)
        self.scale = float(np.nanmedian(self.torso)) if np.isfinite(self.torso).any() else 1.0

    def rel(self, end: int, anchor: int | tuple[int, int]) -> np.ndarray:
        """(T, 2) end point relative to anchor, in torso lengths, y up; NaN where either is not visible."""
        if isinstance(anchor, tuple):
            a = (self.k[:, anchor[0]] + self.k[:, anchor[1]]) / 2
            ok = self.vis[:, anchor[0]] & self.vis[:, anchor[1]]
        else:
            a, ok = self.k[:, anchor], self.vis[:, anchor]
        r = (self.k[:, end] - a) / self.torso[:, None]
        r[:, 1] *= -1
        r[~(ok & self.vis[:, end])] = np.nan
        return r

    def time(self, i: int | None) -> float:
        return float(self.t[-1] if i is None else self.t[i])


def _event(part, action, direction, count, start, end, amount) -> dict:
    return {"part": part, "action": action, "direction": direction, "count": int(count),
            "start_s": round(float(start), 3), "end_s": round(float(end), 3), "amount": round(float(amount), 3)}


def _direction(vec: np.ndarray) -> str:
    dx, dy = vec
    if abs(dy) >= abs(dx):
        return "up" if dy > 0 else "down"
    return "toward the right of the frame" if dx > 0 else "toward the left of the frame"


def _limb_movement(c: _Clip, part: str, r: np.ndarray, threshold: float) -> list[dict]:
    valid = ~np.isnan(r[:, 0])
    if valid.sum() < 3:
        return []
    x, y = _smooth(r[:, 0]), _smooth(r[:, 1])
    rx = np.percentile(x[valid], 90) - np.percentile(x[valid], 10)
    ry = np.percentile(y[valid], 90) - np.percentile(y[valid], 10)
    span = max(rx, ry)
    if span < threshold:
        return []
    idx = np.nonzero(valid)[0]
    first = np.array([x[idx[:2]].mean(), y[idx[:2]].mean()])
    last = np.array([x[idx[-2:]].mean(), y[idx[-2:]].mean()])
    net = last - first
    axis = y if ry >= rx else x
    cycles = _cycles(axis)
    back_and_forth = "up and down" if ry >= rx else "side to side"
    if cycles >= 2:
        direction, count = back_and_forth, cycles
    elif np.linalg.norm(net) >= 0.6 * span:
        direction, count = _direction(net), 1
    else:
        direction, count = back_and_forth, 1
    # active span: from the first to the last sample that differs from the start by a quarter of the range
    pts = np.stack([x, y], axis=1)
    away = np.nonzero(valid & (np.linalg.norm(pts - first, axis=1) >= 0.25 * span))[0]
    start_i = max(int(away[0]) - 1, int(idx[0])) if away.size else int(idx[0])
    end_i = int(away[-1]) if away.size else int(idx[-1])
    return [_event(part, "moves", direction, count, c.time(start_i), c.time(end_i), span)]


def _state_events(c: _Clip, part: str, signal: np.ndarray, on: float, off: float, above: bool,
                  start_word: str, end_word: str) -> list[dict]:
    """Events for the on/off episodes of a signal: each start and end, or one counted event when repeated."""
    spans = episodes(_smooth(signal), on, off, above)
    first_valid = int(np.nonzero(~np.isnan(signal))[0][0]) if (~np.isnan(signal)).any() else 0
    starts = [s for s, _ in spans if s > first_valid]  # an episode under way at the first frame did not start here
    out = []
    if len(starts) >= 2:
        ends = [e for _, e in spans]
        end_t = c.time(ends[-1]) if ends[-1] is not None else c.time(None)
        out.append(_event(part, start_word, None, len(starts), c.time(starts[0]), end_t, 0.0))
        return out
    for s, e in spans:
        if s > first_valid:
            out.append(_event(part, start_word, None, 1, c.time(s), c.time(s), 0.0))
        if e is not None:
            out.append(_event(part, end_word, None, 1, c.time(e), c.time(e), 0.0))
    return out


def _raises(c: _Clip, side: str) -> list[dict]:
    sh, wr = (L_SH, L_WR) if side == "left" else (R_SH, R_WR)
    height = c.rel(wr, sh)[:, 1]
    part = f"{side} hand"
    events = _state_events(c, part, height, 0.15, -0.05, True, "raises", "lowers")
    nose = c.rel(wr, NOSE)[:, 1]
    for e in events:  # above the head when the wrist passed the nose during that raise
        if e["action"] == "raises":
            window = (c.t >= e["start_s"] - 1e-9) & (c.t <= (e["end_s"] if e["count"] > 1 else c.t[-1]) + 1e-9)
            after = nose[window]
            e["direction"] = "above the head" if np.nanmax(np.r_[after, -np.inf]) > 0.1 else "above the shoulder"
    return events


def _bends(c: _Clip, part: str, joints: tuple[int, int, int], kind: str) -> list[dict]:
    a, b, d = joints
    ok = c.vis[:, a] & c.vis[:, b] & c.vis[:, d]
    angle = np.where(ok, _angle(c.k[:, a], c.k[:, b], c.k[:, d]), np.nan)
    straight, bent = BENDS[kind]
    name = f"{part.split()[0]} {'elbow' if kind == 'arm' else 'knee'}"
    return _state_events(c, name, angle, bent, straight, False, "bends", "straightens")


def _crouch(c: _Clip) -> list[dict]:
    ok = c.vis[:, [L_HIP, R_HIP, L_AN, R_AN]].all(axis=1)
    if ok.sum() < 3:
        return []
    h = ((c.k[:, L_AN, 1] + c.k[:, R_AN, 1]) - (c.k[:, L_HIP, 1] + c.k[:, R_HIP, 1])) / 2 / c.torso
    h = np.where(ok, h, np.nan)
    stand = np.nanpercentile(h, 90)
    if not stand > 0:
        return []
    return _state_events(c, "body", h / stand, 0.7, 0.85, False, "crouches", "stands up")


def _facing(c: _Clip) -> list[dict]:
    ok = c.vis[:, L_SH] & c.vis[:, R_SH]
    if ok.sum() < 2:
        return []
    f = _smooth(np.where(ok, (c.k[:, L_SH, 0] - c.k[:, R_SH, 0]) / c.torso, np.nan))
    # facing the camera: the person's left shoulder is on the right of the picture
    states: list[tuple[int, str]] = []
    for i, v in enumerate(f):
        if np.isnan(v):
            continue
        s = "facing the camera" if v > 0.35 else "facing away from the camera" if v < -0.35 else \
            "sideways" if abs(v) < 0.15 else None
        if s is not None and (not states or states[-1][1] != s):
            states.append((i, s))
    if not states:
        return []
    out = [_event("body", "faces", states[0][1], 1, c.time(states[0][0]), c.time(states[0][0]), 0.0)]
    for (_, before), (i, after) in zip(states, states[1:]):
        direction = "around" if {before, after} == {"facing the camera", "facing away from the camera"} else \
            {"facing the camera": "to face the camera", "facing away from the camera": "away from the camera",
             "sideways": "sideways"}[after]
        out.append(_event("body", "turns", direction, 1, c.time(i), c.time(i), 0.0))
    return out


def _whole_body(c: _Clip) -> list[dict]:
    hips = c.vis[:, L_HIP] & c.vis[:, R_HIP]
    centre = np.where(hips[:, None], (c.k[:, L_HIP] + c.k[:, R_HIP]) / 2,
                      np.stack([(c.boxes[:, 0] + c.boxes[:, 2]) / 2, (c.boxes[:, 1] + c.boxes[:, 3]) / 2], axis=1))
    pts = np.array([(m @ np.r_[p, 1.0])[:2] for m, p in zip(c.to_first, centre)]) / c.scale
    pts[~c.present] = np.nan
    idx = np.nonzero(c.present)[0]
    out: list[dict] = []
    if idx.size < 3:
        return out
    head, tail = idx[: max(1, idx.size // 5)], idx[-max(1, idx.size // 5):]
    net = np.nanmean(pts[tail], axis=0) - np.nanmean(pts[head], axis=0)
    if abs(net[0]) >= 1.0:
        where = "toward the right of the frame" if net[0] > 0 else "toward the left of the frame"
        out.append(_event("body", "moves", where, 1, c.time(int(idx[0])), c.time(int(idx[-1])), abs(net[0])))
    size = np.nanmedian(c.torso[tail]) / np.nanmedian(c.torso[head])
    if size >= 1.3 or size <= 1 / 1.3:
        where = "closer to the camera" if size > 1 else "away from the camera"
        out.append(_event("body", "moves", where, 1, c.time(int(idx[0])), c.time(int(idx[-1])), size))
    # jumps: the hips and the ankles rise together above their usual height
    ankles = c.vis[:, L_AN] & c.vis[:, R_AN]
    if ankles.sum() >= 3:
        an = np.array([(m @ np.r_[p, 1.0])[:2] for m, p in zip(c.to_first, (c.k[:, L_AN] + c.k[:, R_AN]) / 2)])
        # heights above the ground level: the 80th percentile of the image y (most frames are on the ground)
        lift_hip = -(pts[:, 1] - np.nanpercentile(pts[:, 1], 80))
        lift_an = np.where(ankles, -(an[:, 1] - np.nanpercentile(an[ankles, 1], 80)) / c.scale, np.nan)
        lift = np.minimum(lift_hip, lift_an)
        spans = episodes(lift, 0.35, 0.15, True)
        first = int(np.nonzero(~np.isnan(lift))[0][0]) if (~np.isnan(lift)).any() else 0
        # up and back down within a second, starting after the first frame (not a drift across the picture)
        jumps = [(s, e) for s, e in spans if s > first and e is not None and c.t[e] - c.t[s] <= 1.0]
        if jumps:
            end = jumps[-1][1]
            out.append(_event("body", "jumps", None, len(jumps), c.time(jumps[0][0]), c.time(end),
                              float(np.nanmax(lift))))
    return out


def describe_motion(times: Sequence[float], keypoints: np.ndarray, scores: np.ndarray, present: np.ndarray,
                    boxes: np.ndarray, to_first: Sequence[np.ndarray] | None = None,
                    kpt_thr: float = 0.5) -> tuple[list[dict], list[str]]:
    """Events and sentences for one person's track (arrays over the analysed frames; `present` marks frames with
    the person; `to_first` maps each frame's pixels into the first frame's, removing the camera's motion)."""
    n = len(times)
    if n == 0 or not np.asarray(present, bool).any():
        return [], []
    to_first = list(to_first) if to_first is not None else [np.eye(3)] * n
    c = _Clip(times, keypoints, scores, present, boxes, to_first, kpt_thr)
    events: list[dict] = []
    events += _facing(c)
    for part, (anchor, middle, end) in LIMBS.items():
        kind = part.split()[1]
        events += _limb_movement(c, part, c.rel(end, anchor), MOVE[kind])
        if kind == "arm":
            events += _raises(c, part.split()[0])
        events += _bends(c, part, (anchor, middle, end), kind)
    events += _limb_movement(c, "head", c.rel(NOSE, (L_SH, R_SH)), MOVE["head"])
    events += _crouch(c)
    events += _whole_body(c)
    order = {"faces": 0}
    events.sort(key=lambda e: (order.get(e["action"], 1), e["start_s"], e["part"], e["action"]))
    if not [e for e in events if e["action"] != "faces"]:
        events.append(_event("body", "stays still", None, 1, c.time(int(np.nonzero(c.present)[0][0])),
                             c.time(int(np.nonzero(c.present)[0][-1])), 0.0))
    return events, [sentence(e) for e in events]


def _span(e: dict) -> str:
    if math.isclose(e["start_s"], e["end_s"]):
        return f"at {e['start_s']:.1f} s"
    return f"{e['start_s']:.1f}-{e['end_s']:.1f} s"


def sentence(e: dict) -> str:
    """One short line per event, e.g. "left arm moves up and down 3 times (0.4-3.2 s)"."""
    part, action, direction, count = e["part"], e["action"], e["direction"], e["count"]
    times = f" {count} times" if count >= 2 else ""
    if action == "faces":
        return f"starts {direction} ({_span(e)})" if direction != "sideways" else f"starts sideways to the camera ({_span(e)})"
    if action == "turns":
        return f"turns {direction} ({_span(e)})"
    if action == "moves" and part == "body":
        return f"moves {direction} ({_span(e)})"
    if action == "moves":
        return f"{part} moves {direction}{times} ({_span(e)})"
    if action == "raises":
        return f"raises the {part} {direction}{times} ({_span(e)})"
    if action == "lowers":
        return f"lowers the {part} ({_span(e)})"
    if action in ("bends", "straightens"):
        return f"{action} the {part}{times} ({_span(e)})"
    if part == "body":
        return f"{action}{times} ({_span(e)})"
    return f"{part} {action}{times} ({_span(e)})"
