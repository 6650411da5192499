"""The gemini backend's clip-span mode (the clip's own span stream-copied with videoMetadata offsets and fps) and its
wire format checked against the real google-genai SDK, both against the local test server (its own process), which
decodes the inline video and samples it as the metadata asks, so a wrong span or offset changes the answer."""

from __future__ import annotations

import asyncio
import json

import av
import numpy as np
import pytest

import media
from fixtures_vlm import camel
from pipeline.calls import CallLedger
from pipeline.clip import Clip
from pipeline.errors import UserError
from pipeline.stage import RunContext
from stages.caption import CaptionStage, MomeStage
from stages.caption.span import copy_span
import test_caption
from test_caption import FAST, JUDGE, KEY

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
RGB = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 200, 20)}
server, vlm = test_caption.server, test_caption.vlm  # the test server fixtures (a server of this module's own)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """6 s at 25 fps: red 0-2 s, blue 2-4 s, green 4-6 s; a keyframe every 1.2 s (0, 1.2, 2.4, ...), none at the
    colour changes, so a span's copy starts well before the span."""
    frames = [np.full((96, 128, 3), RGB[name], np.uint8) for name in ("red", "blue", "green") for _ in range(50)]
    return str(media.write_frames(tmp_path_factory.mktemp("gem") / "rgb.mp4", frames, fps=25, gop=30))


def span_clip(uri: str, start: float, end: float) -> Clip:
    return Clip(video_id="rgb", video_uri=uri, shard_id="s0", start_s=start, end_s=end)


def gemini(server, model=PRO) -> dict:
    return {"backend": "gemini", "model": model, "base_url": server.root + "/v1beta", "max_tokens": 512}


def run(stage_cls, out, clips, **params):
    stage = stage_cls(stage_cls.Params(**{**FAST, **params}), RunContext(output=str(out)))
    stage.setup()
    return stage.process(clips)


def test_the_clip_span_is_stream_copied_and_cut_by_its_offsets(vlm, video, tmp_path):
    inside, across = span_clip(video, 2.1, 3.5), span_clip(video, 3.7, 5.0)
    run(CaptionStage, tmp_path, [inside, across], send="clip", fps=2.0, **gemini(vlm))
    assert inside.status == across.status == "accepted", (inside.error_message, across.error_message)
    # 2.1-3.5 s: the copy starts at the 1.2 s keyframe (red until 2 s); offsets 0.9-2.3 s keep only blue
    assert "gemini-2.5-pro saw blue blue blue [" in inside.columns["caption_text"]
    assert "saw blue green green [" in across.columns["caption_text"]  # 3.7, 4.2, 4.7 s
    c = inside.columns
    assert (c["caption_send"], c["caption_frame_indices"], c["caption_frame_times"]) == ("clip", [], [])
    assert {k: v for k, v in c["caption_video"].items() if k != "bytes"} == {
        "copy_start_s": 1.2, "start_offset_s": 0.9, "end_offset_s": 2.3, "fps": 2.0}
    seen = {e["videos"][0]["start"]: e["videos"][0] for e in vlm.stats()["log"]}
    assert (seen[0.9]["end"], seen[0.9]["fps"]) == (2.3, 2.0)
    assert 57 <= seen[0.9]["frames"] <= 62  # 1.2 s to 3.5 s copied (a few more that decode before 3.5 s)
    # no re-encode: the copy holds the source's own packets
    copy = copy_span(video, 2.1, 3.5, 2.0)
    with av.open(video) as src, av.open(__import__("io").BytesIO(copy.data)) as dst:
        source_packets = {bytes(p) for p in src.demux(video=0) if p.size}
        assert all(bytes(p) in source_packets for p in dst.demux(video=0) if p.size)
    assert c["caption_frames_hash"] == copy.digest and c["caption_video"]["bytes"] == len(copy.data)
    record = [r for r in CallLedger(str(tmp_path)).all() if r["frames_hash"] == copy.digest][0]
    assert record["video"]["start_offset_s"] == 0.9 and "data" not in json.dumps(record)


