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
from pipeline.stage import RunContext, Stage, StageParams

TOP_LEVEL_KEYS = {"name", "description", "stages"}


@dataclass
class StageSpec:
    name: str
    cls: type[Stage]
    params: StageParams

    def build(self, context: RunContext | None = None) -> Stage:
        return self.cls(self.params, context)


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

    @property
    def split_stage(self) -> str | None:
        """The first stage that turns video rows into clip rows: the stages up to it see one row per video."""
        return next((s.name for s in self.stages if s.cls.splits), None)


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


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = (),
                skip: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML: {exc}") from None
    return build_recipe(doc, source=str(path), overrides=overrides, skip=skip)


def build_recipe(doc: dict, source: str = "<dict>", overrides: list[str] | tuple[str, ...] = (),
                 skip: list[str] | tuple[str, ...] = ()) -> Recipe:
    """The recipe's stages with `overrides` applied and the `skip` stages left out (e.g. a model-calling stage whose
    endpoint a user does not run); a stage that needs a skipped one is refused by check_requirements."""
    if not isinstance(doc, dict):
        raise UserError(f"recipe {source}: expected a mapping at the top level")
    unknown = set(doc) - TOP_LEVEL_KEYS
    if unknown:
        raise UserError(f"recipe {source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    raw_stages = doc.get("stages") or {}
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise UserError(f"recipe {source}: 'stages' must be a non-empty mapping of stage name to parameters")

    params_by_stage: dict[str, dict] = {name: dict(p or {}) for name, p in raw_stages.items()}
    for name in skip:
        if name not in params_by_stage:
            raise UserError(f"--skip {name}: stage {name!r} is not in recipe {source} (stages: {', '.join(params_by_stage)})")
        del params_by_stage[name]
    if not params_by_stage:
        raise UserError(f"recipe {source}: --skip left no stage to run")
    for text in overrides:
        stage, param, value = parse_override(text)
        if stage not in params_by_stage:
            raise UserError(f"--set {text}: stage {stage!r} is not in recipe {source} (stages: {', '.join(params_by_stage)})")
        params_by_stage[stage][param] = value

    known = _known_stages()
    specs = []
    for name, params in params_by_stage.items():
        if name not in known:
            raise UserError(f"recipe {source}: unknown stage {name!r}; known stages: {', '.join(known)}")
        cls = known[name]
        try:
            specs.append(StageSpec(name, cls, cls.Params(**params)))
        except ValidationError as exc:
            problems = "; ".join(
                f"{name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            known = ", ".join(cls.Params.model_fields)
            raise UserError(f"recipe {source}: {problems} (parameters of {name}: {known})") from None
    check_requirements(specs, source)
    _fill_frame_requests(specs)
    return Recipe(doc.get("name") or Path(source).stem, doc.get("description") or "", specs, source)


def check_requirements(specs: list[StageSpec], source: str) -> None:
    """Every stage's declared needs come from an earlier stage: a stage by name, or a column an earlier stage
    declares; stages that read frames come after a stage that provides them. One line says what is missing."""
    for k, spec in enumerate(specs):
        stage = spec.build()
        earlier = specs[:k]
        provided = {s.name for s in earlier} | {c for s in earlier for c in s.cls.columns}
        for need in stage.requirements():
            if need in provided:
                continue
            later = [s.name for s in specs[k + 1:] if s.name == need or need in s.cls.columns]
            if later:
                raise UserError(f"recipe {source}: stage {spec.name!r} needs {need!r} before it, but "
                                f"{later[0]!r} comes after it")
            raise UserError(f"recipe {source}: stage {spec.name!r} needs {need!r} before it, and no stage of the "
                            "recipe provides it")
        if stage.frame_request() is not None and not any(s.cls.provides_frames for s in earlier):
            providers = [name for name, cls in _known_stages().items() if cls.provides_frames]
            raise UserError(f"recipe {source}: stage {spec.name!r} reads frames, which only "
                            f"{' or '.join(repr(n) for n in providers)} decodes; put it before {spec.name!r}")


def _known_stages() -> dict[str, type[Stage]]:
    from stages import STAGES  # the registry imports every stage module; keep it out of module import time

    return STAGES


def _fill_frame_requests(specs: list[StageSpec]) -> None:
    """Decode once: each frame provider keeps what the stages after it (up to the next provider) ask for."""
    for k, spec in enumerate(specs):
        if not spec.cls.provides_frames:
            continue
        requests = []
        for later in specs[k + 1:]:
            if later.cls.provides_frames:
                break
            if (request := later.build().frame_request()) is not None:
                requests.append(request)
        spec.params = spec.build().with_frame_requests(requests)
