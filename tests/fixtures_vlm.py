"""A local OpenAI-compatible chat server (and Gemini generateContent) for the tests, run as its own process:

    python tests/fixtures_vlm.py [--api-key K] [--latency S] [--models a,b]   (prints "PORT <n>" when ready)

It answers from scripted rules that depend on the prompt text, the model and the images (each JPEG's mean colour
is named, so a different frame changes the answer; a Gemini inline video is decoded and sampled at its
videoMetadata fps between its offsets, each sampled frame's colour named likewise), fills the requested json_schema, injects latency and faults,
and counts requests. Control: POST /_rules (a JSON list, replaces the rules), GET /_stats, POST /_reset,
POST /_files (faults for the next uploads, below).

Gemini's Files API as the real one answers it: a resumable upload (POST /upload/v1beta/files with
`X-Goog-Upload-Command: start` answers an `x-goog-upload-url`; POST there with `upload, finalize` and the bytes
answers {"file": {name, uri, state: PROCESSING, ...}}), GET /v1beta/files/ID (PROCESSING on the first ask, then
ACTIVE), DELETE /v1beta/files/ID; a generateContent part {"fileData": {"fileUri": ...}} reads the stored file (400
FAILED_PRECONDITION while it is not ACTIVE, 403 for an unknown or deleted file). Every files request is logged in
/_stats "files". POST /_files {"faults": [...]}: one per upload, in order: "503" (the start answers 503), "reset"
(the bytes' connection is closed unanswered, twice: a client resends a request once on a new connection when a
kept-alive one closes unanswered), "failed" (processing ends FAILED), "" (none).

A rule: {"model": exact, "text": regex over the prompt, "colors": [names every one of which must be seen],
"times": how many matching requests it applies to, "fault": 429|500|400|timeout|malformed|empty|repeat|length|
blocked, "retry_after": s, "delay": s, "set": {field: value} merged into the generated answer}. The first active
matching rule applies; with none, the answer is generated from the schema alone. Strings under "set" may hold
{caption} (the prompt's text between <caption> and </caption>, as the annotate prompts quote the caption),
{caption_sha} (its sha1, 8 hex digits) and {digest} (the answer's prompt-and-images digest), so scripted answers
follow the text they were asked about: a different caption gives different questions.
"""

from __future__ import annotations

import argparse
import base64
import colorsys
import hashlib
import json
import math
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

HUES = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta"]


def color_name(jpeg: bytes) -> str:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return "undecodable"
    return color_of(image)