def test_mome_experts_see_the_same_span(vlm, video, tmp_path):
    # one judge order of the blue-green clip disagrees: order-dependent, so a third expert looks again
    vlm.rules([{"model": JUDGE, "text": "saw blue green green", "times": 1,
                "set": {"consistent": False, "disagreement": "the floor colour"}}])
    clips = [span_clip(video, 2.1, 3.5), span_clip(video, 3.7, 5.0)]
    run(CaptionStage, tmp_path, clips, send="clip", **gemini(vlm))
    run(MomeStage, tmp_path, clips, send="clip", **gemini(vlm, FLASH),
        third={**gemini(vlm, FLASH), "temperature": 0.5}, judge={"model": JUDGE})
    assert [c.columns.get("mome_branch") for c in clips] == ["consistent", "corrected"], clips[1].error_message
    log = vlm.stats()["log"]
    for colors in (["blue"] * 3, ["blue", "green", "green"]):
        experts = [e for e in log if e["colors"] == colors]
        # caption (pro), expert B (flash); the corrected clip also the third expert: one span, one sampling
        assert [e["model"] for e in experts] == [PRO, FLASH] + ([FLASH] if "green" in colors else [])
        assert len({json.dumps(e["videos"]) for e in experts}) == 1
    assert all(e["colors"] == [] for e in log if e["model"] == JUDGE)  # text-only judge, as in HOIGen
    # mome must send what caption sent
    again = span_clip(video, 2.1, 3.5)
    run(CaptionStage, tmp_path, [again], send="clip", **gemini(vlm))
    run(MomeStage, tmp_path, [again], **gemini(vlm, FLASH), judge={"model": JUDGE})
    assert again.status == "error" and "mome.send 'frames' differs from the caption stage's 'clip'" in \
        again.error_message


def test_a_clips_calls_share_one_upload_of_its_span(vlm, video, tmp_path):
    """Over the inline limit, MoME's expert B, judge (shown the span) and third expert send one uploaded file per clip
    (same endpoint, same key), deleted only when the clip's last call is done (the server refuses a deleted file)."""
    vlm.rules([{"model": FLASH, "text": "saw blue green green", "times": 1,
                "set": {"consistent": False, "disagreement": "the floor colour"}}])
    clips = [span_clip(video, 2.1, 3.5), span_clip(video, 3.7, 5.0)]
    over = {"send": "clip", "max_inline_mb": 0.001}
    run(CaptionStage, tmp_path, clips, **over, **gemini(vlm))
    assert sum(f["what"] == "start" for f in vlm.stats()["files"]) == 2  # caption: one call, one upload a clip
    vlm.reset()
    run(MomeStage, tmp_path, clips, **over, **gemini(vlm, FLASH), judge_sees_frames=True,
        third={**gemini(vlm, FLASH), "temperature": 0.5}, judge=gemini(vlm, FLASH))
    assert [c.columns.get("mome_branch") for c in clips] == ["consistent", "corrected"], clips[1].error_message
    stats = vlm.stats()
    files = {json.dumps(e["colors"]): {v["file"] for v in e["videos"]} for e in stats["log"]}
    assert len(stats["log"]) == 3 + 5  # B and two judges; B, two judges, the third expert and the correction
    assert sorted(map(len, files.values())) == [1, 1] and len(set.union(*files.values())) == 2
    steps = [f["what"] for f in stats["files"]]
    assert steps.count("start") == steps.count("delete") == 2 and stats["stored"] == []


