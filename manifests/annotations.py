"""The annotate stage's output contract, light to import (pydantic only): the shape of `annotate_json` per style,
the clip's final caption, and the names of the categories and dimensions. The annotate stage writes these objects
and `actcurate export` reads them back; both go through this module, so neither imports the other.

    annotate_style    haic | hmi | actionart | hoigen
    annotate_json     one of ANNOTATIONS[style], as JSON (after the QA checks)
    annotate_dropped  [{question, rule}]: questions a QA rule removed (see QA_RULES)
    annotate_guessable  how many kept questions a text-only model answered without the caption or frames
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# HAICBench's five 4-option categories (Table 1 and Fig. 3d) [E1]
HAIC_CATEGORIES = ("Action Details", "Action Sequence", "Interaction", "Count", "Attribute")
HaicCategory = Literal["Action Details", "Action Sequence", "Interaction", "Count", "Attribute"]
# HMI's five QA dimensions [S2], each asked open-ended or true/false (HMI-Bench: 2.1K open + 1.2K T/F) [S2]
HMI_DIMENSIONS = ("Details of Movements", "Interaction with Environment", "Motivation and Reason",
                  "Micro-expressions and Emotions", "Character Attributes")
HmiDimension = Literal["Details of Movements", "Interaction with Environment", "Motivation and Reason",
                       "Micro-expressions and Emotions", "Character Attributes"]
# ActionArt's synthesized fine-grained QA [P] (the paper names no subtasks [U]): what the distractors vary
ACTIONART_SUBTASKS = ("body part", "direction", "order", "count", "interaction")
ActionartSubtask = Literal["body part", "direction", "order", "count", "interaction"]
LETTERS = ("A", "B", "C", "D")
Letter = Literal["A", "B", "C", "D"]
STYLES = ("haic", "hmi", "actionart", "hoigen")

# Why a question was dropped (annotate_dropped.rule): one name, one meaning each.
QA_RULES: dict[str, str] = {
    "duplicate": "the same question (normalised text) as an earlier one of the clip",
    "near_duplicate": "token overlap (Jaccard) with an earlier question of the clip at or above near_duplicate",
    "subject_label": "names a person 'Subject N' / 'Person N' instead of by attributes",
    "sequence_phrase": "an Action Sequence question without 'immediately after' or 'just before'",
    "sequence_option_length": "an Action Sequence option longer than 15 words",
    "count_phrase": "a Count question that does not start with 'How many'",
    "duplicate_options": "two options (the answer among them) are the same text",
    "empty_text": "an empty question, option or answer",
    "true_false_answer": "a true/false question whose answer is not 'true' or 'false'",
    "guessable": "answered correctly by the blind text-only model (dropped only with drop_guessable)",
    "duplicate_triplet": "the same (person, verb, object) triplet as an earlier one",
}


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HaicQuestion(_Out):
    category: HaicCategory
    question: str
    options: list[str] = Field(min_length=4, max_length=4)  # no "(A)" prefix
    answer: Letter
    guessable: bool


class HaicAnnotation(_Out):
    questions: list[HaicQuestion]


class HmiQuestion(_Out):
    dimension: HmiDimension
    type: Literal["open", "true_false"]
    question: str
    answer: str  # "true" / "false" for true_false
    guessable: bool


class HmiAnnotation(_Out):
    questions: list[HmiQuestion]


class PoseDescription(_Out):
    frame_index: int  # into the clip's kept frames, like caption_frame_indices
    time: float
    text: str


class SpatialDifference(_Out):
    frame_a: int
    frame_b: int
    time_a: float
    time_b: float
    text: str


class ActionartQuestion(_Out):
    subtask: str
    question: str
    options: list[str] = Field(min_length=4, max_length=4)
    answer: Letter
    guessable: bool


class ActionartAnnotation(_Out):
    pose_descriptions: list[PoseDescription]
    spatial_differences: list[SpatialDifference]
    questions: list[ActionartQuestion]


class HoiTriplet(_Out):
    person: str
    verb: str
    object: str


class HoigenAnnotation(_Out):
    triplets: list[HoiTriplet]


ANNOTATIONS: dict[str, type[_Out]] = {
    "haic": HaicAnnotation, "hmi": HmiAnnotation, "actionart": ActionartAnnotation, "hoigen": HoigenAnnotation,
}


def parse_annotation(style: str, text: str) -> _Out:
    """A row's annotate_json as its style's object; ValueError on an unknown style or a wrong shape."""
    if style not in ANNOTATIONS:
        raise ValueError(f"unknown annotate style {style!r} (one of {', '.join(STYLES)})")
    return ANNOTATIONS[style].model_validate_json(text)


def final_caption(columns: Mapping[str, Any]) -> str | None:
    """The clip's final caption: MoME's when mome ran on the clip (it wrote mome_caption), else the caption
    stage's. `columns` is a manifest row or a Clip's columns."""
    mome = columns.get("mome_caption")
    return mome if mome else columns.get("caption_text")
