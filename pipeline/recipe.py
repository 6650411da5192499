"""Recipes: YAML files naming the stages in order with their parameters, checked before any video is touched."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.errors import UserError
from pipeline.resources import available_recipes, recipe_path  # available_recipes: importable from here too
from pipeline.stage import Stage, StageParams

TOP_LEVEL_KEYS = {"name", "description", "stages"}


@dataclass
class StageSpec:
    name: str
    cls: type[Stage]
    params: StageParams

    def build(self) -> Stage:
        return self.cls(self.params)


@dataclass
class Recipe:
    name: str
    description: str
    stages: list[StageSpec]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """Every parameter, defaults included: what actually runs, and what the hash covers."""
        return {
            "name": self.name,
            "stages": [{s.name: s.params.model_dump(mode="json")} for s in self.stages],
        }

    @property
    def hash(self) -> str:
        canonical = json.dumps(self.to_dict()["stages"], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    try:
        return recipe_path(name_or_path)
    except FileNotFoundError:
        raise UserError(f"recipe not found: {name_or_path} (a YAML path, or one of: {', '.join(available_recipes())})"
                        ) from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """`stage.param=value`, the value read as YAML so numbers, booleans and lists keep their types."""
    key, sep, raw = text.partition("=")
    stage, dot, param = key.strip().partition(".")
    if not sep or not dot or not stage or not param:
        raise UserError(f"--set expects stage.param=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return stage, param, value


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML: {exc}") from None
    return build_recipe(doc, source=str(path), overrides=overrides)


def build_recipe(doc: dict, source: str = "<dict>", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    from stages import STAGES  # the registry imports every stage module; keep it out of module import time

    if not isinstance(doc, dict):
        raise UserError(f"recipe {source}: expected a mapping at the top level")
    unknown = set(doc) - TOP_LEVEL_KEYS
    if unknown:
        raise UserError(f"recipe {source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    raw_stages = doc.get("stages") or {}
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise UserError(f"recipe {source}: 'stages' must be a non-empty mapping of stage name to parameters")

    params_by_stage: dict[str, dict] = {name: dict(p or {}) for name, p in raw_stages.items()}
    for text in overrides:
        stage, param, value = parse_override(text)
        if stage not in params_by_stage:
            raise UserError(f"--set {text}: stage {stage!r} is not in recipe {source} (stages: {', '.join(params_by_stage)})")
        params_by_stage[stage][param] = value

    specs = []
    for name, params in params_by_stage.items():
        if name not in STAGES:
            raise UserError(f"recipe {source}: unknown stage {name!r}; known stages: {', '.join(STAGES)}")
        cls = STAGES[name]
        try:
            specs.append(StageSpec(name, cls, cls.Params(**params)))
        except ValidationError as exc:
            problems = "; ".join(
                f"{name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            known = ", ".join(cls.Params.model_fields)
            raise UserError(f"recipe {source}: {problems} (parameters of {name}: {known})") from None
    _check_order(specs, source)
    _fill_frame_request(specs)
    return Recipe(doc.get("name") or Path(source).stem, doc.get("description") or "", specs, source)


def _fill_frame_request(specs: list[StageSpec]) -> None:
    """Decode once: the scenes stage keeps the union (highest rate, largest size) of what later stages read."""
    scenes = next((s for s in specs if s.name == "scenes"), None)
    if scenes is None:
        return
    requests = [r for s in specs if (r := s.build().frame_request()) is not None]
    update = {}
    if scenes.params.keep_fps is None and requests:
        update["keep_fps"] = max(r.fps for r in requests)
    if scenes.params.keep_max_side is None and requests:
        update["keep_max_side"] = max(r.max_side for r in requests)
    if update:
        scenes.params = scenes.params.model_copy(update=update)


def _check_order(specs: list[StageSpec], source: str) -> None:
    names = [s.name for s in specs]
    if "scenes" in names and ("probe" not in names or names.index("scenes") < names.index("probe")):
        # probe's pixel guard must have run before anything decodes a whole video
        raise UserError(f"recipe {source}: 'scenes' needs 'probe' before it")
    needs_frames = [s.name for s in specs if s.build().frame_request() is not None]
    if needs_frames and "scenes" not in names:
        raise UserError(f"recipe {source}: stages {', '.join(needs_frames)} read frames, which only the 'scenes' stage decodes")
    if "scenes" in names:
        early = [n for n in needs_frames if names.index(n) < names.index("scenes")]
        if early:
            raise UserError(f"recipe {source}: stages {', '.join(early)} read frames and must come after 'scenes'")
