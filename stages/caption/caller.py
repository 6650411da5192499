"""One model call as the caption stages see it: looked up in OUT/calls first, paid for at most once, retried with a
new seed when the answer is unusable, and recorded the moment it finishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.calls import CallLedger, call_key
from stages.caption.client import CallError, ChatClient, Request, degenerate
from stages.caption.styles import text_hash

SUCCESS, TRUNCATED, BLOCKED, ERROR = "success", "truncated", "blocked", "error"
BLOCK_REASONS = frozenset({"content_filter", "safety", "recitation", "prohibited_content", "blocklist"})


@dataclass
class CallResult:
    """A finished call: the parsed answer (None unless usable) and what it cost."""

    expert: str
    model: str
    outcome: str
    content: str = ""
    parsed: Any = None
    error: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    seed: int | None = None
    prompt_hash: str = ""
    frames_hash: str = ""
    cached: bool = False

    def record(self) -> dict[str, Any]:
        fields = ("expert", "model", "outcome", "content", "error", "prompt_tokens", "output_tokens",
                  "thinking_tokens", "latency_s", "attempts", "seed", "prompt_hash", "frames_hash")
        return {f: getattr(self, f) for f in fields}


@dataclass
class Caller:
    """Shares one worker's HTTP clients, its in-flight bound and the run's call records between calls."""

    ledger: CallLedger
    limit: asyncio.Semaphore
    clients: dict[str, ChatClient] = field(default_factory=dict)
    # blocking work (call records on S3, copying a clip's span) gets its own threads: in the loop's default pool
    # (cores + 4 threads) S3 requests queued behind each other and held requests back from the endpoint
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32, "call-records"))
    # clip id -> (the uploading client's owner, span hash) -> (that client, its upload): within `sharing_uploads`
    uploads: dict[str, dict[tuple, tuple[ChatClient, asyncio.Task]]] = field(default_factory=dict)

    async def io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def records(self, fn, *args):
        """A call-record read or write: inline for a local OUT (a small file costs less than the hop to a thread
        and back), in the pool for S3 (a request each)."""
        if self.ledger.local:
            return fn(*args)
        return await self.io(fn, *args)

    @contextlib.asynccontextmanager
    async def sharing_uploads(self, clip_id: str):
        """A clip's calls share one upload of its span per endpoint and key (MoME's experts and judge would
        otherwise each upload the same bytes); the files are deleted when the clip's calls are done."""
        uploads = self.uploads.setdefault(clip_id, {})
        try:
            yield
        finally:
            del self.uploads[clip_id]
            await _delete_uploads(uploads)

    async def _uploaded(self, client: ChatClient, uploads: dict, request: Request, frames_hash: str) -> dict:
        key = (client.upload_owner(), frames_hash)
        if key not in uploads:
            uploads[key] = (client, asyncio.ensure_future(client.upload(request)))
        return await asyncio.shield(uploads[key][1])  # one caller's cancellation must not cancel the others' upload

    async def call(self, client: ChatClient, clip_id: str, expert: str, request: Request, frames_hash: str,
                   parse: Callable[[str], Any], extra_record: dict[str, Any] | None = None) -> CallResult:
        """`parse` turns the text into the answer or raises ValueError; an answer it rejects is retried with a
        new seed (never the identical request), as are empty and degenerate answers."""
        p = client.params
        prompt_hash = text_hash(request.text, request.schema, p.backend, p.model, p.frames_as, p.temperature, p.top_p,
                                p.max_tokens, p.extra_body, p.thinking_budget if p.backend == "gemini" else None)
        key = call_key(clip_id, f"{expert}:{p.model}", prompt_hash, frames_hash)
        found = await self.records(self.ledger.get, clip_id, key)
        if found is not None:
            result = CallResult(**{k: found.get(k) for k in CallResult.__dataclass_fields__
                                   if k not in ("parsed", "cached")}, cached=True)
            if result.outcome in (SUCCESS, TRUNCATED):
                result.parsed = parse(result.content)
            return result

        result = CallResult(expert, p.model, ERROR, prompt_hash=prompt_hash, frames_hash=frames_hash)
        shared = self.uploads.get(clip_id)
        uploads = shared if shared is not None else {}
        try:
            client.accepts(request)
            if request.upload_video:  # a span over the inline limit goes up first (Gemini's Files API)
                async with self.limit:
                    request.video_file = await self._uploaded(client, uploads, request, frames_hash)
            await self._ask(client, request, parse, result)
        except CallError as exc:
            result.error = str(exc)
        finally:
            if shared is None:
                await _delete_uploads(uploads)
        if result.outcome == TRUNCATED and result.parsed is None:
            result.outcome = ERROR  # nothing usable came back: a redo may ask again
        record = {**result.record(), "clip_id": clip_id, **(extra_record or {})}
        await self.records(self.ledger.put, clip_id, key, record)
        return result

    async def _ask(self, client: ChatClient, request: Request, parse: Callable[[str], Any], result: CallResult) -> None:
        """The completions of one call into `result`: a new seed after an unusable answer."""
        p = client.params
        for n in range(p.max_seed_retries + 1):
            seed = p.seed + n
            result.seed = seed
            try:
                async with self.limit:
                    reply = await client.complete(client.body(request, seed))
            except CallError as exc:
                result.outcome, result.error = ERROR, str(exc)
                result.attempts += 1
                break  # retries for transient faults already happened inside complete()
            result.attempts += 1
            result.latency_s += reply.latency_s  # on the wire, retries included; not the wait for a free slot
            result.prompt_tokens += reply.prompt_tokens  # every attempt is paid for
            result.output_tokens += reply.output_tokens
            result.thinking_tokens += reply.thinking_tokens
            result.model = reply.model or p.model
            result.content = reply.content
            if reply.finish_reason.lower() in BLOCK_REASONS:
                result.outcome, result.error = BLOCKED, f"blocked ({reply.finish_reason})"
                break
            if not reply.content.strip():
                result.outcome, result.error = ERROR, "empty answer"
                continue
            try:
                result.parsed = parse(reply.content)
            except ValueError as exc:
                truncated = reply.finish_reason == "length"
                result.outcome = TRUNCATED if truncated else ERROR
                result.error = ("output cut at max_tokens; " if truncated else "invalid answer: ") + str(exc)[:200]
                if degenerate(reply.content):
                    result.outcome, result.error = ERROR, "degenerate repetition"
                continue
            if degenerate(" ".join(_strings(json.loads(reply.content)))):  # a loop inside valid JSON's text
                result.parsed, result.outcome, result.error = None, ERROR, "degenerate repetition"
                continue
            result.outcome = TRUNCATED if reply.finish_reason == "length" else SUCCESS
            result.error = None
            break


async def _delete_uploads(uploads: dict[tuple, tuple[ChatClient, asyncio.Task]]) -> None:
    for client, upload in uploads.values():
        if not upload.done():
            upload.cancel()
        elif not upload.cancelled() and upload.exception() is None:
            await client.delete_upload(upload.result())


def _strings(value: Any) -> list[str]:
    """The text leaves of a JSON value (the keys and structure repeat by design; the text must not)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
