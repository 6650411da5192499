"""What the audit report and the review app know about manifest columns, in one place: which column each rule
checks and where its threshold lives in the recipe, which columns are scores, captions or MoME verdicts.

Stages add columns over time (caption and MoME columns are still moving): everything here is matched against the
manifest's actual schema, so a missing column is simply not shown, and a new one only needs a line below.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from manifests.schema import CORE_COLUMNS


@dataclass(frozen=True)
class RuleField:
    stage: str
    rule: str
    column: str  # the manifest column holding (or closest to) the value the rule checks
    param: str  # the recipe parameter holding its threshold (OUT/run.json: recipe.stages[stage][param])


# rule -> value column and threshold parameter. Rules whose value has no column of its own (probe.max_pixels,
# min_short_side) or is a per-frame share (pose.min_persons) map to the nearest column; their histogram still
# shows the threshold for orientation.
RULE_FIELDS: list[RuleField] = [
    RuleField("probe", "min_duration", "probe_duration_s", "min_duration_s"),
    RuleField("probe", "max_duration", "probe_duration_s", "max_duration_s"),
    RuleField("probe", "min_fps", "probe_fps_avg", "min_fps"),
    RuleField("scenes", "min_clip_length", "duration_s", "min_clip_s"),  # duration_s: end_s - start_s (derived)
    RuleField("pose", "min_persons", "pose_persons_mean", "min_persons"),
    RuleField("pose", "max_persons", "pose_persons_mean", "max_persons"),
    RuleField("pose", "min_person_area", "pose_largest_area", "min_person_area"),
    RuleField("pose", "single_person_ratio", "pose_single_person_ratio", "min_single_person_ratio"),
    RuleField("pose", "min_visible_keypoints", "pose_visible_keypoints", "min_visible_keypoints"),
    RuleField("pose", "min_motion", "pose_motion", "min_motion"),
    RuleField("pose", "max_motion", "pose_motion", "max_motion"),
    RuleField("ocr", "max_text_boxes", "ocr_text_boxes", "max_text_boxes"),
    RuleField("ocr", "max_text_area_ratio", "ocr_text_area_ratio", "max_text_area_ratio"),
    RuleField("ocr", "max_corner_boxes", "ocr_corner_boxes_max", "max_corner_boxes"),
    RuleField("aesthetic", "min_aesthetic", "aesthetic_score", "min_aesthetic"),
    RuleField("motion", "min_flow", "motion_score", "min_flow"),
    RuleField("motion", "max_flow", "motion_score", "max_flow"),
    # caption agreement (MoME): the judge's score against its threshold, when the stage names them so
    RuleField("mome", "min_agreement", "mome_agreement", "min_agreement"),
    RuleField("mome", "min_score", "mome_score", "min_score"),
]

# Columns that are facts, not scores: no histogram for them.
NOT_SCORES = {"clip_index", "reject_value", "reject_threshold", "scenes_scene_index", "scenes_start_frame",
              "scenes_end_frame", "probe_rotation", "probe_coded_width", "probe_coded_height", "probe_bit_rate",
              "probe_size_bytes", "probe_frame_count"}

# Caption-like text: string columns of these stages, or whose name says caption/description/QA. MoME: the
# verification stage's columns (verdict, scores, per-expert notes), shown beside the captions.
CAPTION_STAGES = ("caption", "annotate")
CAPTION_WORDS = ("caption", "description", "summary", "question", "answer", "qa")
MOME_PREFIXES = ("mome_", "verify_", "judge_")

DERIVED = {"duration_s": ("end_s", "start_s")}  # name -> (a, b): a - b, computed where a page needs it


def _is_number(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t)) and not pa.types.is_boolean(t)


def score_columns(schema: pa.Schema) -> list[str]:
    """Numeric scalar stage columns (and the derived clip duration): the ones with histograms and range filters."""
    cols = [f.name for f in schema if f.name not in CORE_COLUMNS and f.name not in NOT_SCORES
            and not f.name.startswith("_") and f.name != "duration_s" and _is_number(f.type)]
    return ["duration_s"] + cols


def caption_columns(schema: pa.Schema) -> list[str]:
    """String (or list-of-string) columns holding captions, descriptions or QA, whatever stage wrote them."""
    out = []
    for f in schema:
        t = f.type
        stringy = pa.types.is_string(t) or pa.types.is_large_string(t) or (
            pa.types.is_list(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)))
        if not stringy or f.name in CORE_COLUMNS or f.name.startswith(MOME_PREFIXES):
            continue
        stage = f.name.split("_", 1)[0]
        if stage in CAPTION_STAGES or any(w in f.name.lower().split("_") for w in CAPTION_WORDS):
            out.append(f.name)
    return out


def searchable_columns(schema: pa.Schema) -> list[str]:
    """Plain string columns the text filter searches: captions first, then MoME text."""
    return [c for c in caption_columns(schema) + mome_columns(schema)
            if pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)]


def mome_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.name.startswith(MOME_PREFIXES)]


def recipe_params(run_info: dict | None) -> dict[str, dict]:
    """stage -> its parameters, from OUT/run.json."""
    if not run_info:
        return {}
    return {name: params for s in run_info.get("recipe", {}).get("stages", []) for name, params in s.items()}


def thresholds_for(column: str, params: dict[str, dict]) -> list[dict]:
    """Every active threshold drawn on a column's histogram: [{stage, rule, param, value}]."""
    out = []
    for f in RULE_FIELDS:
        value = params.get(f.stage, {}).get(f.param)
        if f.column == column and isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append({"stage": f.stage, "rule": f.rule, "param": f.param, "value": value})
    return out


def rule_column(stage: str, rule: str) -> str | None:
    return next((f.column for f in RULE_FIELDS if f.stage == stage and f.rule == rule), None)
