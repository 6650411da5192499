"""The model in-process: vLLM's offline engine (`vllm.LLM`) inside the caption stage's Ray GPU actor, for batch
inference on a cluster without serving anything.

The clip coroutines' requests are gathered into one batch (whatever is waiting when the engine is free, at most
`concurrency`) and run through `LLM.chat` in a worker thread; vLLM batches them on the GPU. Messages are the
OpenAI chat format `LLM.chat` accepts (JPEG frames as image_url data URLs), and the style's schema goes in as
structured output, so the answers pass through the same checks, seeds and call records as the HTTP backends.
Needs the vllm package on the GPU workers (not a dependency of actcurate: it pins its own torch).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.errors import UserError
from stages.caption.client import CallError, ChatClient, EndpointParams, Reply, Request

# LLM(...) defaults (Cosmos-Curate's engine settings), overridden by the role's `engine` parameters
ENGINE_DEFAULTS = {"max_model_len": 32768, "gpu_memory_utilization": 0.85}


class VllmClient(ChatClient):
    def __init__(self, params: EndpointParams, concurrency: int, role: str):
        # no endpoint and no key: the model runs here
        self.params, self.role, self.concurrency = params, role, concurrency
        self.url = f"vllm:{params.model}"
        self.api_key = None
        self._llm = None
        self._waiting: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._running = False
        self._thread = ThreadPoolExecutor(1, "vllm")  # one engine, one caller at a time

    def body(self, request: Request, seed: int) -> dict[str, Any]:
        """`LLM.chat` arguments: the conversation and the SamplingParams keywords (vLLM keys from extra_body)."""
        self.frames_only(request)
        p = self.params
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(img).decode()}}
            for img in request.images]
        content.append({"type": "text", "text": request.text})
        sampling: dict[str, Any] = {"temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens,
                                    "seed": seed, **{k: v for k, v in p.extra_body.items() if k != "engine"}}
        return {"messages": [{"role": "user", "content": content}], "sampling": sampling,
                "schema": request.schema, "images": len(request.images)}

    def engine_args(self, max_images: int) -> dict[str, Any]:
        return {"model": self.params.model, **ENGINE_DEFAULTS,
                "limit_mm_per_prompt": {"image": max(8, max_images)}, **self.params.extra_body.get("engine", {})}

    async def complete(self, body: dict[str, Any]) -> Reply:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((body, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                await asyncio.sleep(0)  # let every clip that is ready queue its request first
                batch, self._waiting = self._waiting[:self.concurrency], self._waiting[self.concurrency:]
                try:
                    replies = await loop.run_in_executor(self._thread, self._run, [b for b, _ in batch])
                except Exception as exc:  # an engine failure fails this batch's calls, not the worker
                    for _, future in batch:
                        future.set_exception(CallError(f"{self.role}: vLLM engine: {type(exc).__name__}: {exc}"))
                    continue
                for (_, future), reply in zip(batch, replies):
                    future.set_result(reply)
        finally:
            self._running = False

    def _run(self, bodies: list[dict[str, Any]]) -> list[Reply]:
        from vllm import SamplingParams

        if self._llm is None:
            from vllm import LLM

            self._llm = LLM(**self.engine_args(max(b["images"] for b in bodies)))
        started = time.perf_counter()
        params = [SamplingParams(**b["sampling"], **structured(b["schema"])) for b in bodies]
        outputs = self._llm.chat([b["messages"] for b in bodies], sampling_params=params, use_tqdm=False)
        latency = time.perf_counter() - started
        return [Reply(content=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason or "",
                      model=self.params.model, prompt_tokens=len(o.prompt_token_ids or []),
                      output_tokens=len(o.outputs[0].token_ids or []), latency_s=latency) for o in outputs]

    def check(self) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise UserError(f"{self.role}: backend vllm runs {self.params.model} in-process on a GPU worker and "
                            "needs the vllm package there (pip install vllm), which is not installed here; or serve "
                            "the model with `vllm serve` and use backend openai")

    async def aclose(self) -> None:
        self._thread.shutdown(wait=False)


def structured(schema: dict[str, Any] | None) -> dict[str, Any]:
    """The SamplingParams keyword for JSON-schema output: `structured_outputs` since vLLM 0.12, before it
    `guided_decoding`."""
    if schema is None:
        return {}
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    return {"structured_outputs": StructuredOutputsParams(json=schema)}
