"""The caption and mome stages against the local OpenAI-compatible server (its own process), without Ray."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from fixtures_vlm import VlmServer
from pipeline.calls import CallLedger
from pipeline.clip import Clip
from pipeline.errors import UserError
from pipeline.stage import RunContext
from stages.caption import CaptionStage, MomeStage

KEY = "sk-test-caption-0123456789"
RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 200, 20)
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture(scope="module")
def server():
    with VlmServer(api_key=KEY, models=("Qwen/Qwen2.5-VL-7B-Instruct", "OpenGVLab/InternVL3-8B",
                                        "llava-hf/llava-onevision-qwen2-7b-ov-hf",
                                        "meta-llama/Llama-3.1-8B-Instruct", "gemini-2.5-pro", "gemini-2.5-flash")) as s:
        yield s


@pytest.fixture
def vlm(server, monkeypatch):
    monkeypatch.setenv("ACTCURATE_VLM_API_KEY", KEY)
    monkeypatch.setenv("ACTCURATE_VLM_BASE_URL", server.url)
    server.rules([])
    server.reset()
    return server


def make_clip(*colors, n=6, start=0.0) -> Clip:
    """A clip whose kept frames are flat colours (n per colour, in order), 0.5 s apart."""
    frames = np.concatenate([np.full((n, 96, 128, 3), c, np.uint8) for c in colors])
    clip = Clip(video_id="vid", video_uri="/in/v.mp4", shard_id="s0", start_s=start, end_s=start + 0.5 * len(frames))
    clip.frames, clip.frame_times = frames, [start + 0.5 * i for i in range(len(frames))]
    return clip


def caption(out, clips, **params):
    stage = CaptionStage(CaptionStage.Params(**{**FAST, **params}), RunContext(output=str(out)))
    stage.setup()
    return stage.process(clips)


def test_caption_follows_the_frames_and_records_what_was_sent(vlm, tmp_path):
    red, blue = make_clip(RED, start=0), make_clip(BLUE, start=10)
    caption(tmp_path, [red, blue], max_frames=4)
    assert red.status == blue.status == "accepted"
    assert "saw red red red red" in red.columns["caption_text"] and "blue" in blue.columns["caption_text"]
    assert red.columns["caption_frame_indices"] == [0, 2, 3, 5]  # 4 of 6 kept frames, spread evenly
    assert red.columns["caption_frame_times"] == [0.0, 1.0, 1.5, 2.5]
    assert red.columns["caption_prompt_hash"] == blue.columns["caption_prompt_hash"]
    assert red.columns["caption_frames_hash"] != blue.columns["caption_frames_hash"]
    assert red.columns["caption_outcome"] == "success" and red.columns["caption_prompt_tokens"] > 0
    json.loads(red.columns["caption_json"])["num_people"]  # the validated JSON is kept beside the prose
    log = vlm.stats()["log"]
    assert len(log) == 2 and all(e["has_schema"] and e["colors"] in (["red"] * 4, ["blue"] * 4) for e in log)
    # a wrong prompt changes the answer: another style, same frames
    other = make_clip(RED, start=0)
    caption(tmp_path / "o2", [other], max_frames=4, style="hoigen")
    assert other.columns["caption_style"] == "hoigen" and "Scene:" in other.columns["caption_text"]


def test_video_mode_sends_one_video_of_the_same_frames_with_vllm_keys(vlm, tmp_path):
    clip = make_clip(RED, GREEN, n=3)
    caption(tmp_path, [clip], frames_as="video", extra_body={"top_k": 20, "repetition_penalty": 1.05})
    entry = vlm.stats()["log"][0]
    assert entry["colors"] == ["red"] * 3 + ["green"] * 3
    assert {"top_k", "repetition_penalty", "media_io_kwargs", "response_format", "seed"} <= set(entry["keys"])
    assert clip.status == "accepted"


def test_transient_faults_are_retried_honouring_retry_after(vlm, tmp_path):
    vlm.rules([{"fault": "429", "retry_after": 0.4, "times": 1}, {"fault": "500", "times": 1},
               {"fault": "timeout", "hang": 3, "times": 1}])
    clip = make_clip(RED)
    started = time.monotonic()
    caption(tmp_path, [clip], timeout_s=1.0)
    assert clip.status == "accepted", clip.error_message
    assert time.monotonic() - started >= 0.4 + 1.0  # waited out Retry-After and the timed-out request
    assert vlm.stats()["requests"] == 4
    assert clip.columns["caption_attempts"] == 1  # transport retries are not new answers


def test_auth_and_bad_requests_fail_fast(vlm, tmp_path):
    vlm.rules([{"fault": "400"}])
    clip = make_clip(RED)
    caption(tmp_path, [clip])
    assert clip.status == "error" and "HTTP 400" in clip.error_message
    assert vlm.stats()["requests"] == 1


@pytest.mark.parametrize("fault", ["malformed", "empty", "repeat"])
def test_unusable_answers_are_retried_with_a_new_seed(vlm, tmp_path, fault):
    vlm.rules([{"fault": fault, "times": 1}])
    clip = make_clip(RED)
    caption(tmp_path, [clip])
    assert clip.status == "accepted", clip.error_message
    assert [e["seed"] for e in vlm.stats()["log"]] == [0, 1]
    assert clip.columns["caption_attempts"] == 2


def test_a_loop_inside_valid_json_is_degenerate_too(vlm, tmp_path):
    vlm.rules([{"set": {"interactions": ["he waves and waves " * 60]}, "times": 1}])
    clip = make_clip(RED)
    caption(tmp_path, [clip])
    assert clip.status == "accepted" and "waves and waves" not in clip.columns["caption_text"]
    assert [e["seed"] for e in vlm.stats()["log"]] == [0, 1]


def test_outcomes_error_truncated_blocked(vlm, tmp_path):
    vlm.rules([{"fault": "malformed", "colors": ["red"]}, {"fault": "length", "colors": ["blue"]},
               {"fault": "blocked", "colors": ["green"]}])
    red, blue, green = make_clip(RED, start=0), make_clip(BLUE, start=10), make_clip(GREEN, start=20)
    caption(tmp_path, [red, blue, green], max_seed_retries=1)
    assert red.status == "error" and "invalid answer" in red.error_message
    assert blue.status == "error" and "max_tokens" in blue.error_message
    assert (green.status, green.reject_rule, green.columns["caption_outcome"]) == ("rejected", "blocked", "blocked")
    outcomes = sorted(r["outcome"] for r in CallLedger(str(tmp_path)).all())
    assert outcomes == ["blocked", "error", "error"]
    assert vlm.stats()["requests"] == 5  # two seeds each for red and blue, one for green


def test_finished_calls_are_never_paid_twice(vlm, tmp_path):
    vlm.rules([{"fault": "500", "colors": ["blue"], "times": 99}])
    red, blue = make_clip(RED, start=0), make_clip(BLUE, start=10)
    caption(tmp_path, [red, blue], max_retries=1)
    assert (red.status, blue.status) == ("accepted", "error")
    vlm.rules([])
    vlm.reset()
    again = [make_clip(RED, start=0), make_clip(BLUE, start=10)]
    caption(tmp_path, again, max_retries=1)
    assert [c.status for c in again] == ["accepted", "accepted"]
    assert again[0].columns["caption_cached"] and not again[1].columns["caption_cached"]
    assert again[0].columns["caption_text"] == red.columns["caption_text"]
    assert [e["colors"][0] for e in vlm.stats()["log"]] == ["blue"]  # only the errored call is asked again
    for path in tmp_path.rglob("*"):
        assert path.is_dir() or KEY not in path.read_text()


def test_preflight_stops_on_missing_or_wrong_key_and_unknown_model(vlm, monkeypatch):
    CaptionStage(CaptionStage.Params()).preflight()
    with pytest.raises(UserError, match="OTHER_KEY.*is not set") as missing:
        CaptionStage(CaptionStage.Params(api_key_env="OTHER_KEY")).preflight()
    monkeypatch.setenv("ACTCURATE_VLM_API_KEY", "sk-wrong-key-0000")
    with pytest.raises(UserError, match="refused the key in ACTCURATE_VLM_API_KEY") as wrong:
        CaptionStage(CaptionStage.Params()).preflight()
    monkeypatch.setenv("ACTCURATE_VLM_API_KEY", KEY)
    with pytest.raises(UserError, match="does not serve model 'no-such-model'"):
        CaptionStage(CaptionStage.Params(model="no-such-model")).preflight()
    with pytest.raises(UserError, match="cannot reach"):
        CaptionStage(CaptionStage.Params(base_url="http://127.0.0.1:9/v1")).preflight()
    for exc in (missing.value, wrong.value):
        assert "\n" not in str(exc) and "sk-" not in str(exc)


def test_gemini_backend_inline_frames_schema_and_thinking_headroom(vlm, tmp_path, monkeypatch):
    gemini = {"backend": "gemini", "model": "gemini-2.5-pro", "base_url": vlm.root + "/v1beta", "max_tokens": 512}
    vlm.rules([{"fault": "429", "retry_after": 0.1, "times": 1}, {"fault": "blocked", "colors": ["blue"]}])
    red, blue = make_clip(RED, start=0), make_clip(BLUE, start=10)
    caption(tmp_path, [red, blue], max_frames=3, **gemini)
    assert red.status == "accepted" and "gemini-2.5-pro saw red red red" in red.columns["caption_text"]
    assert red.columns["caption_thinking_tokens"] == 7  # thought parts are counted, not read as the answer
    assert (blue.status, blue.reject_rule) == ("rejected", "blocked")
    config = vlm.stats()["log"][-1]["body_config"]
    assert config["thinkingConfig"] == {"thinkingBudget": 1024} and config["maxOutputTokens"] == 512 + 1024
    assert config["responseMimeType"] == "application/json" and "$defs" not in json.dumps(config)
    CaptionStage(CaptionStage.Params(**gemini)).preflight()
    with pytest.raises(UserError, match="does not serve model 'gemini-0'"):
        CaptionStage(CaptionStage.Params(**{**gemini, "model": "gemini-0"})).preflight()
    monkeypatch.setenv("ACTCURATE_VLM_API_KEY", "wrong-key-123456")
    with pytest.raises(UserError, match="refused the key in ACTCURATE_VLM_API_KEY"):
        CaptionStage(CaptionStage.Params(**gemini)).preflight()


def test_pose_grounding_and_person_count_rule(vlm, tmp_path):
    clip = make_clip(RED)
    clip.columns.update(pose_persons_max=3, pose_persons_per_frame=[3, 3, 2],
                        pose_motion_facts=["the main person raises the right arm"])
    caption(tmp_path, [clip], ground_on_pose=True, max_person_count_diff=0)
    text = vlm.stats()["log"][0]["text"]
    assert "people detected: 3 on a typical frame" in text and "raises the right arm" in text
    assert (clip.status, clip.reject_rule, clip.reject_value) == ("rejected", "person_count", 2.0)


# -- MoME -------------------------------------------------------------------------------------------------------------
JUDGE = "meta-llama/Llama-3.1-8B-Instruct"
A_FIRST = r"Caption A:\n[^\n]*\n[^\n]*Qwen"  # the order in which expert A's caption is shown first
B_FIRST = r"Caption A:\n[^\n]*\n[^\n]*InternVL"


def mome(out, clips, **params):
    caption(out, clips)
    stage = MomeStage(MomeStage.Params(**{**FAST, **params}), RunContext(output=str(out)))
    stage.setup()
    return stage.process(clips)


def test_mome_consistent_keeps_the_richer_caption(vlm, tmp_path):
    # both orders call expert B's caption richer
    vlm.rules([{"model": JUDGE, "text": A_FIRST, "set": {"richer": "B"}},
               {"model": JUDGE, "text": B_FIRST, "set": {"richer": "A"}}])
    clip = make_clip(RED)
    mome(tmp_path, [clip])
    c = clip.columns
    assert (clip.status, c["mome_branch"], c["mome_source"]) == ("accepted", "consistent", "b")
    assert "InternVL3-8B saw red" in c["mome_caption"] and c["mome_caption"] == c["mome_expert_b_caption"]
    assert [v["order"] for v in c["mome_verdicts"]] == ["ab", "ba"] and c["mome_calls"] == 3
    assert (c["mome_expert_a_model"], c["mome_judge_model"]) == ("Qwen/Qwen2.5-VL-7B-Instruct", JUDGE)
    # the experts saw the same frames; the judge (text-only, as in HOIGen) none
    log = vlm.stats()["log"]
    assert [e["colors"] for e in log if e["model"] != JUDGE] == [["red"] * 6] * 2
    assert all(e["colors"] == [] for e in log if e["model"] == JUDGE)


def test_mome_order_dependent_verdict_is_corrected_by_a_third_expert(vlm, tmp_path):
    vlm.rules([{"model": JUDGE, "text": B_FIRST, "set": {"consistent": False, "disagreement": "the shirt colour"}}])
    clip = make_clip(RED)
    mome(tmp_path, [clip])
    c = clip.columns
    assert (clip.status, c["mome_branch"], c["mome_source"]) == ("accepted", "corrected", "corrected")
    assert c["mome_disagreement"] == "the shirt colour"
    assert [v["consistent"] for v in c["mome_verdicts"]] == [True, False]
    log = vlm.stats()["log"]
    third = [e for e in log if e["model"] == "llava-hf/llava-onevision-qwen2-7b-ov-hf"]
    assert len(third) == 1 and "the shirt colour" in third[0]["text"] and third[0]["colors"] == ["red"] * 6
    correct = [e for e in log if "Write the corrected caption" in e["text"]]
    assert len(correct) == 1 and "llava" in correct[0]["text"]
    assert c["mome_caption"].startswith("Number of people") and "Llama-3.1" in c["mome_caption"]
    assert "saw red" in c["mome_third_caption"] and c["mome_calls"] == 5


def test_mome_rejects_without_interaction_by_hoigen_rule(vlm, tmp_path):
    vlm.rules([{"model": JUDGE, "set": {"has_interaction": False}}])
    clip = make_clip(RED)
    mome(tmp_path, [clip], require_interaction=True)
    assert (clip.status, clip.reject_stage, clip.reject_rule) == ("rejected", "mome", "no_interaction")
    assert clip.columns["mome_branch"] == "rejected" and len(clip.columns["mome_verdicts"]) == 2


def test_mome_judge_failure_is_an_error_row_and_resume_pays_nothing_twice(vlm, tmp_path):
    vlm.rules([{"model": JUDGE, "fault": "400"}])
    clip = make_clip(RED)
    mome(tmp_path, [clip])
    assert clip.status == "error" and clip.error_stage == "mome" and "HTTP 400" in clip.error_message
    vlm.rules([])
    vlm.reset()
    again = make_clip(RED)
    mome(tmp_path, [again])
    assert again.status == "accepted" and again.columns["mome_cached_calls"] == 1  # expert B's caption
    assert sorted(e["model"] for e in vlm.stats()["log"]) == [JUDGE, JUDGE]


def test_call_records_on_an_s3_output(vlm, monkeypatch):
    from s3server import MotoServer

    with MotoServer() as s3:
        s3.create_bucket("curated")
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        out = "s3://curated/run1"
        caption(out, [make_clip(RED)])
        again = make_clip(RED)
        caption(out, [again])
        assert again.status == "accepted" and again.columns["caption_cached"]
        assert vlm.stats()["requests"] == 1
        records = CallLedger(out).all()
        assert [r["outcome"] for r in records] == ["success"] and KEY not in json.dumps(records)


def test_a_worker_without_the_key_makes_error_rows_not_a_crash(vlm, tmp_path, monkeypatch):
    monkeypatch.delenv("ACTCURATE_VLM_API_KEY")
    clip = make_clip(RED)
    caption(tmp_path, [clip])
    assert clip.status == "error" and "ACTCURATE_VLM_API_KEY" in clip.error_message and "not set" in clip.error_message
    assert vlm.stats()["requests"] == 0


def test_source_captions_from_the_input_list_go_into_the_prompt(vlm, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("uri,caption\n/in/v.mp4,a dancer spins twice on one foot\n/in/other.mp4,\n")
    clip = make_clip(RED)
    caption(tmp_path / "out", [clip], style="hmi", source_captions=str(listing))
    assert clip.status == "accepted"
    assert "source dataset's caption of this video" in vlm.stats()["log"][0]["text"]
    assert "a dancer spins twice on one foot" in vlm.stats()["log"][0]["text"]
    listing.write_text("path,text\n/in/v.mp4,x\n")
    with pytest.raises(UserError, match="needs 'uri' and 'caption' columns"):
        CaptionStage(CaptionStage.Params(source_captions=str(listing))).preflight()


def test_every_style_has_a_prompt_and_a_strict_schema_rendered_deterministically():
    from stages.caption.mome import Verdict
    from stages.caption.stage import json_schema
    from stages.caption.styles import STYLES

    def objects(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for v in node.values():
                yield from objects(v)
        elif isinstance(node, list):
            for v in node:
                yield from objects(v)

    for style in STYLES.values():
        assert "{facts}" in style.prompt() and "{source}" in style.prompt()
        for schema in (json_schema(style.schema), json_schema(Verdict)):
            for obj in objects(schema):  # OpenAI strict mode: closed objects, every property required
                assert obj["additionalProperties"] is False and set(obj["required"]) == set(obj["properties"])
        import fixtures_vlm

        sample = style.schema.model_validate(fixtures_vlm.generate(json_schema(style.schema),
                                                                   json_schema(style.schema).get("$defs", {}), "x"))
        assert style.render(sample) == style.render(style.parse(sample.model_dump_json())) != ""


def test_pose_keyframes_are_the_frames_sent_and_the_judge_may_see_them(vlm, tmp_path):
    clip = make_clip(RED, GREEN, BLUE, n=4)
    clip.columns["pose_keyframe_indices"] = [1, 5, 9, 10]
    caption(tmp_path, [clip], keyframes="pose", max_frames=3)
    assert clip.columns["caption_frame_indices"] == [1, 9, 10]  # 3 of the 4 keyframes, spread evenly
    assert vlm.stats()["log"][0]["colors"] == ["red", "blue", "blue"]
    stage = MomeStage(MomeStage.Params(**FAST, judge_sees_frames=True), RunContext(output=str(tmp_path)))
    stage.setup()
    stage.process([clip])
    judged = [e for e in vlm.stats()["log"] if e["model"] == JUDGE]
    assert clip.status == "accepted" and [e["colors"] for e in judged] == [["red", "blue", "blue"]] * 2


def test_vllm_backend_builds_engine_requests_and_says_it_needs_vllm_and_a_gpu():
    from pipeline.executor import plan_resources
    from pipeline.recipe import build_recipe
    from stages.caption.client import Request, make_client

    params = {"backend": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct",
              "extra_body": {"top_k": 20, "engine": {"max_model_len": 16384, "tensor_parallel_size": 1}}}
    stage = CaptionStage(CaptionStage.Params(**params))
    client = make_client(stage.endpoints()["caption"], 8, "caption")
    body = client.body(Request(text="describe", images=[b"\xff\xd8jpeg"], schema={"type": "object"}), seed=3)
    assert body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9hqcGVn"}},
        {"type": "text", "text": "describe"}]
    assert body["sampling"] == {"temperature": 0.7, "top_p": 0.8, "max_tokens": 2048, "seed": 3, "top_k": 20}
    assert body["schema"] == {"type": "object"}  # becomes the structured-output SamplingParams keyword
    assert client.engine_args(4) == {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "max_model_len": 16384,
                                     "gpu_memory_utilization": 0.85, "limit_mm_per_prompt": {"image": 8},
                                     "tensor_parallel_size": 1}
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(UserError, match="backend vllm runs .* in-process on a GPU worker and needs the vllm") \
                as missing:
            stage.preflight()
        assert "\n" not in str(missing.value)
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "caption": params}})
    with pytest.raises(UserError, match="stages caption need a GPU and this Ray cluster has none") as no_gpu:
        plan_resources(recipe.stages, [{"CPU": 2.0}])
    assert "\n" not in str(no_gpu.value)
    assert plan_resources(recipe.stages, [{"CPU": 16.0, "GPU": 1.0}])["caption"].gpus == 1.0
    assert plan_resources(build_recipe({"stages": {"probe": {}, "scenes": {}, "caption": {}}}).stages,
                          [{"CPU": 16.0, "GPU": 1.0}])["caption"].gpus == 0  # an HTTP client never takes a GPU
