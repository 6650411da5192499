"""One OpenAI-compatible chat-completions endpoint (vLLM's `vllm serve`, hosted APIs), spoken over plain HTTP.

No SDK: the retry policy is ours (the SDKs retry on their own schedule and hide Retry-After), and the request body
is exactly what vLLM documents: images or one pre-sampled `video_url`, `response_format` json_schema, and vLLM-only
keys merged at the top level (what the openai SDK's `extra_body` does).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import os
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
from pydantic import Field

from pipeline.errors import UserError
from pipeline.proxies import UnsupportedProxy, origin_of, proxy_for
from pipeline.redact import redact
from pipeline.stage import StageParams
from stages.caption.http import HttpClient, HttpTimeout, HttpTransportError, Response

MAX_RETRY_AFTER_S = 600.0  # a server's Retry-After is honoured up to this (a misconfigured one may say a day)
RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class EndpointParams(StageParams):
    """Where one model is served and how it is asked. Keys never appear here: only the name of the environment
    variable that holds one (the recipe, run.json and the manifests are not secret)."""

    # gemini: the Gemini API's own REST (generateContent); vllm: the model in-process on this worker's GPU
    backend: Literal["openai", "gemini", "vllm"] = "openai"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    base_url: str | None = None  # e.g. http://gpu-node:8000/v1; None: read from base_url_env
    base_url_env: str = "ACTCURATE_VLM_BASE_URL"
    api_key_env: str | None = "ACTCURATE_VLM_API_KEY"  # None: a server without keys (vllm serve without --api-key)
    frames_as: Literal["images", "video"] = "images"  # video: one vLLM video_url made of the same JPEG frames
    # Qwen's recommended sampling (QwenLM/Qwen3-VL#1825): near-greedy decoding loops for ever on some clips
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.8, gt=0, le=1)
    max_tokens: int = Field(2048, ge=16)
    seed: int = 0  # first attempt's seed; a retry for invalid or degenerate output takes the next one
    # vLLM keys: top_k, repetition_penalty, mm_processor_kwargs; backend vllm: SamplingParams keywords, and under
    # `engine` the LLM(...) keywords (max_model_len, gpu_memory_utilization, tensor_parallel_size, ...)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    jpeg_quality: int = Field(90, ge=30, le=100)
    timeout_s: float = Field(120.0, gt=0)  # per request
    max_retries: int = Field(6, ge=0)  # on 408/429/5xx, timeouts and dropped connections
    backoff_s: float = Field(1.0, ge=0)  # first back-off; doubles per retry, full jitter, at least Retry-After
    backoff_max_s: float = Field(60.0, ge=0)
    max_seed_retries: int = Field(2, ge=0)  # new seeds for invalid JSON, empty or degenerate output
    # gemini: thinking tokens count against the output limit (googleapis/python-genai#782), so the request asks
    # for max_tokens + thinking_budget; None leaves thinking to the model (and the answer may come back empty)
    thinking_budget: int | None = Field(1024, ge=0)

    def resolved_base_url(self) -> str | None:
        url = self.base_url or os.environ.get(self.base_url_env)
        return url.rstrip("/") if url else None


class CallError(Exception):
    """A call that will not succeed by retrying it now (fatal status, or retries spent)."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(redact(message))
        self.status = status
        self.retryable = retryable


@dataclass
class Reply:
    content: str
    finish_reason: str
    model: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    http_attempts: int = 1
    latency_s: float = 0.0


@dataclass
class Request:
    """What one call asks, backend-neutral: the text, the frames (JPEG) and their times, the JSON schema."""

    text: str
    images: list[bytes] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)
    schema_name: str = "answer"
    schema: dict[str, Any] | None = None
    video: bytes | None = None  # send: clip (gemini): the clip's stream-copied span, an MP4
    video_metadata: dict[str, Any] | None = None  # Gemini's videoMetadata for it (startOffset, endOffset, fps)
    upload_video: bool = False  # over the inline limit: sent through the backend's file upload (Gemini Files API)
    video_file: dict[str, str] | None = None  # the uploaded file while the calls use it: name, uri, mimeType


