"""MoME (HOIGen-1M's mixture of multimodal experts, [S3] §4.4), cross-checking the caption stage's caption.

Expert A is the caption stage; expert B captions the same frames with another model; a decision expert judges
whether both describe the same people/objects, interaction and scene, asked in both orders (LLM judges flip with
the order about a third of the time, Zheng et al. 2306.05685): an order-dependent verdict counts as disagreement.
Agreement -> the caption both orders call richer (A when they differ): branch `consistent`. Disagreement -> a third
expert looks again at the named disagreement and the decision expert writes the corrected caption: `corrected`.
HOIGen's rule (no human-object interaction, by both orders) or the person-count rule -> `rejected`.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

import pyarrow as pa

from pipeline.clip import Clip
from stages.caption.caller import ERROR, CallResult
from stages.caption.client import EndpointParams
from stages.caption.stage import CaptionFailed, VlmParams, VlmStage, clip_span, encode_frames, parse_with
from stages.caption.styles import _Strict


class Verdict(_Strict):
    consistent: bool
    disagreement: str
    reason: str
    richer: Literal["A", "B"]
    has_interaction: bool


VERDICT = pa.struct([("order", pa.string()), ("consistent", pa.bool_()), ("disagreement", pa.string()),
                     ("reason", pa.string()), ("richer", pa.string()), ("has_interaction", pa.bool_())])


class MomeParams(VlmParams):
    # VlmParams' own endpoint fields (model, base_url, ...) are expert B's; the other roles have their own.
    model: str = "OpenGVLab/InternVL3-8B"  # expert B: another family than expert A (Qwen) [P]; HOIGen: Qwen2-VL [S3]
    third: EndpointParams = EndpointParams(model="llava-hf/llava-onevision-qwen2-7b-ov-hf")  # HOIGen: LLaVA [S3]
    judge: EndpointParams = EndpointParams(model="meta-llama/Llama-3.1-8B-Instruct", temperature=0.3)  # [S3]
    # (not 0: a retry after an invalid answer takes a new seed, which greedy decoding would ignore)
    judge_sees_frames: bool = False  # HOIGen's judge reads captions only [S3]; True sends it the frames too [P]
    require_interaction: bool = False  # HOIGen's rule: reject when both orders see no human-object interaction


class MomeStage(VlmStage):
    name = "mome"
    Params = MomeParams
    requires = ("caption",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "mome_caption": pa.string(),  # the final prose caption (the dataset's caption when mome runs)
        "mome_json": pa.string(),
        "mome_branch": pa.string(),  # consistent | corrected | rejected
        "mome_source": pa.string(),  # a | b | corrected: where the final caption came from
        "mome_expert_a_model": pa.string(),
        "mome_expert_b_model": pa.string(),
        "mome_expert_b_caption": pa.string(),
        "mome_third_model": pa.string(),
        "mome_third_caption": pa.string(),
        "mome_judge_model": pa.string(),
        "mome_verdicts": pa.list_(VERDICT),  # one per order asked: "ab", "ba"
        "mome_disagreement": pa.string(),
        "mome_reason": pa.string(),
        "mome_prompt_tokens": pa.int64(),
        "mome_output_tokens": pa.int64(),
        "mome_thinking_tokens": pa.int64(),
        "mome_latency_s": pa.float64(),
        "mome_calls": pa.int32(),
        "mome_cached_calls": pa.int32(),
    }
    rules: ClassVar[dict[str, str]] = {
        "no_interaction": "both judge orders see no human-object interaction (HOIGen's rule)",
        "person_count": "the caption's number of people differs from the pose detector's by more than allowed",
    }

    def endpoints(self) -> dict[str, EndpointParams]:
        expert_b = EndpointParams(**{k: getattr(self.params, k) for k in EndpointParams.model_fields})
        return {"mome.expert_b": expert_b, "mome.third": self.params.third, "mome.judge": self.params.judge}

    def input_roles(self) -> list[str]:
        return ["mome.expert_b", "mome.third"] + (["mome.judge"] if self.params.judge_sees_frames else [])

    async def process_clip_async(self, clip: Clip) -> None:
        style = self.style()
        if clip.columns.get("caption_style") != style.name:
            raise CaptionFailed(f"mome.style {style.name!r} differs from the caption stage's "
                                f"{clip.columns.get('caption_style')!r}")
        parse = parse_with(style)
        caption_a = style.parse(clip.columns["caption_json"])
        # every expert and the judge see exactly the frames (or the span) expert A saw
        sent = clip.columns.get("caption_send") or "frames"
        if sent != self.params.send:
            raise CaptionFailed(f"mome.send {self.params.send!r} differs from the caption stage's {sent!r}")
        if sent == "clip":
            frames = await clip_span(clip, self.params, self.caller.io)
        else:
            frames = encode_frames(clip, list(clip.columns["caption_frame_indices"]), self.params.max_side,
                                   self.params.jpeg_quality)
        if frames.digest != clip.columns.get("caption_frames_hash"):
            raise CaptionFailed(f"mome's {sent} differ from the caption stage's: give mome the same "
                                + ("fps as caption" if sent == "clip" else "max_side and jpeg_quality as caption"))
        calls: list[CallResult] = []

        async def ask(role, expert, text, schema, with_frames=True, parser=parse):
            result = await self.ask(clip, role, expert, text, frames if with_frames else None, parser, schema,
                                    schema.__name__.lower())
            calls.append(result)
            if result.outcome == ERROR or result.parsed is None:
                raise CaptionFailed(f"{expert}: {result.error or result.outcome}")
            return result

        b = await ask("mome.expert_b", "mome_b", self.prompt(clip), style.schema)
        caption_b = b.parsed
        text_a, text_b = style.render(caption_a), style.render(caption_b)
        judge_frames = self.params.judge_sees_frames
        judge_parse = Verdict.model_validate_json
        ab, ba = await asyncio.gather(
            ask("mome.judge", "mome_judge_ab", self.prompt(clip, "judge", caption_a=text_a, caption_b=text_b),
                Verdict, judge_frames, judge_parse),
            ask("mome.judge", "mome_judge_ba", self.prompt(clip, "judge", caption_a=text_b, caption_b=text_a),
                Verdict, judge_frames, judge_parse))
        v_ab, v_ba = ab.parsed, ba.parsed
        verdicts = [{"order": "ab", **v_ab.model_dump()}, {"order": "ba", **v_ba.model_dump()}]
        disagreement = " / ".join(dict.fromkeys(v.disagreement for v in (v_ab, v_ba)
                                                if not v.consistent and v.disagreement)) or (
            "the two orders of the judge disagree" if v_ab.consistent != v_ba.consistent else "")
        reason = " / ".join(dict.fromkeys(v.reason for v in (v_ab, v_ba) if v.reason))
        self.set(clip, expert_a_model=clip.columns.get("caption_model"), expert_b_model=b.model,
                 expert_b_caption=text_b, judge_model=ab.model, verdicts=verdicts, reason=reason)

        if self.params.require_interaction and not v_ab.has_interaction and not v_ba.has_interaction:
            self._finish(clip, calls, branch="rejected", disagreement=disagreement)
            self.reject(clip, "no_interaction", 0, 1)
            return
        if v_ab.consistent and v_ba.consistent:
            # "richer" named in both orders: ab's A is caption A, ba's A is caption B
            pick_b = v_ab.richer == "B" and v_ba.richer == "A"
            final, source = (caption_b, "b") if pick_b else (caption_a, "a")
            branch = "consistent"
        else:
            third = await ask("mome.third", "mome_third", self.prompt(clip, "third", disagreement=disagreement)
                              + "\n" + self.prompt(clip), style.schema)
            self.set(clip, third_model=third.model, third_caption=style.render(third.parsed))
            corrected = await ask("mome.judge", "mome_correct", self.prompt(
                clip, "correct", caption_a=text_a, caption_b=text_b, disagreement=disagreement, reason=reason,
                caption_c=style.render(third.parsed)), style.schema, judge_frames)
            final, source, branch = corrected.parsed, "corrected", "corrected"
        self.set(clip, caption=style.render(final), json=final.model_dump_json(), source=source)
        self._finish(clip, calls, branch=branch, disagreement=disagreement)
        if not self._people_ok(clip, final):
            clip.columns["mome_branch"] = "rejected"

    def _people_ok(self, clip: Clip, caption) -> bool:
        self.check_people(clip, caption)
        return clip.alive

    def _finish(self, clip: Clip, calls: list[CallResult], branch: str, disagreement: str) -> None:
        self.set(clip, branch=branch, disagreement=disagreement,
                 prompt_tokens=sum(c.prompt_tokens for c in calls), output_tokens=sum(c.output_tokens for c in calls),
                 thinking_tokens=sum(c.thinking_tokens for c in calls), latency_s=sum(c.latency_s for c in calls),
                 calls=len(calls), cached_calls=sum(c.cached for c in calls))
