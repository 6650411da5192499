"""What the models fill (structured output), before the QA checks: questions with the correct answer and three
distractors (the stage shuffles them), pose descriptions per body part, spatial differences, HOI triplets, and the
blind model's answers. The checked result has the shapes of manifests.annotations."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, Field, create_model

from manifests.annotations import ActionartSubtask, HaicCategory, HmiDimension, Letter
from stages.caption.styles import _Strict


class ChoiceDraft(_Strict):
    question: str
    correct_answer: str = Field(description="the option that is right according to the caption")
    distractors: list[str] = Field(min_length=3, max_length=3,
                                   description="three wrong options, plausible and of the same form as the answer")


class HaicDraft(ChoiceDraft):
    category: HaicCategory


class HaicDrafts(_Strict):
    questions: list[HaicDraft]


class HmiDraft(_Strict):
    dimension: HmiDimension
    type: Literal["open", "true_false"]
    question: str = Field(description="for true_false: a statement or yes/no question about the caption")
    answer: str = Field(description="open: a short answer from the caption; true_false: 'true' or 'false'")


class HmiDrafts(_Strict):
    questions: list[HmiDraft]


class ActionartDraft(ChoiceDraft):
    subtask: ActionartSubtask


class ActionartDrafts(_Strict):
    questions: list[ActionartDraft]


class PoseDraft(_Strict):
    """The static pose on one keyframe, body part by body part (ActionArt's pose description proxy task [P])."""

    head: str
    torso: str
    left_arm: str
    right_arm: str
    left_hand: str
    right_hand: str
    left_leg: str
    right_leg: str
    stance: str = Field(description="full-body position and balance")

    def text(self) -> str:
        return " ".join(f"{name.replace('_', ' ').capitalize()}: {value.strip().rstrip('.')}."
                        for name, value in self.model_dump().items() if value.strip())


class BodyPartChange(_Strict):
    body_part: str
    change: str = Field(description="how it moved between the two frames: direction and amount")


class DifferenceDraft(_Strict):
    """What changed between two keyframes (ActionArt's spatial differences mining proxy task [P])."""

    changes: list[BodyPartChange]

    def text(self) -> str:
        return " ".join(f"{c.body_part.strip().capitalize()}: {c.change.strip().rstrip('.')}."
                        for c in self.changes if c.change.strip())


class TripletDraft(_Strict):
    person: str = Field(description="the person, named by attributes")
    verb: str = Field(description="the interaction verb, base form ('pick up', 'ride')")
    object: str


class TripletDrafts(_Strict):
    triplets: list[TripletDraft]


DRAFTS: dict[str, type[BaseModel]] = {
    "haic": HaicDrafts, "hmi": HmiDrafts, "actionart": ActionartDrafts, "hoigen": TripletDrafts,
}


@functools.lru_cache(maxsize=None)
def blind_answers(count: int, kind: Literal["choice", "true_false"]) -> type[BaseModel]:
    """The blind model's answer list: exactly one letter (or true/false) per question, in order; a list of another
    length is invalid output and asked again with a new seed."""
    answer = Letter if kind == "choice" else Literal["true", "false"]
    return create_model(f"BlindAnswers_{kind}_{count}", __base__=_Strict,
                        answers=(list[answer], Field(min_length=count, max_length=count)))
