"""The caption stage: one VLM caption per clip in a style's JSON schema, rendered to prose, on the frames the scenes
stage kept. Calls go out concurrently (bounded per worker) from an asyncio loop inside the Ray actor."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import cv2
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from pipeline.calls import CallLedger
from pipeline.clip import Clip
from pipeline.errors import UserError
from pipeline.stage import FrameRequest, Resources, Stage
from stages.caption.caller import BLOCKED, ERROR, Caller, CallResult
from stages.caption.client import EndpointParams, Request, make_client
from stages.caption.sources import read_source_captions
from stages.caption.span import Span, SpanError, copy_span
from stages.caption.styles import STYLES, Style, cached_prompt


class CaptionFailed(Exception):
    """A clip's model call ended without a usable answer (its error row says why)."""


class VlmParams(EndpointParams):
    """What every model-calling stage shares beyond one endpoint: the style, the frames, the load it may put on
    the endpoints."""

    style: Literal["haic", "hmi", "hoigen", "actionart"] = "haic"
    fps: float = Field(2.0, gt=0)  # frames asked from scenes (Cosmos-Curate and NeMo sample 2 fps)
    max_side: int = Field(448, ge=64)  # long side of the frames sent (Qwen2.5-VL's 448 px tiles)
    max_frames: int = Field(8, ge=1)  # spread evenly over the clip
    ground_on_pose: bool = False  # put the pose stage's facts (people, positions, motion) into the prompt
    # how far the caption's num_people may fall outside the detector's [median, max] persons per frame before the
    # clip is rejected (rule person_count); None: off. Needs pose.
    max_person_count_diff: int | None = Field(None, ge=0)
    concurrency: int = Field(16, ge=1)  # requests in flight per worker
    workers: int | None = Field(None, ge=1)  # actors at most; the cluster-wide bound is workers x concurrency
    batch_size: int = Field(8, ge=1)  # rows (videos) a worker takes at once; their clips are captioned together
    gpu_share: float = Field(1.0, gt=0, le=1)  # Ray num_gpus of one worker when a role runs on backend vllm
    # what the model sees: the kept frames as JPEGs, or (backend gemini) the clip's own span of the source video,
    # stream-copied, with videoMetadata offsets and `fps` as Gemini's sampling rate (at most 24)
    send: Literal["frames", "clip"] = "frames"
    # Gemini's inline request limit: a larger copied span is uploaded through the Files API, used, then deleted
    max_inline_mb: float = Field(20.0, gt=0)


class CaptionParams(VlmParams):
    keyframes: Literal["uniform", "pose"] = "uniform"  # pose: the pose stage's pose-diverse keyframes (HMI)
    # a .csv/.jsonl/.parquet list with uri and caption columns (the input list itself may carry them): each
    # video's source-dataset caption goes into the prompt as context (HMI [E3])
    source_captions: str | None = None


FILES_API_MAX_BYTES = 2 * 2**30  # Gemini's Files API takes files up to 2 GB


@dataclass
class Frames:
    """What a clip's calls send: indices into the clip's kept frames, their times, JPEG bytes, one hash; or, with
    send: clip, no frames but the clip's copied span (the hash is then the span's)."""

    indices: list[int]
    times: list[float]
    jpegs: list[bytes]
    digest: str
    video: Span | None = None
    upload: bool = False  # the span is over max_inline_mb: sent through the Files API

    def record(self) -> dict:
        """What the call records keep of the input (never the bytes)."""
        if self.video is not None:
            return {"video": self.video.record()}
        return {"frame_indices": self.indices, "frame_times": self.times}


async def clip_span(clip: Clip, params: VlmParams, io) -> Frames:
    """The clip's span stream-copied out of its source (in `io`'s threads: it reads the video) as the input."""
    try:
        span = await io(copy_span, clip.video_uri, clip.start_s, clip.end_s, params.fps)
    except SpanError as exc:
        raise CaptionFailed(str(exc)) from None
    if len(span.data) > FILES_API_MAX_BYTES:
        raise CaptionFailed(f"the clip's copied span is {len(span.data) / 2**30:.1f} GB, over the Files API's 2 GB "
                            f"a file: shorter clips, or send: frames")
    return Frames([], [], [], span.digest, span, upload=len(span.data) > params.max_inline_mb * 2**20)