def test_clip_mode_needs_gemini(vlm, video, tmp_path):
    with pytest.raises(UserError, match="caption: send: clip needs backend gemini .* it has backend openai"):
        CaptionStage(CaptionStage.Params(send="clip")).preflight()
    with pytest.raises(UserError, match="24 fps at most"):
        CaptionStage(CaptionStage.Params(send="clip", fps=30, **gemini(vlm))).preflight()
    CaptionStage(CaptionStage.Params(send="clip", **gemini(vlm))).preflight()
    wrong = span_clip(video, 2.1, 3.5)
    run(CaptionStage, tmp_path / "a", [wrong], send="clip")  # a worker that skipped preflight: an error row
    assert wrong.status == "error" and "backend openai takes frames only" in wrong.error_message
    assert vlm.stats()["requests"] == 0


def test_a_span_over_the_inline_limit_goes_through_the_files_api(vlm, video, tmp_path):
    """Uploaded (resumable start, then the bytes), used once the API has processed it, deleted after the call; the
    answer is the one the inline span gets. Upload faults are retried from a new start; a file the API fails to
    process makes an error row that says so, and is deleted too."""
    inline, uploaded = span_clip(video, 2.1, 3.5), span_clip(video, 2.1, 3.5)
    run(CaptionStage, tmp_path / "inline", [inline], send="clip", fps=2.0, **gemini(vlm))
    vlm.reset()
    vlm.file_faults(["503", "reset", ""])  # the first start answers 503, the second upload's bytes are cut off
    run(CaptionStage, tmp_path / "file", [uploaded], send="clip", fps=2.0, max_inline_mb=0.001, **gemini(vlm))
    assert uploaded.status == "accepted", uploaded.error_message
    assert uploaded.columns["caption_text"] == inline.columns["caption_text"]  # the same frames, sampled alike
    stats = vlm.stats()
    [call] = stats["log"]
    assert "fileData" in json.dumps(call["shape"]) and "inlineData" not in json.dumps(call["shape"])
    assert call["videos"][0]["start"] == 0.9 and call["videos"][0]["end"] == 2.3
    steps = [f["what"] for f in stats["files"]]
    # 503 at the start; then the bytes cut off twice (once resent on a new connection): a new start
    assert steps[:6] == ["start", "start", "bytes", "bytes", "start", "bytes"] and steps[-1] == "delete"
    assert "get" in steps[6:-1]  # waited for PROCESSING to end before the call
    size = str(uploaded.columns["caption_video"]["bytes"])
    start, data = stats["files"][4], stats["files"][5]
    assert start["headers"]["x-goog-upload-protocol"] == "resumable"
    assert start["headers"]["x-goog-upload-header-content-length"] == size
    assert start["body"] == {"file": {"mimeType": "video/mp4", "sizeBytes": int(size)}}
    assert data["size"] == int(size) and data["headers"]["x-goog-upload-command"] == "upload, finalize"
    assert stats["stored"] == []  # deleted after the call

    vlm.reset()
    vlm.file_faults(["failed"])
    failed = span_clip(video, 3.7, 5.0)
    run(CaptionStage, tmp_path / "failed", [failed], send="clip", max_inline_mb=0.001, **gemini(vlm))
    assert failed.status == "error"
    assert "the Files API did not accept the clip's" in failed.error_message
    assert "the video could not be processed" in failed.error_message
    assert vlm.stats()["requests"] == 0 and vlm.stats()["stored"] == []


