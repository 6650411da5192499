"""The human recipes' thresholds checked against the shared real clips: per clip and window, what a careful curator
would keep or drop, and the recipe's decision. The recipes run as users run them offline: `pose.backend=blazepose`
(DWPose's weights come from a hub this machine cannot reach), without the aesthetic stage (its CLIP weights cannot
be fetched here; haic and hmi only score it anyway, hoigen's 5.0 floor stays unchecked) and without the caption
stages (they need a model endpoint; tests/test_caption*.py cover them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.clip import Clip
from pipeline.recipe import build_recipe, resolve_recipe_path

pytestmark = pytest.mark.slow

OFFLINE_ONLY = ("aesthetic", "caption", "mome", "annotate")

# (start_s rounded, status, rule) per window; a curator's reason for each clip. Windows come from TransNetV2 cuts.
KEEP = ("accepted", None)
EXPECTED = {
    "hmi": {  # single-person human motion, 2-10 s segments
        # one man juggling a ball, whole body, still camera: kept
        "sam2_juggle_soccer_ball.mp4": [(0, *KEEP), (5, *KEEP)],
        # one man doing tai chi (slow but continuous): kept
        "stgcn_kinetics_tai_chi.mp4": [(0, *KEEP), (5, *KEEP)],
        # one weightlifter: 0-5 s he stands holding the bar (median keypoint movement 0.03 < 0.05: the person barely
        # moves, dropped), 5-10 s the jerk: kept
        "stgcn_kinetics_clean_and_jerk_textoverlay.mp4": [(0, "rejected", "min_motion"), (5, *KEEP)],
        # two children: not single-person (HMI keeps one person per clip)
        "sam2_bedroom_kids_jumping.mp4": [(0, "rejected", "single_person_ratio")],
        # two players: not single-person
        "mmaction2_basketball_structuralize.mp4": [(0, "rejected", "single_person_ratio"),
                                                   (5, "rejected", "single_person_ratio")],
    },
    "haic": {  # multi-person human action, 2-30 s clips, short side >= 480
        "sam2_juggle_soccer_ball.mp4": [(0, *KEEP)],
        "sam2_bedroom_kids_jumping.mp4": [(0, *KEEP)],  # two children jumping: kept (HAIC keeps several people)
        "stgcn_kinetics_tai_chi.mp4": [(0, "rejected", "min_short_side")],  # 256 px: low resolution for HAIC
        "mmaction2_basketball_structuralize.mp4": [(0, "rejected", "min_short_side")],  # 240 px
    },
    "hoigen": {  # human-object interaction, short side >= 720, no burned-in text, people moving
        "sam2_juggle_soccer_ball.mp4": [(0, *KEEP), (5, *KEEP)],  # a man and a ball
        # a man doing jumping jacks on a box, small and backlit: the whole-frame flow (0.00014) would have dropped it
        # as static; the people's own flow keeps it
        "sports2d_walk_jumpingjacks_flip.mp4": [(0, *KEEP), (6, *KEEP)],
        "sam2_bedroom_kids_jumping.mp4": [(0, "rejected", "min_short_side")],  # 540 px < 720
    },
}


def offline_recipe(name: str, det: Path, landmark: Path):
    path = resolve_recipe_path(name)
    doc = yaml.safe_load(path.read_text())
    for stage in OFFLINE_ONLY:
        doc["stages"].pop(stage, None)
    doc["stages"]["pose"].update(backend="blazepose", det_model=str(det), pose_model=str(landmark), threads=2)
    return build_recipe(doc, source=str(path))


@pytest.fixture(scope="module")
def decisions(shared_videos, blazepose_models):
    out = {}
    for recipe_name, clips in EXPECTED.items():
        stages = [s.build() for s in offline_recipe(recipe_name, *blazepose_models).stages]
        for stage in stages:
            stage.setup()
        for clip_name in clips:
            rows = [Clip(video_id=clip_name, video_uri=str(shared_videos / clip_name), shard_id="s")]
            for stage in stages:
                rows = list(stage.iter_process(rows))
            out[recipe_name, clip_name] = [r for r in rows if r.reject_rule != "min_clip_length"]
    return out


@pytest.mark.parametrize("recipe_name, clip_name", [(r, c) for r, clips in EXPECTED.items() for c in clips])
def test_recipe_decisions_match_the_curators(decisions, recipe_name, clip_name):
    rows = sorted(decisions[recipe_name, clip_name], key=lambda r: r.start_s)
    got = [(round(r.start_s), r.status, r.reject_rule) for r in rows]
    assert got == EXPECTED[recipe_name][clip_name], [
        (round(r.start_s, 2), r.reject_stage, r.reject_rule, r.reject_value) for r in rows]
