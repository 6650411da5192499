"""The annotate stage: benchmark annotations generated from each clip's final caption, checked as a benchmark
maintainer would, in the style of one dataset.

- haic: HAICBench's five 4-option categories [E1]; hmi: five dimensions, open and true/false [S2][E3];
  actionart: pose descriptions and spatial differences on keyframes (a VLM) plus fine-grained multiple choice
  [S1][P]; hoigen: (person, verb, object) triplets from the final caption [S3][P].
- Question generation reads the caption only, as the papers do; the answers are checked in code (category rules,
  duplicates, near-duplicates), the options shuffled deterministically, and a blind text-only model answers the
  questions without caption or frames: a correct blind answer marks the question guessable.
- Every call goes through the caption stages' Caller: recorded under OUT/calls, never paid for twice, retried with
  a new seed on invalid output, an error row when no usable answer comes.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, model_validator

from manifests.annotations import (ANNOTATIONS, HAIC_CATEGORIES, HMI_DIMENSIONS, LETTERS, QA_RULES,
                                   final_caption)
from pipeline.clip import Clip
from pipeline.resources import prompt_text
from pipeline.stage import FrameRequest
from stages.annotate.drafts import DRAFTS, DifferenceDraft, PoseDraft, blind_answers
from stages.annotate.qa import (MAX_SEQUENCE_OPTION_WORDS, Dropped, choice_violation, drop_duplicates,
                                shuffle_options, true_false)
from stages.caption.caller import BLOCKED, ERROR, SUCCESS, TRUNCATED, CallResult
from stages.caption.client import EndpointParams
from stages.caption.stage import VlmParams, VlmStage, encode_frames

DROPPED = pa.list_(pa.struct([("question", pa.string()), ("rule", pa.string())]))


class AnnotateFailed(Exception):
    """A clip's annotation ended without a usable answer (its error row says why)."""


class Blocked(Exception):
    """A safety filter blocked one of the clip's calls."""


class AnnotateParams(VlmParams):
    # VlmParams' endpoint fields (model, base_url, ...) are the question generator's: a text model reading the
    # caption. Open default [P]: the captioning VLM's server, which answers text-only requests too.
    max_frames: int = Field(4, ge=1)  # actionart: keyframes given a pose description
    per_category: int = Field(1, ge=1, le=10)  # questions per category (haic), dimension and type (hmi), subtask
    spatial_pairs: int = Field(1, ge=0)  # actionart: keyframe pairs whose differences are described
    # actionart: the VLM that sees the keyframes (pose descriptions, spatial differences)
    vision: EndpointParams = EndpointParams()
    # the blind check's text-only model (it sees the questions and options only); null: no blind check
    blind: EndpointParams | None = EndpointParams()
    drop_guessable: bool = False  # drop (rule guessable) rather than only mark questions the blind model answers
    # questions of one clip whose token sets (lower case, no punctuation, no function words) overlap by at least
    # this Jaccard index are near-duplicates: the later one is dropped. 0.8 [P]: rewordings ("What does the man
    # do with his left hand?" / "...with the left hand?") pass it, a change of body part or person does not.
    near_duplicate: float | None = Field(0.8, gt=0, le=1)
    max_sequence_option_words: int = Field(MAX_SEQUENCE_OPTION_WORDS, ge=1)  # HAIC's Action Sequence options [E1]

    @model_validator(mode="after")
    def _caption_only(self) -> "AnnotateParams":
        # inherited from the captioning parameters, meaningless here: say so rather than ignore them
        if self.ground_on_pose or self.max_person_count_diff is not None:
            raise ValueError("annotate reads the caption, not the pose facts: ground_on_pose and "
                             "max_person_count_diff belong to caption")
        if self.send != "frames":
            raise ValueError("annotate sends keyframes or no frames: send: clip belongs to caption and mome")
        return self