def retry_after_s(headers) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ChatClient:
    """One endpoint, async, with bounded and classified retries; one per role, worker and event loop. Subclasses
    say how a request is written and an answer read."""

    def __init__(self, params: EndpointParams, concurrency: int, role: str):
        self.params = params
        self.role = role
        self.url = params.resolved_base_url()
        if not self.url:
            raise UserError(f"{role}: no endpoint: set {params.base_url_env} or {role}.base_url")
        self.api_key = os.environ.get(params.api_key_env) if params.api_key_env else None
        if params.api_key_env and not self.api_key:
            raise UserError(f"{role}: environment variable {params.api_key_env} (the key for {self.url}) is not set")
        self.concurrency = concurrency
        self._http: HttpClient | None = None

    def _client(self) -> HttpClient:
        if self._http is None:  # made on first use, inside the worker's event loop (preflight never needs it)
            self._http = HttpClient(self.params.timeout_s, self._headers())
        return self._http

    async def _post(self, url: str, payload: dict[str, Any]) -> Response:
        return await self._client().post_json(url, payload)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, request: Request, seed: int) -> dict[str, Any]:
        raise NotImplementedError

    def frames_only(self, request: Request) -> None:
        """For the backends that take no video file: a span sent to them is an error, never silently dropped."""
        if request.video is not None:
            raise CallError(f"{self.role}: backend {self.params.backend} takes frames only (send: clip needs "
                            "backend gemini)")

    def endpoint(self, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def _reply(self, data: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError

    def _check_response(self, response: httpx2.Response) -> None:
        if response.status_code in (401, 403):
            raise UserError(f"{self.role}: {self.url} refused the key in {self.params.api_key_env} "
                            f"(HTTP {response.status_code})")

    def _get(self, url: str) -> httpx2.Response:
        """Preflight's GET, by the route the calls will take (the proxy from `proxy_for`, not httpx's own reading
        of the environment, so both agree)."""
        try:
            proxy = proxy_for(*origin_of(url))
        except UnsupportedProxy as exc:
            raise UserError(f"{self.role}: {exc}") from None
        via = f" via proxy {proxy.name}" if proxy else ""
        try:
            response = httpx2.get(url, headers=self._headers(), timeout=min(self.params.timeout_s, 30),
                                  trust_env=False, proxy=proxy.url if proxy else None)
        except httpx2.HTTPError as exc:
            raise UserError(f"{self.role}: cannot reach {self.url}{via} ({type(exc).__name__})") from None
        if proxy and response.status_code == 407:
            raise UserError(f"{self.role}: proxy {proxy.name} refused the credentials in its URL (HTTP 407)")
        return response

    # -- sending ---------------------------------------------------------------------------------------------------
    def accepts(self, request: Request) -> None:
        """Raise CallError for what this backend cannot be sent (a video span, unless it takes one)."""
        self.frames_only(request)

    def upload_owner(self) -> tuple:
        """Whose an uploaded file is: calls to the same endpoint with the same key may use one upload."""
        return (self.url, self.api_key)

    async def upload(self, request: Request) -> dict[str, str]:
        """Put the request's span on the server (a backend with a file API) and return the file: name, uri,
        mimeType. Raises CallError when it cannot (`accepts` already refused a span to a frames-only backend)."""
        raise CallError(f"{self.role}: backend {self.params.backend} cannot upload a file")

    async def delete_upload(self, file: dict[str, str]) -> None:
        """Remove a file `upload` put on the server."""

    async def complete(self, body: dict[str, Any]) -> Reply:
        """One completion, retried on 408/429/5xx, timeouts and dropped connections (exponential back-off with full
        jitter, never shorter than Retry-After); 400/401/403/404 fail at once."""
        started = time.perf_counter()
        url = self.endpoint(body)
        payload = {k: v for k, v in body.items() if not k.startswith("_")}
        reply, attempts = await self.retrying(lambda: self._post(url, payload), lambda r: self._reply(r.json()))
        reply.http_attempts = attempts
        reply.latency_s = time.perf_counter() - started
        return reply

    async def retrying(self, send, read):
        """`read(await send())` for a 200 answer, retried as `complete` says (an unreadable 200 is retried too);
        returns what `read` gave and how many requests it took."""
        p = self.params
        for attempt in range(p.max_retries + 1):
            wait_at_least = 0.0
            try:
                response = await send()
            except (HttpTimeout, HttpTransportError) as exc:
                problem = CallError(f"{self.role}: {type(exc).__name__} talking to {self.url}", retryable=True)
            else:
                if response.status_code == 200:
                    try:
                        return read(response), attempt + 1
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        problem = CallError(f"{self.role}: unreadable response body ({exc})", 200, retryable=True)
                else:
                    retryable = response.status_code in RETRY_STATUS
                    problem = CallError(f"{self.role}: HTTP {response.status_code} from {self.url}: "
                                        f"{response.text[:200]}", response.status_code, retryable)
                    wait_at_least = retry_after_s(response.headers) or 0.0
            if not problem.retryable or attempt == p.max_retries:
                raise problem
            backoff = random.uniform(0, min(p.backoff_max_s, p.backoff_s * 2 ** attempt))
            await asyncio.sleep(max(backoff, min(wait_at_least, MAX_RETRY_AFTER_S)))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class OpenAIClient(ChatClient):
    """OpenAI-compatible chat completions (vLLM's server, hosted APIs)."""

    def endpoint(self, body: dict[str, Any]) -> str:
        return f"{self.url}/chat/completions"

    # -- request building ------------------------------------------------------------------------------------------
    def body(self, request: Request, seed: int) -> dict[str, Any]:
        self.frames_only(request)
        p = self.params
        content: list[dict[str, Any]] = []
        if request.images and p.frames_as == "video":
            # vLLM: pre-sampled frames as one video (data:video/jpeg, comma-joined), so it does not resample and
            # every expert sees the same frames with their temporal encoding
            joined = ",".join(base64.b64encode(img).decode() for img in request.images)
            content.append({"type": "video_url", "video_url": {"url": f"data:video/jpeg;base64,{joined}"}})
        else:
            content += [{"type": "image_url",
                         "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(img).decode()}}
                        for img in request.images]
        content.append({"type": "text", "text": request.text})
        body: dict[str, Any] = {
            "model": p.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "seed": seed,
        }
        if request.schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": request.schema_name, "strict": True, "schema": request.schema}}
        extra = dict(p.extra_body)
        if request.images and p.frames_as == "video" and request.frame_times:
            times = request.frame_times
            span = max(times[-1] - times[0], 1e-3)
            fps = (len(times) - 1) / span if len(times) > 1 else 1.0
            extra.setdefault("media_io_kwargs", {"video": {
                "fps": round(fps, 4), "frames_indices": list(range(len(times))), "total_num_frames": len(times),
                "duration": round(span, 4)}})
        body.update(extra)
        return body

    def _reply(self, data: dict[str, Any]) -> Reply:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        return Reply(content=choice["message"].get("content") or "",
                     finish_reason=choice.get("finish_reason") or "",
                     model=data.get("model") or self.params.model,
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     output_tokens=int(usage.get("completion_tokens") or 0),
                     thinking_tokens=int(details.get("reasoning_tokens") or 0))

    # -- preflight -------------------------------------------------------------------------------------------------
    def check(self) -> None:
        """One cheap request on the driver (GET /models): the endpoint answers, takes the key and serves the model."""
        response = self._get(f"{self.url}/models")
        self._check_response(response)
        if response.status_code != 200:
            raise UserError(f"{self.role}: {self.url}/models answered HTTP {response.status_code}")
        try:
            served = [m.get("id", "") for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            served = []
        model = self.params.model
        if served and not any(s == model or s.endswith("/" + model) for s in served):
            raise UserError(f"{self.role}: {self.url} does not serve model {model!r} (it serves: "
                            f"{', '.join(served[:8])})")


def make_client(params: EndpointParams, concurrency: int, role: str) -> ChatClient:
    if params.backend == "gemini":
        from stages.caption.gemini import GeminiClient

        return GeminiClient(params, concurrency, role)
    if params.backend == "vllm":
        from stages.caption.vllm_engine import VllmClient

        return VllmClient(params, concurrency, role)
    return OpenAIClient(params, concurrency, role)


def degenerate(text: str) -> bool:
    """Endless repetition (QwenLM/Qwen3-VL#1611): text that compresses far better than any caption (a chunk
    looping), or few distinct word 4-grams. zlib runs in C: cheap enough for every answer."""
    if len(text) < 200:
        return False
    data = text.encode()
    if len(zlib.compress(data, 1)) < 0.08 * len(data):
        return True
    words = text.split()
    if len(words) < 40:
        return False
    grams = {tuple(words[i:i + 4]) for i in range(len(words) - 3)}
    return len(grams) / (len(words) - 3) < 0.3