def encode_frames(clip: Clip, indices: list[int], max_side: int, quality: int) -> Frames:
    if not clip.frame_bytes or not indices:
        raise CaptionFailed("the clip has no kept frames to send")
    jpegs = []
    for i in indices:
        frame = clip.frame_image(i, max_side)
        h, w = frame.shape[:2]
        if max(h, w) > max_side:
            scale = max_side / max(h, w)
            frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise CaptionFailed(f"could not encode kept frame {i} as JPEG")
        jpegs.append(buf.tobytes())
    digest = hashlib.sha256()
    for i, jpeg in zip(indices, jpegs):
        digest.update(f"{i}:{len(jpeg)}:".encode())
        digest.update(jpeg)
    times = [float(clip.frame_times[i]) for i in indices]
    return Frames(list(indices), times, jpegs, digest.hexdigest()[:16])


def pose_facts(clip: Clip) -> str:
    """The pose stage's facts as prompt lines: who the detector saw, where, and how they moved."""
    cols = clip.columns
    lines = []
    per_frame = cols.get("pose_persons_per_frame") or []
    if cols.get("pose_persons_max") is not None:
        typical = int(np.median(per_frame)) if per_frame else cols["pose_persons_max"]
        lines.append(f"- people detected: {typical} on a typical frame, {cols['pose_persons_max']} at most")
    record = cols.get("pose_record") or []
    if record and record[0].get("persons"):
        xs = sorted(((p["box"][0] + p["box"][2]) / 2) for p in record[0]["persons"] if p.get("box"))
        where = ["left" if x < 0.4 else "right" if x > 0.6 else "centre" for x in xs]
        if where:
            lines.append(f"- positions on the first keyframe, left to right: {', '.join(where)}")
    lines += [f"- {fact}" for fact in (cols.get("pose_motion_facts") or [])[:12]]
    if not lines:
        return ""
    return "\nFacts from a pose detector (trust them for counts and positions):\n" + "\n".join(lines) + "\n"


def detected_people(clip: Clip) -> tuple[int, int] | None:
    """The pose detector's people count as a range: a typical frame's (median) to the most on any frame, so a
    person hidden on some frames or a passer-by on one does not make a caption wrong."""
    most = clip.columns.get("pose_persons_max")
    if most is None:
        return None
    per_frame = clip.columns.get("pose_persons_per_frame") or [most]
    return min(int(np.median(per_frame)), int(most)), int(most)