def color_of(image: np.ndarray) -> str:
    """The name of a BGR image's mean colour."""
    b, g, r = (float(v) / 255 for v in image.reshape(-1, 3).mean(axis=0))
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if v < 0.15:
        return "black"
    if s < 0.15:
        return "grey" if v < 0.85 else "white"
    return HUES[int(((h * 360 + 22.5) % 360) // 45)]


def images_of(messages: list[dict]) -> list[bytes]:
    found = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            url = (part.get("image_url") or part.get("video_url") or {}).get("url", "")
            if url.startswith("data:"):
                payload = url.split(",", 1)[1]
                # a pre-sampled video: data:video/jpeg;base64,<f1>,<f2>,...
                found += [base64.b64decode(chunk) for chunk in payload.split(",")]
    return found


OFFSET = re.compile(r"^\d+(\.\d{1,9})?s$")  # a protobuf Duration as JSON writes it: "1.250s"


class FileStateError(Exception):
    """A fileData part naming a file the server cannot use (unknown, deleted, not yet ACTIVE)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def gemini_request(body: dict, stored_file=None) -> tuple[str, list[bytes], dict | None, list[dict]]:
    """The prompt text, the inline images, the schema and the videos (read as Gemini would) of a generateContent
    body; `stored_file(uri)` gives an uploaded file's bytes. A malformed video part raises ValueError (the server
    answers 400, as the API does)."""
    texts, images, videos = [], [], []
    for content in body.get("contents", []):
        for part in content.get("parts", []):
            if "text" in part:
                texts.append(part["text"])
            elif "fileData" in part:
                uri = part["fileData"]["fileUri"]
                videos.append({**read_video(stored_file(uri), part.get("videoMetadata")), "file": uri})
            elif part.get("inlineData", {}).get("mimeType", "").startswith("video/"):
                videos.append(read_video(b64(part["inlineData"]["data"]), part.get("videoMetadata")))
            elif "inlineData" in part:
                images.append(b64(part["inlineData"]["data"]))
    config = body.get("generationConfig") or {}
    return "\n".join(texts), images, config.get("responseJsonSchema") or config.get("responseSchema"), videos


def b64(text: str) -> bytes:
    """Protobuf JSON bytes: standard or URL-safe base64 (google-genai writes URL-safe), as the API reads them."""
    return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)


def read_video(data: bytes, metadata: dict | None) -> dict:
    """Decode an inline video and sample it the way videoMetadata asks (fps frames a second between the offsets,
    in the file's own time): the sampled frames' colours decide the answer, so a wrong span or offset shows."""
    import io

    import av

    metadata = metadata or {}
    for name in ("startOffset", "endOffset"):
        if name in metadata and not OFFSET.match(str(metadata[name])):
            raise ValueError(f"videoMetadata.{name} {metadata[name]!r} is not a duration like '1.5s'")
    fps = float(metadata.get("fps", 1.0))
    if not 0 < fps <= 24:
        raise ValueError(f"videoMetadata.fps {fps} is outside (0, 24]")
    with av.open(io.BytesIO(data)) as container:
        frames = [(float(f.time), f.to_ndarray(format="bgr24")) for f in container.decode(video=0)]
    if not frames:
        raise ValueError("the video has no frames")
    duration = frames[-1][0] + (frames[-1][0] - frames[-2][0] if len(frames) > 1 else 0.0)
    start = float(str(metadata.get("startOffset", "0s"))[:-1])
    end = float(str(metadata.get("endOffset", f"{duration}s"))[:-1])
    if not 0 <= start < end <= duration + 1e-3:
        raise ValueError(f"videoMetadata offsets {start}-{end} s outside the video's 0-{duration:.3f} s")
    sampled = []
    for k in range(max(1, math.ceil((end - start) * fps - 1e-6))):  # every 1/fps s from start, before end
        t = start + k / fps
        sampled.append(min(frames, key=lambda f: abs(f[0] - t)))
    return {"frames": len(frames), "duration": round(duration, 3), "start": start, "end": end, "fps": fps,
            "colors": [color_of(image) for _, image in sampled]}


USER_DATA = frozenset({"responseJsonSchema", "responseSchema", "parametersJsonSchema"})  # user JSON: names kept


def camel(value, key: str = ""):
    """A generateContent body with every field name in lowerCamelCase. The API parses protobuf JSON, which takes a
    field's proto name (snake_case, as google-genai writes nested fields) or its JSON name alike; a user schema's
    property names are data, not fields, and stay."""
    if isinstance(value, dict) and key not in USER_DATA:
        out = {}
        for k, v in value.items():
            name = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k)
            out[name] = camel(v, name)
        return out
    if isinstance(value, list):
        return [camel(v, key) for v in value]
    return value


def shape(value):
    """A JSON value's structure: keys kept, strings and numbers reduced to their type (to compare wire formats)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def text_of(messages: list[dict]) -> str:
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(out)


def generate(schema: dict, defs: dict, words: str, name: str = ""):
    """A value that fits `schema` (the subset pydantic emits), its strings naming what the server saw."""
    if "$ref" in schema:
        return generate(defs[schema["$ref"].split("/")[-1]], defs, words, name)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: generate(v, defs, words, k) for k, v in schema.get("properties", {}).items()}
    if kind == "array":  # minItems items (one when unset), the later ones named apart
        count = max(1, schema.get("minItems", 1))
        items = schema.get("items", {})
        return [generate(items, defs, words, name if i == 0 else f"{name} {i + 1}") for i in range(count)]
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    return f"{name}: {words}"


def fill_slots(value, slots: dict[str, str]):
    """A rule's "set" value with its {slot}s filled (strings at any depth)."""
    if isinstance(value, str):
        for slot, text in slots.items():
            value = value.replace("{" + slot + "}", text)
        return value
    if isinstance(value, list):
        return [fill_slots(v, slots) for v in value]
    if isinstance(value, dict):
        return {k: fill_slots(v, slots) for k, v in value.items()}
    return value


def caption_of(text: str) -> str:
    found = re.search(r"<caption>\n?(.*?)\n?</caption>", text, re.S)
    return found.group(1) if found else ""


class State:
    def __init__(self, api_key: str | None, latency: float, models: list[str]):
        self.api_key, self.latency, self.models = api_key, latency, models
        self.lock = threading.Lock()
        self.rules: list[dict] = []
        self.used: list[int] = []
        self.log: list[dict] = []
        self.files: dict[str, dict] = {}  # "files/ID" -> data, mimeType, state, polls
        self.uploads: dict[str, dict] = {}  # upload id -> the start's metadata and its fault
        self.file_faults: list[str] = []
        self.files_log: list[dict] = []

    def match(self, model: str, text: str, colors: list[str]) -> dict | None:
        with self.lock:
            for i, rule in enumerate(self.rules):
                if "model" in rule and rule["model"] != model:
                    continue
                if "text" in rule and not re.search(rule["text"], text, re.S):
                    continue
                if "colors" in rule and not set(rule["colors"]) <= set(colors):
                    continue
                if "times" in rule and self.used[i] >= rule["times"]:
                    continue
                self.used[i] += 1
                return rule
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        # headers and body leave in two writes: without this, Nagle and delayed ACKs add ~40 ms to every answer
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(data)

    def _stored_file(self, uri: str) -> bytes:
        name = re.search(r"(files/[^/?]+)$", uri)
        with self.state.lock:
            file = self.state.files.get(name.group(1)) if name else None
        if file is None:
            raise FileStateError(403, "PERMISSION_DENIED", f"You do not have permission to access the File {uri}")
        if file["state"] != "ACTIVE":
            raise FileStateError(400, "FAILED_PRECONDITION", f"The File {name.group(1)} is not in an ACTIVE state")
        return file["data"]

    def _authorized(self) -> bool:
        key = self.state.api_key
        if "x-goog-api-key" in self.headers or ":generateContent" in self.path or "/v1beta/" in self.path:
            if key and self.headers.get("x-goog-api-key") != key:  # what the Gemini API answers a bad key
                self._send(400, {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",
                                           "details": [{"reason": "API_KEY_INVALID"}]}})
                return False
            return True
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            return False
        return True

    def do_GET(self):
        if self.path.startswith("/_stats"):
            with self.state.lock:
                brief = "brief" in self.path  # /_stats?brief: counts and arrival times only (benchmarks)
                log = [{"t": e["t"]} for e in self.state.log] if brief else self.state.log
                return self._send(200, {"requests": len(self.state.log), "log": log, "files": self.state.files_log,
                                        "stored": sorted(self.state.files)})
        file_name = re.search(r"/v1beta/(files/[^/?]+)$", self.path)
        if file_name:
            if self._authorized():
                self._log_file("get")
                with self.state.lock:
                    file = self.state.files.get(file_name.group(1))
                    if file is not None and file["state"] == "PROCESSING":
                        file["polls"] += 1
                        if file["polls"] > 1:
                            file["state"] = "FAILED" if file["fault"] == "failed" else "ACTIVE"
                if file is None:
                    return self._send(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                                      "message": "You do not have permission to access the File"}})
                self._send(200, self._file_json(file_name.group(1)))
            return
        gemini_model = re.search(r"/v1beta/models/([^:]+)$", self.path)
        if gemini_model:
            if self._authorized():
                name = gemini_model.group(1)
                if self.state.models and name not in self.state.models:
                    return self._send(404, {"error": {"code": 404, "message": f"models/{name} is not found"}})
                self._send(200, {"name": f"models/{name}"})
            return
        if self.path.endswith("/models"):
            if self._authorized():
                models = [{"id": m, "object": "model"} for m in self.state.models]
                self._send(200, {"object": "list", "data": models})
            return
        self._send(404, {"error": {"message": "not found"}})

    def do_DELETE(self):
        file_name = re.search(r"/v1beta/(files/[^/?]+)$", self.path)
        if not file_name:
            return self._send(404, {"error": {"message": "not found"}})
        if self._authorized():
            self._log_file("delete")
            with self.state.lock:
                gone = self.state.files.pop(file_name.group(1), None)
            self._send(200 if gone else 403, {} if gone else {"error": {"code": 403, "status": "PERMISSION_DENIED"}})

    def _log_file(self, what: str, **extra) -> None:
        with self.state.lock:
            self.state.files_log.append({"what": what, "path": self.path, **extra,
                                         "headers": {k.lower(): v for k, v in self.headers.items()
                                                     if k.lower().startswith("x-goog-upload")
                                                     or k.lower() == "content-type"}})

    def _file_json(self, name: str) -> dict:
        file = self.state.files[name]
        out = {"name": name, "mimeType": file["mimeType"], "sizeBytes": str(len(file["data"])),
               "uri": f"http://{self.headers.get('Host')}/v1beta/{name}", "state": file["state"]}
        if file["state"] == "FAILED":
            out["error"] = {"code": 400, "message": "the video could not be processed"}
        return out

    def _upload(self, raw: bytes) -> None:
        """The Files API's resumable upload: the start, then the bytes (one `upload, finalize`)."""
        state = self.state
        command = self.headers.get("X-Goog-Upload-Command", "")
        if command == "start":  # the bytes go to the session URL, which the upload id authorises (no key needed)
            if not self._authorized():
                return
            meta = json.loads(raw or b"{}")
            with state.lock:
                fault = state.file_faults.pop(0) if state.file_faults else ""
                upload_id = f"u{len(state.uploads)}"
                state.uploads[upload_id] = {"meta": meta, "fault": fault,
                                            "size": int(self.headers.get("X-Goog-Upload-Header-Content-Length", -1)),
                                            "mime": self.headers.get("X-Goog-Upload-Header-Content-Type")}
            self._log_file("start", body=meta)
            if fault == "503":
                return self._send(503, {"error": {"code": 503, "message": "injected 503", "status": "UNAVAILABLE"}})
            url = (f"http://{self.headers.get('Host')}/upload/v1beta/files?upload_id={upload_id}"
                   "&upload_protocol=resumable")
            return self._send(200, {}, {"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        upload_id = re.search(r"upload_id=([^&]+)", self.path)
        upload = state.uploads.get(upload_id.group(1)) if upload_id else None
        self._log_file("bytes", size=len(raw))
        if upload is None or "finalize" not in command or self.headers.get("X-Goog-Upload-Offset") != "0":
            return self._send(400, {"error": {"code": 400, "message": f"unexpected upload request {command!r}"}})
        if upload["fault"].startswith("reset"):  # twice: a client may resend once on a new connection
            upload["fault"] = "reset again" if upload["fault"] == "reset" else ""
            self.close_connection = True
            self.request.shutdown(socket.SHUT_RDWR)
            return
        if len(raw) != upload["size"]:
            return self._send(400, {"error": {"code": 400, "message": "size differs from the start's"}})
        with state.lock:
            name = f"files/{hashlib.sha1(raw).hexdigest()[:10]}{len(state.files_log)}"
            state.files[name] = {"data": raw, "mimeType": upload["mime"], "state": "PROCESSING", "polls": 0,
                                 "fault": upload["fault"]}
        self._send(200, {"file": self._file_json(name)}, {"x-goog-upload-status": "final"})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/upload/"):
            return self._upload(raw)
        body = json.loads(raw or b"{}")
        state = self.state
        if self.path == "/_files":
            with state.lock:
                state.file_faults = list(body.get("faults", []))
            return self._send(200, {"ok": True})
        if self.path == "/_rules":
            with state.lock:
                state.rules, state.used = body, [0] * len(body)
            return self._send(200, {"ok": True})
        if self.path == "/_reset":
            with state.lock:
                state.log.clear()
                state.files_log.clear()
                state.file_faults = []
            return self._send(200, {"ok": True})
        gemini = re.search(r"/models/([^/:]+):generateContent$", self.path)
        if not self.path.endswith("/chat/completions") and not gemini:
            return self._send(404, {"error": {"message": "not found"}})
        if not self._authorized():
            return
        videos: list[dict] = []
        if gemini:
            model, raw_shape = gemini.group(1), shape(body)
            body = camel(body)
            try:
                text, images, schema, videos = gemini_request(body, self._stored_file)
            except FileStateError as exc:
                return self._send(exc.status, {"error": {"code": exc.status, "message": str(exc),
                                                         "status": exc.reason}})
            except (ValueError, KeyError) as exc:
                return self._send(400, {"error": {"code": 400, "message": str(exc), "status": "INVALID_ARGUMENT"}})
            seed = (body.get("generationConfig") or {}).get("seed")
        else:
            model, messages = body.get("model", ""), body.get("messages", [])
            text, images = text_of(messages), images_of(messages)
            schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
            seed = body.get("seed")
        colors = [color_name(img) for img in images] + [c for video in videos for c in video["colors"]]
        rule = state.match(model, text, colors) or {}
        fault = str(rule.get("fault", ""))
        with state.lock:
            state.log.append({"t": time.monotonic(), "model": model, "text": text, "colors": colors, "seed": seed,
                              "fault": fault,
                              "has_schema": schema is not None, "keys": sorted(body), "body_config":
                              body.get("generationConfig") if gemini else None, "videos": videos,
                              "shape": raw_shape if gemini else None, "path": self.path})
        time.sleep(state.latency + float(rule.get("delay", 0)))
        if fault in ("429", "500", "503", "400", "403"):
            headers = {"Retry-After": rule["retry_after"]} if "retry_after" in rule else {}
            return self._send(int(fault), {"error": {"message": f"injected {fault}"}}, headers)
        if fault == "timeout":
            time.sleep(float(rule.get("hang", 5)))
        digest = hashlib.sha1((text + "|".join(colors)).encode()).hexdigest()[:6]
        words = f"{model} saw {' '.join(colors) or 'no images'} [{digest}]"
        if schema:
            answer = generate(schema, schema.get("$defs", {}), words)
            if isinstance(answer, dict):
                quoted = caption_of(text)
                slots = {"caption": quoted, "caption_sha": hashlib.sha1(quoted.encode()).hexdigest()[:8],
                         "digest": digest}
                answer.update(fill_slots(rule.get("set", {}), slots))
            content = json.dumps(answer)
        else:
            content = words
        finish = "stop"
        if fault == "malformed":
            content = content[: len(content) // 2] + "}}{"
        elif fault == "empty":
            content = ""
        elif fault == "repeat":
            content, finish = "the person waves the left hand " * 300, "length"
        elif fault == "length":
            content, finish = content[: len(content) // 2], "length"
        elif fault == "blocked":
            content, finish = "", "content_filter"
        prompt_tokens, output_tokens = 100 + 50 * len(colors), max(1, len(content) // 4)
        if gemini:
            reasons = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}
            parts = [{"text": "let me think", "thought": True}, {"text": content}]
            return self._send(200, {
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": reasons[finish]}],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
                                  "thoughtsTokenCount": 7}, "modelVersion": model})
        self._send(200, {
            "id": f"cmpl-{digest}", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 100 + 50 * len(colors), "completion_tokens": max(1, len(content) // 4),
                      "total_tokens": 100 + 50 * len(colors) + len(content) // 4}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--models", default="")
    args = parser.parse_args(argv)
    Handler.state = State(args.api_key, args.latency, [m for m in args.models.split(",") if m])
    # one thread per connection, all sleeping out the latency: with the default 5 ms GIL switch interval a
    # hundred of them queue for the GIL and the server, not the client under test, sets the pace
    sys.setswitchinterval(0.0002)
    server = _Server(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # the listen backlog is read when the constructor binds: a class attribute, not one set afterwards (the default
    # 5 drops most of 256 simultaneous connects, whose SYNs are then resent after 1 s, 3 s, ...)
    request_queue_size = 1024


class VlmServer:
    """The server as a child process, for tests: `with VlmServer(api_key=...) as s: s.url, s.rules([...])`."""

    def __init__(self, api_key: str | None = None, latency: float = 0.0, models: tuple[str, ...] = ()):
        self.args = [f"--latency={latency}", f"--models={','.join(models)}"] + (
            [f"--api-key={api_key}"] if api_key else [])

    def __enter__(self) -> "VlmServer":
        import subprocess

        self.proc = subprocess.Popen([sys.executable, __file__, *self.args], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the test VLM server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()

    def _post(self, path: str, payload) -> dict:
        import requests

        return requests.post(self.root + path, json=payload, timeout=10).json()

    def rules(self, rules: list[dict]) -> None:
        self._post("/_rules", rules)

    def reset(self) -> None:
        self._post("/_reset", {})

    def file_faults(self, faults: list[str]) -> None:
        self._post("/_files", {"faults": faults})

    def stats(self, brief: bool = False) -> dict:
        import requests

        return requests.get(self.root + "/_stats" + ("?brief" if brief else ""), timeout=30).json()


if __name__ == "__main__":
    main()
