"""The Gemini API (generateContent) over its own REST, e.g. base_url https://generativelanguage.googleapis.com/v1beta.

The wire format is the one google-genai writes, pinned by tests/test_gemini.py, which sends one request through the
real SDK and through this client and compares the bodies: frames as inline JPEG parts, or (send: clip) the clip's
stream-copied span as one inline video/mp4 part with `videoMetadata` offsets and fps (over the inline limit, the span
is uploaded through the Files API first, once for all of a clip's calls to the same endpoint and key, and sent as
`fileData`; deleted when the clip is done); `responseJsonSchema` for structured output; an explicit thinking budget
with headroom added to `maxOutputTokens` (thinking tokens count against it; without headroom the answer comes back
empty or cut). Field names are the JSON names (the SDK writes nested ones in snake_case; the API's protobuf JSON
parser takes both).
Chosen over the SDK (a `gemini_sdk` backend was not built): one client and retry policy for every backend, and the
SDK's own retries would hide Retry-After from ours.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import UserError
from stages.caption.client import CallError, ChatClient, Reply, Request
from stages.caption.http import HttpTransportError, Response

# finishReason -> the OpenAI-style reason the caller classifies by
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
          "IMAGE_SAFETY": "content_filter"}
FILE_POLL_S = 1.0  # how often an uploaded file's state is asked while the API processes it


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's $defs/$ref resolved in place: the Gemini schema subset is safest without references."""
    defs = schema.get("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


class GeminiClient(ChatClient):
    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key} if self.api_key else {}

    def endpoint(self, body: dict[str, Any]) -> str:
        return f"{self.url}/models/{self.params.model}:generateContent"

    def body(self, request: Request, seed: int) -> dict[str, Any]:
        p = self.params
        parts: list[dict[str, Any]] = [{"inlineData": {"mimeType": "image/jpeg", "data": b64}}
                                       for b64 in (base64.b64encode(img).decode() for img in request.images)]
        if request.video_file is not None:  # send: clip, over the inline limit: the uploaded span
            file = request.video_file
            parts.append({"fileData": {"mimeType": file["mimeType"], "fileUri": file["uri"]},
                          "videoMetadata": request.video_metadata or {}})
        elif request.upload_video:
            raise CallError(f"{self.role}: the clip's span was not uploaded before the call")
        elif request.video is not None:  # send: clip: the copied span, cut to the clip by its offsets
            parts.append({"inlineData": {"mimeType": "video/mp4", "data": base64.b64encode(request.video).decode()},
                          "videoMetadata": request.video_metadata or {}})
        parts.append({"text": request.text})
        config: dict[str, Any] = {"temperature": p.temperature, "topP": p.top_p, "seed": seed,
                                  "maxOutputTokens": p.max_tokens + (p.thinking_budget or 0)}
        if p.thinking_budget is not None:
            config["thinkingConfig"] = {"thinkingBudget": p.thinking_budget}
        if request.schema is not None:
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = inline_refs(request.schema)
        body = {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
        body.update(p.extra_body)
        return body

    # -- Files API: a span over the inline limit is uploaded once per clip and endpoint (Caller), then deleted -------
    def upload_url(self) -> str:
        """The upload endpoint beside the base URL, as google-genai builds it: .../v1beta -> .../upload/v1beta/files."""
        parts = urlsplit(self.url)
        prefix, _, version = parts.path.rpartition("/")
        return urlunsplit(parts._replace(path=f"{prefix}/upload/{version}/files"))

    def accepts(self, request: Request) -> None:
        """Frames and spans alike."""

    async def upload(self, request: Request) -> dict[str, str]:
        """Upload the span (a resumable upload's start, then the bytes with `upload, finalize`; a failed attempt
        starts over) and wait until the API has processed it (state ACTIVE)."""
        http = self._client()
        size = len(request.video)
        start_headers = {"Content-Type": "application/json", "X-Goog-Upload-Protocol": "resumable",
                         "X-Goog-Upload-Command": "start", "X-Goog-Upload-Header-Content-Length": str(size),
                         "X-Goog-Upload-Header-Content-Type": "video/mp4"}
        start_body = json.dumps({"file": {"mimeType": "video/mp4", "sizeBytes": size}}).encode()  # as google-genai

        async def upload() -> Response:
            start = await http.request("POST", self.upload_url(), start_body, start_headers)
            if start.status_code != 200:
                return start
            if "x-goog-upload-url" not in start.headers:
                raise HttpTransportError("the upload's start answered without an x-goog-upload-url")
            return await http.request("POST", start.headers["x-goog-upload-url"], request.video,
                                      {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"})

        file, _ = await self.retrying(upload, lambda r: r.json()["file"])
        name = file["name"]
        deadline = time.monotonic() + self.params.timeout_s
        while file.get("state") == "PROCESSING" and time.monotonic() < deadline:
            await asyncio.sleep(FILE_POLL_S)
            file, _ = await self.retrying(lambda: http.request("GET", f"{self.url}/{name}"), lambda r: r.json())
        if file.get("state") not in ("ACTIVE", None):
            await self.delete_upload({"name": name})
            why = ((file.get("error") or {}).get("message")
                   or f"still {file.get('state')} after {self.params.timeout_s:g} s")
            raise CallError(f"{self.role}: the Files API did not accept the clip's {size / 2**20:.1f} MB span "
                            f"({name}: {why})")
        return {"name": name, "uri": file["uri"], "mimeType": file.get("mimeType") or "video/mp4"}

    async def delete_upload(self, file: dict[str, str]) -> None:
        """Delete an uploaded span (the API would keep it 48 hours against the project's storage quota)."""
        try:
            await self.retrying(lambda: self._client().request("DELETE", f"{self.url}/{file['name']}"),
                                lambda r: None)
        except CallError:
            pass  # the file expires on its own; the clip's answer does not depend on it

    def _reply(self, data: dict[str, Any]) -> Reply:
        usage = data.get("usageMetadata") or {}
        candidates = data.get("candidates") or []
        tokens = dict(prompt_tokens=int(usage.get("promptTokenCount") or 0),
                      output_tokens=int(usage.get("candidatesTokenCount") or 0),
                      thinking_tokens=int(usage.get("thoughtsTokenCount") or 0))
        model = data.get("modelVersion") or self.params.model
        if not candidates:  # the prompt itself was blocked
            reason = (data.get("promptFeedback") or {}).get("blockReason")
            return Reply("", "content_filter" if reason else "", model, **tokens)
        candidate = candidates[0]
        parts = (candidate.get("content") or {}).get("parts") or []
        text = "".join(part.get("text", "") for part in parts if not part.get("thought"))
        finish = FINISH.get(candidate.get("finishReason", ""), (candidate.get("finishReason") or "").lower())
        return Reply(text, finish, model, **tokens)

    def check(self) -> None:
        """GET models/{model}: the key is taken (the API answers 400 API_KEY_INVALID for a bad one) and the model
        exists."""
        response = self._get(f"{self.url}/models/{self.params.model}")
        self._check_response(response)
        if response.status_code == 400 and "API_KEY" in response.text:
            raise UserError(f"{self.role}: {self.url} refused the key in {self.params.api_key_env} (HTTP 400)")
        if response.status_code == 404:
            raise UserError(f"{self.role}: {self.url} does not serve model {self.params.model!r}")
        if response.status_code != 200:
            raise UserError(f"{self.role}: {self.url}/models/{self.params.model} answered HTTP {response.status_code}")


__all__ = ["GeminiClient"]