class VlmStage(Stage):
    """Shared machinery of the model-calling stages: clients per role, the call records, the event loop."""

    reads_any_level = True  # frames may be pose's keyframes (encode_frames reads them with frame_image)

    Params = VlmParams
    actor = True
    resources = Resources(cpus=0.5, batch_size=8)

    def style(self) -> Style:
        return STYLES[self.params.style]

    def endpoints(self) -> dict[str, EndpointParams]:
        """Role -> endpoint this stage calls."""
        raise NotImplementedError

    def requirements(self) -> tuple[str, ...]:
        p = self.params
        needs = list(self.requires)
        if p.ground_on_pose:
            needs.append("pose_persons_max")
        if p.max_person_count_diff is not None:
            needs.append("pose_persons_max")
        return tuple(dict.fromkeys(needs))

    def frame_request(self) -> FrameRequest:
        return FrameRequest(self.params.fps, self.params.max_side)

    def resources_for(self, cluster_gpus: float) -> Resources:
        # an HTTP client takes no GPU whatever the cluster has; its load on the endpoints is workers x concurrency.
        # A role on backend vllm runs its model in this actor: the actor needs its GPU share on any cluster.
        update: dict = {"batch_size": self.params.batch_size, "max_workers": self.params.workers}
        if self.can_use_gpu():
            update["gpus"] = self.params.gpu_share
        return self.resources.model_copy(update=update)

    def can_use_gpu(self) -> bool:
        return any(ep.backend == "vllm" for ep in self.endpoints().values())

    def preflight(self) -> None:
        if self.params.send == "clip":
            for role in self.input_roles():
                if self.endpoints()[role].backend != "gemini":
                    raise UserError(f"{role}: send: clip needs backend gemini (the others take frames only); "
                                    f"it has backend {self.endpoints()[role].backend}")
            if self.params.fps > 24:
                raise UserError(f"{self.name}.fps {self.params.fps:g}: Gemini samples a video at 24 fps at most")
        for role, endpoint in self.endpoints().items():
            make_client(endpoint, 1, role).check()

    def input_roles(self) -> list[str]:
        """The roles that are sent the clip's frames or span (all, unless a subclass says otherwise)."""
        return list(self.endpoints())

    def setup(self) -> None:
        self.loop = asyncio.new_event_loop()
        concurrency = self.params.concurrency
        self.setup_error: Exception | None = None
        try:
            clients = {role: make_client(ep, concurrency, role) for role, ep in self.endpoints().items()}
        except UserError as exc:
            # a worker node without the key or endpoint variables (preflight saw them on the driver): its clips
            # become error rows that say so, rather than a crashed actor pool
            self.setup_error, clients = exc, {}
        # the semaphore belongs to the loop that runs every batch of this worker
        self.caller = Caller(CallLedger(self.context.output), asyncio.Semaphore(concurrency), clients)

    def process(self, clips: list[Clip]) -> list[Clip]:
        if not hasattr(self, "loop"):
            self.setup()
        if self.setup_error is not None:
            for clip in clips:
                if clip.alive:
                    clip.fail(self.name, CaptionFailed(f"on this worker: {self.setup_error}"))
            return clips
        self.loop.run_until_complete(self._all(clips))
        return clips

    async def _all(self, clips: list[Clip]) -> None:
        await asyncio.gather(*(self._guarded(c) for c in clips if c.alive))

    async def _guarded(self, clip: Clip) -> None:
        try:
            async with self.caller.sharing_uploads(clip.clip_id):
                await self.process_clip_async(clip)
        except Exception as exc:  # one clip's failure is its error row; its batch siblings go on
            clip.fail(self.name, exc)

    async def process_clip_async(self, clip: Clip) -> None:
        raise NotImplementedError

    def source_caption(self, clip: Clip) -> str | None:
        return None

    def prompt(self, clip: Clip, name: str = "caption", **slots: str) -> str:
        text = self.style().prompt(name) if name == "caption" else _template(name)
        facts = pose_facts(clip) if self.params.ground_on_pose else ""
        source = self.source_caption(clip)
        source = (f"\nThe source dataset's caption of this video (it may be coarse or wrong; the frames decide):\n"
                  f"{source}\n") if source else ""
        for slot, value in {"facts": facts, "source": source, **slots}.items():
            text = text.replace("{" + slot + "}", value)
        return text

    async def ask(self, clip: Clip, role: str, expert: str, text: str, frames: Frames | None,
                  parse, schema: type[BaseModel], schema_name: str) -> CallResult:
        video = frames.video if frames else None
        request = Request(text=text, images=frames.jpegs if frames else [], frame_times=frames.times if frames else [],
                          schema_name=schema_name, schema=json_schema(schema),
                          video=video.data if video else None, video_metadata=video.metadata() if video else None,
                          upload_video=bool(frames and frames.upload))
        return await self.caller.call(self.caller.clients[role], clip.clip_id, expert, request,
                                      frames.digest if frames else "none", parse, frames.record() if frames else {})

    def check_people(self, clip: Clip, caption: BaseModel) -> None:
        claimed = self.style().people(caption)
        detected = detected_people(clip)
        if self.params.max_person_count_diff is None or claimed is None or detected is None:
            return
        low, high = detected
        off = low - claimed if claimed < low else max(0, claimed - high)
        self.at_most(clip, "person_count", off, self.params.max_person_count_diff)


@functools.lru_cache(maxsize=None)
def json_schema(model: type[BaseModel]) -> dict:
    """A schema class's JSON schema, made once (pydantic takes about a millisecond each time)."""
    return model.model_json_schema()


def _template(name: str) -> str:
    return cached_prompt("mome", name)


def parse_with(style: Style):
    def parse(text: str) -> BaseModel:
        return style.parse(text)

    return parse


