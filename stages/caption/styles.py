"""Caption styles, schema first: each style is a pydantic model the VLM must fill (structured output), a prompt
template in prompts/STYLE/caption.txt, and a deterministic renderer from the JSON to the prose caption."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.resources import prompt_text


class _Strict(BaseModel):
    # OpenAI strict json_schema needs additionalProperties false and every field required: no defaults here.
    model_config = ConfigDict(extra="forbid")


# -- haic: people told apart by attributes, actions and interactions in order [E1] -----------------------------------
class HaicPerson(_Strict):
    attributes: str = Field(description="gender, age, clothing, hair, held objects: what tells this person apart")
    position: str = Field(description="where the person is in the frame, e.g. 'left', 'centre background'")


class HaicAction(_Strict):
    who: str = Field(description="the person, named by attributes ('the man in the grey cap'), never 'Subject 1'")
    action: str = Field(description="what the person does, with body parts and directions")


class HaicCaption(_Strict):
    num_people: int = Field(ge=0)
    people: list[HaicPerson]
    actions: list[HaicAction] = Field(description="in chronological order")
    interactions: list[str] = Field(description="interactions between people or with objects, in order")


def _article_lower(text: str) -> str:
    """'The man ...' -> 'the man ...' after 'Then'; names and 'I' keep their capital."""
    first, _, rest = text.partition(" ")
    return f"{first.lower()} {rest}" if first in ("The", "A", "An") else text


def _render_haic(c: HaicCaption) -> str:
    lines = [f"Number of people: {c.num_people}."]
    lines += [f"Person at {p.position}: {p.attributes}." for p in c.people]
    if c.actions:
        steps = [f"{a.who} {a.action}".rstrip(".") + "." for a in c.actions]
        lines.append("Actions: " + " ".join([steps[0]] + [f"Then {_article_lower(s)}" for s in steps[1:]]))
    if c.interactions:
        lines.append("Interactions: " + " ".join(i.rstrip(".") + "." for i in c.interactions))
    return "\n".join(lines)


# -- hmi: fine-grained human movement from pose-diverse keyframes [S2][E3] -------------------------------------------
class HmiMovement(_Strict):
    body_part: str = Field(description="e.g. 'right arm', 'torso', 'both legs', 'whole body'")
    movement: str = Field(description="how it moves: direction, speed, amplitude")


class HmiCaption(_Strict):
    num_people: int = Field(ge=0)
    person: str = Field(description="the main person's appearance")
    movements: list[HmiMovement] = Field(description="in chronological order")
    environment_interaction: str = Field(description="contact with objects or surroundings; 'none' if none")
    summary: str = Field(description="one sentence on the overall motion")


def _render_hmi(c: HmiCaption) -> str:
    moves = " ".join(f"The {m.body_part} {m.movement}".rstrip(".") + "." for m in c.movements)
    parts = [f"{c.person.rstrip('.')}.", moves, c.summary.rstrip(".") + "."]
    if c.environment_interaction.strip().lower() not in ("", "none"):
        parts.append(f"Interaction with the surroundings: {c.environment_interaction.rstrip('.')}.")
    return " ".join(p for p in parts if p.strip())


# -- hoigen: object attributes, human movement, the interaction over time [S3] ----------------------------------------
class HoigenObject(_Strict):
    name: str
    attributes: str = Field(description="colour, material, size, state")


class HoigenCaption(_Strict):
    human: str = Field(description="the person's appearance")
    objects: list[HoigenObject]
    human_movement: str
    interaction: list[str] = Field(description="the human-object interaction step by step, in time order")
    scene: str


def _render_hoigen(c: HoigenCaption) -> str:
    objects = "; ".join(f"{o.name} ({o.attributes})" for o in c.objects)
    parts = [f"{c.human.rstrip('.')}.", f"Objects: {objects}." if objects else "",
             f"{c.human_movement.rstrip('.')}.", " ".join(s.rstrip(".") + "." for s in c.interaction),
             f"Scene: {c.scene.rstrip('.')}."]
    return " ".join(p for p in parts if p)


# -- actionart: per-limb movement [S1][E7] ---------------------------------------------------------------------------
Limb = Literal["head", "torso", "left arm", "right arm", "left hand", "right hand", "left leg", "right leg",
               "whole body"]


class LimbMovement(_Strict):
    limb: Limb
    movement: str


class ActionartCaption(_Strict):
    num_people: int = Field(ge=0)
    posture: str = Field(description="full-body positioning and posture")
    limbs: list[LimbMovement] = Field(description="every moving limb, in chronological order")
    objects: str = Field(description="human-object interactions; 'none' if none")


def _render_actionart(c: ActionartCaption) -> str:
    parts = [f"{c.posture.rstrip('.')}."] + [f"{m.limb.capitalize()}: {m.movement.rstrip('.')}." for m in c.limbs]
    if c.objects.strip().lower() not in ("", "none"):
        parts.append(f"Objects: {c.objects.rstrip('.')}.")
    return " ".join(parts)


@functools.lru_cache(maxsize=None)
def cached_prompt(folder: str, name: str) -> str:
    """A prompt template, read once per process (every call would otherwise read its file again)."""
    return prompt_text(folder, name)


@dataclass(frozen=True)
class Style:
    name: str
    schema: type[BaseModel]
    render: Callable[[BaseModel], str]

    def prompt(self, name: str = "caption") -> str:
        return cached_prompt(self.name, name)

    def json_schema(self) -> dict:
        return self.schema.model_json_schema()

    def parse(self, text: str) -> BaseModel:
        """The model's JSON as this style's object; raises ValueError (pydantic's) on anything else."""
        return self.schema.model_validate_json(text)

    def people(self, caption: BaseModel) -> int | None:
        return getattr(caption, "num_people", None)


STYLES: dict[str, Style] = {
    "haic": Style("haic", HaicCaption, _render_haic),
    "hmi": Style("hmi", HmiCaption, _render_hmi),
    "hoigen": Style("hoigen", HoigenCaption, _render_hoigen),
    "actionart": Style("actionart", ActionartCaption, _render_actionart),
}


def text_hash(*parts: object) -> str:
    """A short stable hash of prompt text, schemas and settings (JSON-canonical)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