def test_our_request_matches_what_google_genai_sends(vlm, video):
    """The same request through the real SDK and through our REST client: same path, same fields (protobuf JSON:
    the SDK writes nested field names in snake_case, we write the JSON names; the API takes both), same answer."""
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    from stages.caption.client import EndpointParams, Request, make_client
    from stages.caption.gemini import inline_refs
    from stages.caption.stage import encode_frames, json_schema
    from stages.caption.styles import STYLES

    frames_clip = Clip(video_id="v", video_uri=video, shard_id="s", start_s=0, end_s=1)
    frames_clip.frames, frames_clip.frame_times = np.full((1, 32, 32, 3), RGB["red"], np.uint8), [0.0]
    jpeg = encode_frames(frames_clip, [0], 448, 90).jpegs[0]
    span = copy_span(video, 2.1, 3.5, 2.0)
    schema = json_schema(STYLES["haic"].schema)
    params = EndpointParams(**gemini(vlm), thinking_budget=256, seed=3)
    client = make_client(params, 1, "caption")
    request = Request(text="describe the people", images=[jpeg], schema=schema, video=span.data,
                      video_metadata=span.metadata())

    async def ours():
        try:
            return await client.complete(client.body(request, seed=3))
        finally:
            await client.aclose()

    reply = asyncio.run(ours())
    sdk = genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=vlm.root, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)))
    meta = span.metadata()
    answer = sdk.models.generate_content(model=PRO, contents=[types.Content(role="user", parts=[
        types.Part.from_bytes(data=jpeg, mime_type="image/jpeg"),
        types.Part(inline_data=types.Blob(data=span.data, mime_type="video/mp4"),
                   video_metadata=types.VideoMetadata(start_offset=meta["startOffset"], end_offset=meta["endOffset"],
                                                      fps=meta["fps"])),
        types.Part.from_text(text="describe the people")])],
        config=types.GenerateContentConfig(
            temperature=params.temperature, top_p=params.top_p, seed=3, max_output_tokens=512 + 256,
            thinking_config=types.ThinkingConfig(thinking_budget=256), response_mime_type="application/json",
            response_json_schema=inline_refs(schema)))
    mine, theirs = vlm.stats()["log"]
    assert mine["path"] == theirs["path"] == f"/v1beta/models/{PRO}:generateContent"
    assert camel(mine["shape"]) == mine["shape"]  # every field name ours writes is the JSON name
    assert mine["shape"] == camel(theirs["shape"])
    assert mine["body_config"] == theirs["body_config"]  # values too, schema included
    assert mine["colors"] == theirs["colors"] == ["red", "blue", "blue", "blue"] and mine["videos"] == theirs["videos"]
    assert answer.text == reply.content and answer.usage_metadata.thoughts_token_count == reply.thinking_tokens == 7


def test_our_upload_matches_what_google_genai_sends(vlm, video):
    """The same span uploaded through the SDK's files.upload and through our client: the same start (path, upload
    headers, metadata) and the same bytes request; both get a file the API then serves."""
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    from stages.caption.client import EndpointParams, Request, make_client

    span = copy_span(video, 2.1, 3.5, 2.0)
    client = make_client(EndpointParams(**gemini(vlm)), 1, "caption")
    request = Request(text="describe", video=span.data, video_metadata=span.metadata(), upload_video=True)

    async def ours():
        try:
            return await client.upload(request)
        finally:
            await client.aclose()

    mine = asyncio.run(ours())
    sdk = genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=vlm.root, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)))
    theirs = sdk.files.upload(file=__import__("io").BytesIO(span.data), config={"mime_type": "video/mp4"})
    log = vlm.stats()["files"]
    second_start = next(i for i, e in enumerate(log) if i and e["what"] == "start")
    ours_log, sdk_log = log[:second_start], log[second_start:]
    assert [e["what"] for e in ours_log][:2] == [e["what"] for e in sdk_log][:2] == ["start", "bytes"]
    for a, b in zip(ours_log[:2], sdk_log[:2]):
        assert a["path"].split("?")[0] == b["path"].split("?")[0]
    assert ours_log[0]["headers"] == sdk_log[0]["headers"]
    # the bytes: the same command and offset (the SDK repeats the start's headers there too; the API ignores them)
    assert ours_log[1]["headers"].items() <= sdk_log[1]["headers"].items()
    assert ours_log[1]["headers"]["x-goog-upload-command"] == "upload, finalize"
    assert camel(ours_log[0]["body"]) == ours_log[0]["body"]
    assert ours_log[0]["body"] == camel(sdk_log[0]["body"])
    assert mine["uri"].endswith(mine["name"]) and theirs.name.startswith("files/") and theirs.uri
    assert ours_log[-1]["what"] == "get"  # we wait for ACTIVE; the SDK leaves that to its caller