class AnnotateStage(VlmStage):
    name = "annotate"
    Params = AnnotateParams
    requires = ("caption",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "annotate_style": pa.string(),  # haic | hmi | actionart | hoigen
        "annotate_json": pa.string(),  # manifests.annotations.ANNOTATIONS[style], after the QA checks
        "annotate_dropped": DROPPED,  # questions a QA rule removed: {question, rule} (rules: QA_RULES)
        "annotate_guessable": pa.int32(),  # kept questions the blind model answered correctly
        "annotate_model": pa.string(),  # the question generator (actionart: and the vision model, see calls)
        "annotate_blind_model": pa.string(),  # null: no blind check ran
        "annotate_outcome": pa.string(),  # success | truncated | blocked | error: the worst of the clip's calls
        "annotate_prompt_hash": pa.string(),  # the generator call's
        "annotate_prompt_tokens": pa.int64(),
        "annotate_output_tokens": pa.int64(),
        "annotate_thinking_tokens": pa.int64(),
        "annotate_latency_s": pa.float64(),
        "annotate_calls": pa.int32(),
        "annotate_cached_calls": pa.int32(),  # answered from OUT/calls (a resumed run): nothing paid this time
        "annotate_frame_indices": pa.list_(pa.int32()),  # actionart: the keyframes, into the clip's kept frames
    }
    rules: ClassVar[dict[str, str]] = {
        "no_questions": "every generated question was dropped by a QA rule (annotate_dropped says which)",
        "no_triplets": "no (person, verb, object) triplet was left after the checks",
        "blocked": "the model's safety filter blocked an annotation call",
    }
    qa_rules: ClassVar[dict[str, str]] = QA_RULES

    # -- declarations ----------------------------------------------------------------------------------------------
    def requirements(self) -> tuple[str, ...]:
        return self.requires

    def frame_request(self) -> FrameRequest | None:
        # only actionart's pose descriptions look at frames; QA is generated from the caption alone
        return FrameRequest(self.params.fps, self.params.max_side) if self.params.style == "actionart" else None

    def endpoints(self) -> dict[str, EndpointParams]:
        p = self.params
        roles = {"annotate": EndpointParams(**{k: getattr(p, k) for k in EndpointParams.model_fields})}
        if p.style == "actionart":
            roles["annotate.vision"] = p.vision
        if p.blind is not None and p.style != "hoigen":
            roles["annotate.blind"] = p.blind
        return roles

    # -- one clip --------------------------------------------------------------------------------------------------
    async def process_clip_async(self, clip: Clip) -> None:
        style = self.params.style
        caption = final_caption(clip.columns)
        if not caption or not caption.strip():
            raise AnnotateFailed("the clip has no caption to annotate (caption_text and mome_caption are empty)")
        calls: list[CallResult] = []
        self.set(clip, style=style)
        try:
            if style == "hoigen":
                result, dropped = await self._hoigen(clip, caption, calls)
            else:
                result, dropped = await self._questions(clip, caption, calls)
        except Blocked:
            self._bookkeeping(clip, calls)
            self.reject(clip, "blocked", None, None)
            return
        finally:
            if clip.alive:
                self._bookkeeping(clip, calls)
        payload = ANNOTATIONS[style].model_validate(result)  # the contract holds, or this row is an error
        self.set(clip, json=payload.model_dump_json(), dropped=[d.row() for d in dropped])
        kept = result["triplets"] if style == "hoigen" else result["questions"]
        self.set(clip, guessable=sum(bool(item.get("guessable")) for item in kept))  # triplets have none
        if not kept:
            rule = "no_triplets" if style == "hoigen" else "no_questions"
            self.at_least(clip, rule, 0, 1)

    async def _call(self, clip: Clip, calls: list[CallResult], role: str, expert: str, text: str,
                    schema: type[BaseModel], frames=None) -> BaseModel:
        result = await self.ask(clip, role, expert, text, frames, schema.model_validate_json, schema,
                                schema.__name__.lower())
        calls.append(result)
        if result.outcome == BLOCKED:
            raise Blocked(expert)
        if result.outcome == ERROR or result.parsed is None:
            raise AnnotateFailed(f"{expert}: {result.error or result.outcome}")
        return result.parsed

    def _prompt(self, folder: str, name: str, **slots: Any) -> str:
        text = prompt_text(folder, name)
        for slot, value in slots.items():
            text = text.replace("{" + slot + "}", str(value))
        return text

    async def _generate(self, clip: Clip, caption: str, calls: list[CallResult]) -> BaseModel:
        style = self.params.style
        # the caption last: a brace in it is never taken for a slot
        text = self._prompt(style, "annotate", per_category=self.params.per_category, caption=caption.strip())
        return await self._call(clip, calls, "annotate", "annotate", text, DRAFTS[style])

    # -- question styles -------------------------------------------------------------------------------------------
    async def _questions(self, clip: Clip, caption: str, calls: list[CallResult]) -> tuple[dict, list[Dropped]]:
        style = self.params.style
        visual = self._actionart_visual(clip, calls) if style == "actionart" else None
        # both run to the end (a failed one does not leave the other's paid call unrecorded), then the first error
        drafts, visual_result = await asyncio.gather(self._generate(clip, caption, calls), visual or _nothing(),
                                                     return_exceptions=True)
        for outcome in (drafts, visual_result):
            if isinstance(outcome, BaseException):
                raise outcome
        questions, dropped = (self._check_open(drafts.questions) if style == "hmi"
                              else self._check_choice(clip, drafts.questions))
        await self._blind(clip, questions, calls)
        if self.params.drop_guessable:
            dropped += [Dropped(q["question"], "guessable") for q in questions if q["guessable"]]
            questions = [q for q in questions if not q["guessable"]]
        result: dict[str, Any] = {"questions": questions}
        if style == "actionart":
            result.update(visual_result)
        return result, dropped

    def _check_choice(self, clip: Clip, drafts: list) -> tuple[list[dict], list[Dropped]]:
        """Category rules, then duplicates, then the shuffle: haic and actionart."""
        haic = self.params.style == "haic"
        passed, dropped = [], []
        for d in drafts:
            # actionart's count subtask is held to HAIC's Count rule; its order subtask to no fixed phrase
            category = d.category if haic else ("Count" if d.subtask == "count" else "")
            rule = choice_violation(category, d.question, [d.correct_answer, *d.distractors],
                                    self.params.max_sequence_option_words)
            if rule:
                dropped.append(Dropped(d.question, rule))
            else:
                passed.append(d)
        kept, dups = drop_duplicates(passed, lambda d: d.question, self.params.near_duplicate)
        out = []
        for d in _ordered(kept, HAIC_CATEGORIES, "category") if haic else kept:
            options, answer = shuffle_options(clip.clip_id, d.question, d.correct_answer, d.distractors)
            label = {"category": d.category} if haic else {"subtask": d.subtask}
            out.append({**label, "question": d.question.strip(), "options": [o.strip() for o in options],
                        "answer": answer, "guessable": False})
        return out, dropped + dups

    def _check_open(self, drafts: list) -> tuple[list[dict], list[Dropped]]:
        """hmi: non-empty text, true/false answers that are 'true' or 'false', people by attributes, duplicates."""
        passed, dropped = [], []
        for d in drafts:
            answer = true_false(d.answer) if d.type == "true_false" else d.answer.strip()
            rule = choice_violation("", d.question, [d.answer or " "])  # empty text and 'Subject N'
            if rule is None and answer is None:
                rule = "true_false_answer"
            if rule:
                dropped.append(Dropped(d.question, rule))
                continue
            passed.append({"dimension": d.dimension, "type": d.type, "question": d.question.strip(),
                           "answer": answer, "guessable": False})
        kept, dups = drop_duplicates(passed, lambda q: q["question"], self.params.near_duplicate)
        return _ordered(kept, HMI_DIMENSIONS, "dimension"), dropped + dups

    async def _blind(self, clip: Clip, questions: list[dict], calls: list[CallResult]) -> None:
        """One text-only call per question set: questions and options only, no caption, no frames. Open-ended
        questions have no answer to match and are never marked."""
        if self.params.blind is None:
            return
        asked = [q for q in questions if "options" in q or q.get("type") == "true_false"]
        if not asked:
            return
        kind = "choice" if "options" in asked[0] else "true_false"
        lines = []
        for n, q in enumerate(asked, 1):
            lines.append(f"{n}. {q['question']}")
            lines += [f"   ({letter}) {option}" for letter, option in zip(LETTERS, q.get("options", []))]
        text = self._prompt("annotate", f"blind_{kind}", questions="\n".join(lines))
        answers = await self._call(clip, calls, "annotate.blind", "annotate_blind", text,
                                   blind_answers(len(asked), kind))
        for q, guess in zip(asked, answers.answers):
            q["guessable"] = guess == q["answer"]
        self.set(clip, blind_model=next(c.model for c in calls if c.expert == "annotate_blind"))

    # -- actionart's frame tasks -----------------------------------------------------------------------------------
    def keyframes(self, clip: Clip) -> list[int]:
        """The pose stage's pose-diverse keyframes when it ran, else kept frames spread evenly; at most max_frames."""
        chosen = [int(i) for i in clip.columns.get("pose_keyframe_indices") or []]
        if not chosen:
            return self.frames(clip, max_frames=self.params.max_frames).indices
        return _spread(chosen, self.params.max_frames)

    def pairs(self, clip: Clip, keyframes: list[int]) -> list[tuple[int, int]]:
        """Keyframe pairs for spatial differences: those with the largest main-person keypoint displacement when
        the pose stage recorded keypoints, else pairs spanning the clip evenly."""
        n = self.params.spatial_pairs
        if n == 0 or len(keyframes) < 2:
            return []
        keypoints = _main_keypoints(clip)
        candidates = [(a, b) for a, b in itertools.combinations(keyframes, 2) if a in keypoints and b in keypoints]
        if candidates:
            moved = {pair: _displacement(keypoints[pair[0]], keypoints[pair[1]]) for pair in candidates}
            ranked = sorted(candidates, key=lambda pair: -moved[pair])
            return [tuple(sorted(p)) for p in ranked[:n]]
        ends = _spread(keyframes, n + 1)
        return list(zip(ends[:-1], ends[1:]))

    async def _actionart_visual(self, clip: Clip, calls: list[CallResult]) -> dict:
        p = self.params
        keys = self.keyframes(clip)
        self.set(clip, frame_indices=keys)
        times = {i: float(clip.frame_times[i]) for i in keys}

        async def pose(i: int) -> dict:
            frames = encode_frames(clip, [i], p.max_side, p.vision.jpeg_quality)
            draft = await self._call(clip, calls, "annotate.vision", f"annotate_pose_{i}",
                                     self._prompt("actionart", "annotate_pose"), PoseDraft, frames)
            return {"frame_index": i, "time": times[i], "text": draft.text()}

        async def difference(a: int, b: int) -> dict:
            frames = encode_frames(clip, [a, b], p.max_side, p.vision.jpeg_quality)
            text = self._prompt("actionart", "annotate_diff", time_a=f"{times[a]:.2f}", time_b=f"{times[b]:.2f}")
            draft = await self._call(clip, calls, "annotate.vision", f"annotate_diff_{a}_{b}", text,
                                     DifferenceDraft, frames)
            return {"frame_a": a, "frame_b": b, "time_a": times[a], "time_b": times[b], "text": draft.text()}

        poses = await asyncio.gather(*(pose(i) for i in keys))
        differences = await asyncio.gather(*(difference(a, b) for a, b in self.pairs(clip, keys)))
        return {"pose_descriptions": list(poses), "spatial_differences": list(differences)}

    # -- hoigen ----------------------------------------------------------------------------------------------------
    async def _hoigen(self, clip: Clip, caption: str, calls: list[CallResult]) -> tuple[dict, list[Dropped]]:
        drafts = await self._generate(clip, caption, calls)
        passed, dropped = [], []
        for t in drafts.triplets:
            triplet = {"person": t.person.strip(), "verb": t.verb.strip(), "object": t.object.strip()}
            text = " | ".join(triplet.values())
            rule = choice_violation("", text, list(triplet.values()))  # empty parts, 'Subject N'
            if rule and rule != "duplicate_options":  # a person may share a word with the object: not a fault
                dropped.append(Dropped(text, rule))
            else:
                passed.append(triplet)
        kept, dups = drop_duplicates(passed, lambda t: " | ".join(t.values()), None)
        dropped += [Dropped(d.question, "duplicate_triplet") for d in dups]
        return {"triplets": kept}, dropped

    # -- bookkeeping -----------------------------------------------------------------------------------------------
    def _bookkeeping(self, clip: Clip, calls: list[CallResult]) -> None:
        generator = next((c for c in calls if c.expert == "annotate"), None)
        outcomes = {c.outcome for c in calls}
        outcome = next((o for o in (ERROR, BLOCKED, TRUNCATED, SUCCESS) if o in outcomes), None)
        self.set(clip, model=generator.model if generator else self.params.model, outcome=outcome,
                 prompt_hash=generator.prompt_hash if generator else None,
                 prompt_tokens=sum(c.prompt_tokens for c in calls), output_tokens=sum(c.output_tokens for c in calls),
                 thinking_tokens=sum(c.thinking_tokens for c in calls), latency_s=sum(c.latency_s for c in calls),
                 calls=len(calls), cached_calls=sum(c.cached for c in calls))