class CaptionStage(VlmStage):
    name = "caption"
    Params = CaptionParams
    requires = ("scenes",)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "caption_text": pa.string(),  # prose, rendered from caption_json
        "caption_json": pa.string(),  # the style's JSON as the model wrote it (validated)
        "caption_style": pa.string(),
        "caption_model": pa.string(),
        "caption_outcome": pa.string(),  # success | truncated | blocked | error
        "caption_prompt_hash": pa.string(),
        "caption_frames_hash": pa.string(),
        "caption_frame_indices": pa.list_(pa.int32()),  # into the clip's kept frames (scenes_kept_frame_times)
        "caption_frame_times": pa.list_(pa.float64()),
        "caption_send": pa.string(),  # frames | clip
        # send: clip: the copied span (source time of its first frame), the offsets and fps sent, its size
        "caption_video": pa.struct([("copy_start_s", pa.float64()), ("start_offset_s", pa.float64()),
                                    ("end_offset_s", pa.float64()), ("fps", pa.float64()), ("bytes", pa.int64())]),
        "caption_prompt_tokens": pa.int64(),
        "caption_output_tokens": pa.int64(),
        "caption_thinking_tokens": pa.int64(),
        "caption_latency_s": pa.float64(),
        "caption_attempts": pa.int32(),  # completions paid for (new seeds after invalid or degenerate output)
        "caption_cached": pa.bool_(),  # answered from OUT/calls (a resumed run): nothing paid this time
    }
    rules: ClassVar[dict[str, str]] = {
        "blocked": "the model's safety filter blocked the caption",
        "person_count": "the caption's number of people differs from the pose detector's by more than allowed",
    }

    def requirements(self) -> tuple[str, ...]:
        extra = ("pose_keyframe_indices",) if self.params.keyframes == "pose" else ()
        return tuple(dict.fromkeys(super().requirements() + extra))

    def preflight(self) -> None:
        if self.params.source_captions:
            read_source_captions(self.params.source_captions)  # a bad path or columns: one line, before any video
        super().preflight()

    def setup(self) -> None:
        super().setup()
        self.sources: dict[str, str] = {}
        try:
            if self.params.source_captions:
                self.sources = read_source_captions(self.params.source_captions)
        except UserError as exc:  # the list is not readable from this worker: its clips say so
            self.setup_error = self.setup_error or exc

    def source_caption(self, clip: Clip) -> str | None:
        return self.sources.get(clip.video_uri)

    def endpoints(self) -> dict[str, EndpointParams]:
        fields = EndpointParams.model_fields
        return {self.name: EndpointParams(**{k: getattr(self.params, k) for k in fields})}

    def pick_indices(self, clip: Clip) -> list[int]:
        p = self.params
        if p.keyframes == "pose" and clip.columns.get("pose_keyframe_indices"):
            chosen = list(clip.columns["pose_keyframe_indices"])
            if len(chosen) > p.max_frames:
                chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, p.max_frames).round().astype(int)]
            return [int(i) for i in chosen]
        return self.frames(clip, max_frames=p.max_frames).indices

    async def process_clip_async(self, clip: Clip) -> None:
        style = self.style()
        if self.params.send == "clip":
            frames = await clip_span(clip, self.params, self.caller.io)
        else:
            frames = encode_frames(clip, self.pick_indices(clip), self.params.max_side, self.params.jpeg_quality)
        result = await self.ask(clip, self.name, self.name, self.prompt(clip), frames, parse_with(style),
                                style.schema, style.name)
        self.set(clip, style=style.name, model=result.model, outcome=result.outcome, prompt_hash=result.prompt_hash,
                 frames_hash=frames.digest, frame_indices=frames.indices, frame_times=frames.times,
                 send=self.params.send, video=frames.video.record() if frames.video else None,
                 prompt_tokens=result.prompt_tokens, output_tokens=result.output_tokens,
                 thinking_tokens=result.thinking_tokens, latency_s=result.latency_s, attempts=result.attempts,
                 cached=result.cached)
        if result.outcome == BLOCKED:
            self.reject(clip, "blocked", None, None)
            return
        if result.outcome == ERROR or result.parsed is None:
            raise CaptionFailed(result.error or "no usable caption")
        self.set(clip, json=result.parsed.model_dump_json(), text=style.render(result.parsed))
        self.check_people(clip, result.parsed)