async def _nothing() -> None:
    return None


def _ordered(items: list, order: tuple[str, ...], key: str) -> list:
    """Questions grouped in the style's category order, keeping the model's order within a category."""
    def rank(item):
        value = item[key] if isinstance(item, dict) else getattr(item, key)
        return order.index(value)

    return sorted(items, key=rank)


def _spread(indices: list[int], n: int) -> list[int]:
    if len(indices) <= n:
        return list(indices)
    return [indices[i] for i in np.linspace(0, len(indices) - 1, n).round().astype(int)]


def _main_keypoints(clip: Clip) -> dict[int, np.ndarray]:
    """kept-frame index -> the main person's keypoints (x, y, score) where the pose stage recorded them."""
    out = {}
    for frame in clip.columns.get("pose_record") or []:
        main = next((p for p in frame.get("persons") or [] if p.get("track") == 0 and p.get("keypoints")), None)
        if main is not None:
            out[int(frame["frame_index"])] = np.asarray(main["keypoints"], dtype=np.float32)
    return out


def _displacement(a: np.ndarray, b: np.ndarray, min_score: float = 0.3) -> float:
    """Mean movement (normalised frame units) of the keypoints seen on both frames; 0 when none is."""
    n = min(len(a), len(b))
    seen = (a[:n, 2] > min_score) & (b[:n, 2] > min_score)
    if not seen.any():
        return 0.0
    return float(np.linalg.norm(a[:n, :2][seen] - b[:n, :2][seen], axis=1).mean())
