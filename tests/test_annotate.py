"""The annotate stage: the QA checks on real objects, each style against the local test VLM server (its own
process), and haic and actionart through the real engine on generated videos, with resume and --redo-errors
counting the server's requests."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

import media
from fixtures_run import clip_rows
from fixtures_vlm import VlmServer
from manifests.annotations import (ANNOTATIONS, HAIC_CATEGORIES, HMI_DIMENSIONS, LETTERS, QA_RULES,
                                   final_caption, parse_annotation)
from manifests.audit import audit, render_text
from pipeline.calls import CallLedger
from pipeline.clip import Clip
from pipeline.recipe import build_recipe
from pipeline.run import RunOptions, run
from pipeline.stage import RunContext
from stages.annotate import AnnotateStage
from stages.annotate.drafts import HaicDraft
from stages.annotate.qa import choice_violation, drop_duplicates, jaccard, shuffle_options, tokens

GENERATOR, BLIND, VISION = "Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "api_key_env": None}

# A scripted HAIC question set: five valid questions (one per category, each quoting the caption's hash so the
# questions follow the caption) and six that a QA rule must drop.
CLAP = "How many times does the man clap his hands at {caption_sha}?"
LONG = "she slowly lowers both arms from above her head down to her hips while turning left"
HAIC_SET = [
    {"category": "Action Details", "question": "What does the man in the grey cap do with his right hand at "
     "{caption_sha}?", "correct_answer": "He raises it upward",
     "distractors": ["He lowers it downward", "He swings it sideways", "He keeps it still"]},
    {"category": "Action Sequence", "question": "What does the man in the grey cap do immediately after gripping "
     "the bar at {caption_sha}?", "correct_answer": "He lifts it to his chest",
     "distractors": ["He drops it", "He claps", "He turns around"]},
    {"category": "Interaction", "question": "What gesture does the woman in red make toward the man at "
     "{caption_sha}?", "correct_answer": "She waves", "distractors": ["She points", "She bows", "She nods"]},
    {"category": "Count", "question": CLAP, "correct_answer": "Two", "distractors": ["One", "Three", "Four"]},
    {"category": "Attribute", "question": "What colour is the jacket of the woman on the left at {caption_sha}?",
     "correct_answer": "Red", "distractors": ["Blue", "Green", "Black"]},
    # dropped: the same text in other case and punctuation; the same words but one function word
    {"category": "Count", "question": CLAP.lower().rstrip("?"), "correct_answer": "Two",
     "distractors": ["One", "Three", "Four"]},
    {"category": "Count", "question": CLAP.replace("his hands", "the hands"), "correct_answer": "Two",
     "distractors": ["One", "Three", "Four"]},
    # dropped by a category rule
    {"category": "Count", "question": "What number of claps does the man make at {caption_sha}?",
     "correct_answer": "Two", "distractors": ["One", "Three", "Four"]},
    {"category": "Interaction", "question": "What does Subject 1 hand to the woman at {caption_sha}?",
     "correct_answer": "A cup", "distractors": ["A ball", "A bag", "A phone"]},
    {"category": "Action Sequence", "question": "What does the woman do just before sitting down at {caption_sha}?",
     "correct_answer": "She " + LONG, "distractors": ["She jumps", "She claps", "She waves"]},
    {"category": "Action Sequence", "question": "What does the woman do after sitting down at {caption_sha}?",
     "correct_answer": "She stands", "distractors": ["She jumps", "She claps", "She waves"]},
]
HAIC_DROPPED = Counter({"duplicate": 1, "near_duplicate": 1, "count_phrase": 1, "subject_label": 1,
                        "sequence_option_length": 1, "sequence_phrase": 1})


def sha(caption: str) -> str:
    return hashlib.sha1(caption.strip().encode()).hexdigest()[:8]


def draft(**fields) -> HaicDraft:
    base = {"category": "Action Details", "question": "What does the man do with his left hand?",
            "correct_answer": "He raises it", "distractors": ["He lowers it", "He waves it", "He hides it"]}
    return HaicDraft(**{**base, **fields})


# -- the checks on real objects ----------------------------------------------------------------------------------
def test_category_rules_each_name_the_broken_rule():
    def rule(**fields):
        d = draft(**fields)
        return choice_violation(d.category, d.question, [d.correct_answer, *d.distractors])

    assert rule() is None
    assert rule(category="Count", question="How many times does he jump?") is None
    assert rule(category="Count", question="What number of jumps does he make?") == "count_phrase"
    seq = "What does the man do immediately after jumping?"
    assert rule(category="Action Sequence", question=seq) is None
    assert rule(category="Action Sequence", question=seq.replace("immediately after", "just before")) is None
    assert rule(category="Action Sequence", question="What does the man do after jumping?") == "sequence_phrase"
    fifteen, sixteen = " ".join(["word"] * 15), " ".join(["word"] * 16)
    assert rule(category="Action Sequence", question=seq, correct_answer=fifteen) is None
    assert rule(category="Action Sequence", question=seq, correct_answer=sixteen) == "sequence_option_length"
    assert rule(category="Attribute", correct_answer=sixteen) is None  # the length rule is Sequence's alone
    for label in ("Subject 1", "subject 2", "Person A", "person #3"):
        assert rule(question=f"What does {label} do?") == "subject_label", label
    assert rule(question="What does the person in red do?") is None
    assert rule(distractors=["he raises it.", "He waves it", "He hides it"]) == "duplicate_options"
    assert rule(question="  ") == "empty_text"
    assert set(QA_RULES) >= {"duplicate", "near_duplicate", "subject_label", "sequence_phrase",
                             "sequence_option_length", "count_phrase", "duplicate_options", "guessable"}


def test_shuffle_is_deterministic_keeps_the_answer_and_balances_letters():
    options, letter = shuffle_options("clip-1", "What does he do?", "Jumps", ["Sits", "Runs", "Waves"])
    assert options[LETTERS.index(letter)] == "Jumps" and sorted(options) == ["Jumps", "Runs", "Sits", "Waves"]
    assert shuffle_options("clip-1", "What does he do?", "Jumps", ["Sits", "Runs", "Waves"]) == (options, letter)
    letters = Counter(shuffle_options(f"clip-{i % 500}", f"question {i}", "right", ["x", "y", "z"])[1]
                      for i in range(4000))
    # a model writes the answer first: after the shuffle each letter holds a quarter (binomial sd 0.7 points)
    assert set(letters) == set(LETTERS) and all(0.23 < n / 4000 < 0.27 for n in letters.values()), letters
    # the order follows (clip, question): another clip may order the same question otherwise
    orders = {tuple(shuffle_options(f"c{i}", "Q", "a", ["b", "c", "d"])[0]) for i in range(50)}
    assert len(orders) > 10


def test_duplicates_and_near_duplicates_by_token_overlap():
    a = "What does the man in the grey cap do with his right hand?"
    near = "What does a man in a grey cap do with the right hand?"  # only function words differ
    other = "What does the man in the grey cap do with his left foot?"
    assert jaccard(tokens(a), tokens(near)) == 1.0
    overlap = jaccard(tokens(a), tokens(other))
    assert overlap == 4 / 8  # same person, other body part: a different question, under the 0.8 threshold
    kept, dropped = drop_duplicates([a, a.upper().rstrip("?"), near, other], str, 0.8)
    assert kept == [a, other]
    assert [(d.question, d.rule) for d in dropped] == [(a.upper().rstrip("?"), "duplicate"), (near, "near_duplicate")]
    kept, _ = drop_duplicates([a, near, other], str, None)  # near-duplicate rule off
    assert kept == [a, near, other]
    kept, _ = drop_duplicates([a, other], str, overlap)  # at the threshold the later one goes
    assert kept == [a]


def test_parameters_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="ground_on_pose"):
        AnnotateStage.Params(ground_on_pose=True)
    with pytest.raises(ValueError, match="send: clip belongs to caption and mome"):
        AnnotateStage.Params(send="clip")
    assert AnnotateStage(AnnotateStage.Params(style="hmi")).frame_request() is None  # QA reads no frames
    assert AnnotateStage(AnnotateStage.Params(style="actionart")).frame_request() is not None


def test_contract_columns_and_final_caption():
    cols = AnnotateStage.columns
    expected = {"annotate_style": pa.string(), "annotate_json": pa.string(), "annotate_guessable": pa.int32(),
                "annotate_model": pa.string(), "annotate_blind_model": pa.string(), "annotate_outcome": pa.string(),
                "annotate_prompt_hash": pa.string(), "annotate_prompt_tokens": pa.int64(),
                "annotate_output_tokens": pa.int64(), "annotate_thinking_tokens": pa.int64(),
                "annotate_latency_s": pa.float64(), "annotate_calls": pa.int32(), "annotate_cached_calls": pa.int32()}
    assert all(cols[name] == typ for name, typ in expected.items())
    assert cols["annotate_dropped"] == pa.list_(pa.struct([("question", pa.string()), ("rule", pa.string())]))
    assert final_caption({"caption_text": "A", "mome_caption": "B"}) == "B"
    assert final_caption({"caption_text": "A", "mome_caption": None}) == "A"
    assert final_caption({"caption_text": "A"}) == "A"
    with pytest.raises(ValueError):
        parse_annotation("haic", json.dumps({"questions": [{"category": "Count", "question": "q", "options": ["a"],
                                                            "answer": "A", "guessable": False}]}))
    with pytest.raises(ValueError):
        parse_annotation("nope", "{}")


# -- each style against the server, without Ray -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    with VlmServer() as s:
        yield s


@pytest.fixture
def vlm(server):
    server.rules([])
    server.reset()
    return server


def endpoint(server, model, **extra):
    return {"model": model, "base_url": server.url, **FAST, **extra}


def annotate(server, out, clips, **params):
    settings = {**endpoint(server, GENERATOR), "blind": endpoint(server, BLIND), "vision": endpoint(server, VISION),
                **params}
    stage = AnnotateStage(AnnotateStage.Params(**settings), RunContext(output=str(out)))
    stage.setup()
    return stage.process(clips)


def captioned(text: str, start: float = 0.0, colors=((230, 20, 20),), n=6, **columns) -> Clip:
    frames = np.concatenate([np.full((n, 96, 128, 3), c, np.uint8) for c in colors])
    clip = Clip(video_id="vid", video_uri="/in/v.mp4", shard_id="s0", start_s=start, end_s=start + 0.5 * len(frames))
    clip.frames, clip.frame_times = frames, [start + 0.5 * i for i in range(len(frames))]
    clip.columns.update(caption_text=text, **columns)
    return clip


def test_haic_on_the_mome_caption_with_rules_shuffle_and_blind_check(vlm, tmp_path):
    vlm.rules([{"model": GENERATOR, "set": {"questions": HAIC_SET}}])
    clip = captioned("The man in the grey cap claps twice.", mome_caption="The corrected caption: he claps twice.")
    annotate(vlm, tmp_path, [clip])
    cols = clip.columns
    assert clip.status == "accepted", clip.error_message
    result = parse_annotation("haic", cols["annotate_json"])
    assert [q.category for q in result.questions] == list(HAIC_CATEGORIES)
    mome_sha = sha("The corrected caption: he claps twice.")
    assert all(mome_sha in q.question for q in result.questions)  # generated from MoME's caption, not caption_text
    by_question = {d["question"].replace("{caption_sha}", mome_sha): d for d in HAIC_SET}
    for q in result.questions:
        d = by_question[q.question]
        assert q.options[LETTERS.index(q.answer)] == d["correct_answer"]
        assert sorted(q.options) == sorted([d["correct_answer"], *d["distractors"]])
        # the blind model (no rule: the server answers "A" to each) guessed right exactly where the answer is A
        assert q.guessable == (q.answer == "A")
    assert Counter(d["rule"] for d in cols["annotate_dropped"]) == HAIC_DROPPED
    assert cols["annotate_guessable"] == sum(q.answer == "A" for q in result.questions)
    log = vlm.stats()["log"]
    assert [e["model"] for e in log] == [GENERATOR, BLIND]
    blind_prompt = log[1]["text"]
    assert "claps twice" not in blind_prompt and not log[1]["colors"]  # no caption, no frames
    assert all(q.question in blind_prompt and all(o in blind_prompt for o in q.options) for q in result.questions)
    assert cols["annotate_model"] == GENERATOR and cols["annotate_blind_model"] == BLIND
    assert cols["annotate_calls"] == 2 and cols["annotate_cached_calls"] == 0 and cols["annotate_outcome"] == "success"

    # the blind model answering every question right marks all guessable; drop_guessable then empties the clip
    vlm.rules([{"model": GENERATOR, "set": {"questions": HAIC_SET}},
               {"model": BLIND, "set": {"answers": [q.answer for q in result.questions]}}])
    again = captioned("The man in the grey cap claps twice.", mome_caption="The corrected caption: he claps twice.")
    annotate(vlm, tmp_path / "o2", [again], drop_guessable=True)
    assert again.status == "rejected" and again.reject_rule == "no_questions"
    rules = Counter(d["rule"] for d in again.columns["annotate_dropped"])
    assert rules == HAIC_DROPPED + Counter({"guessable": 5})


def test_invalid_output_is_retried_with_new_seeds_then_an_error_row(vlm, tmp_path):
    vlm.rules([{"model": GENERATOR, "fault": "malformed", "times": 1}])
    ok = captioned("A woman waves.")
    annotate(vlm, tmp_path / "a", [ok], blind=None)
    assert ok.status == "accepted" and ok.columns.get("annotate_blind_model") is None
    seeds = [e["seed"] for e in vlm.stats()["log"]]
    assert seeds == [0, 1]  # the invalid answer was asked again with the next seed
    vlm.rules([{"model": GENERATOR, "fault": "malformed"}])
    vlm.reset()
    bad = captioned("A woman waves.", start=5)
    annotate(vlm, tmp_path / "b", [bad], blind=None, max_seed_retries=2)
    assert bad.status == "error" and bad.error_stage == "annotate"
    assert "invalid answer" in bad.error_message
    assert [e["seed"] for e in vlm.stats()["log"]] == [0, 1, 2]
    assert bad.columns["annotate_outcome"] == "error" and bad.columns["annotate_calls"] == 1
    # the blind call failing for good is an error row too, with what was paid for recorded
    vlm.rules([{"model": BLIND, "fault": "400"}])
    blind_fails = captioned("A woman waves.", start=9)
    annotate(vlm, tmp_path / "c", [blind_fails])
    assert blind_fails.status == "error" and "annotate_blind" in blind_fails.error_message
    assert blind_fails.columns["annotate_calls"] == 2 and blind_fails.columns["annotate_prompt_tokens"] > 0


def test_a_safety_stop_rejects_by_blocked(vlm, tmp_path):
    vlm.rules([{"model": GENERATOR, "fault": "blocked"}])
    clip = captioned("A boxer punches.")
    annotate(vlm, tmp_path, [clip])
    assert clip.status == "rejected" and clip.reject_stage == "annotate" and clip.reject_rule == "blocked"
    assert clip.columns["annotate_outcome"] == "blocked" and clip.columns["annotate_calls"] == 1
    assert len(vlm.stats()["log"]) == 1  # a blocked answer is final: not retried, no blind call


def test_hmi_open_and_true_false_with_the_blind_check_on_true_false_only(vlm, tmp_path):
    questions = [{"dimension": d, "type": t, "question": f"{d} {t} about {{caption_sha}}?", "answer": a}
                 for d in HMI_DIMENSIONS for t, a in (("open", "He raises the right arm"), ("true_false", "True"))]
    questions += [{"dimension": "Character Attributes", "type": "true_false", "question": "Is he tall?",
                   "answer": "maybe"}]
    vlm.rules([{"model": GENERATOR, "set": {"questions": questions}},
               {"model": BLIND, "set": {"answers": ["true", "false", "true", "false", "true"]}}])
    clip = captioned("A man raises his right arm.")
    annotate(vlm, tmp_path, [clip], style="hmi")
    assert clip.status == "accepted"
    result = parse_annotation("hmi", clip.columns["annotate_json"])
    assert [(q.dimension, q.type) for q in result.questions] == [(d, t) for d in HMI_DIMENSIONS
                                                                 for t in ("open", "true_false")]
    assert all(sha("A man raises his right arm.") in q.question for q in result.questions)
    assert {q.answer for q in result.questions if q.type == "true_false"} == {"true"}  # "True" normalised
    guessed = [q.guessable for q in result.questions if q.type == "true_false"]
    assert guessed == [True, False, True, False, True] and clip.columns["annotate_guessable"] == 3
    assert not any(q.guessable for q in result.questions if q.type == "open")
    assert clip.columns["annotate_dropped"] == [{"question": "Is he tall?", "rule": "true_false_answer"}]
    blind_prompt = vlm.stats()["log"][1]["text"]
    assert "He raises the right arm" not in blind_prompt and "open about" not in blind_prompt


def test_hoigen_triplets_from_the_final_caption(vlm, tmp_path):
    triplets = [{"person": "the woman in red", "verb": "pick up", "object": "a cup {caption_sha}"},
                {"person": "The woman in red", "verb": "pick up", "object": "a cup {caption_sha}."},
                {"person": "Subject 1", "verb": "ride", "object": "a bike"},
                {"person": "the woman in red", "verb": "pour", "object": "tea"}]
    vlm.rules([{"model": GENERATOR, "set": {"triplets": triplets}}])
    clip = captioned("A woman in red picks up a cup and pours tea.")
    annotate(vlm, tmp_path, [clip], style="hoigen", blind=None)
    assert clip.status == "accepted"
    got = parse_annotation("hoigen", clip.columns["annotate_json"]).triplets
    cup = f"a cup {sha('A woman in red picks up a cup and pours tea.')}"
    assert [(t.person, t.verb, t.object) for t in got] == [("the woman in red", "pick up", cup),
                                                           ("the woman in red", "pour", "tea")]
    assert [d["rule"] for d in clip.columns["annotate_dropped"]] == ["subject_label", "duplicate_triplet"]
    assert clip.columns["annotate_guessable"] == 0 and clip.columns["annotate_calls"] == 1
    vlm.rules([{"model": GENERATOR, "set": {"triplets": []}}])
    empty = captioned("A woman stands.", start=3)
    annotate(vlm, tmp_path / "o2", [empty], style="hoigen", blind=None)
    assert empty.status == "rejected" and empty.reject_rule == "no_triplets"


def test_actionart_keyframes_pairs_by_keypoint_displacement(vlm, tmp_path):
    red, green, blue = (230, 20, 20), (20, 200, 20), (20, 20, 230)
    clip = captioned("The right arm rises.", colors=(red, green, blue), n=2)  # kept frames 0..5
    still = [[0.5, 0.5, 0.9]] * 17
    moved = [[0.5, 0.1, 0.9]] * 17

    def frame(i, keypoints):
        return {"frame_index": i, "time_s": 0.5 * i, "persons": [{"track": 0, "box": [0, 0, 1, 1], "score": 0.9,
                                                                  "keypoints": keypoints}]}

    clip.columns.update(pose_keyframe_indices=[0, 2, 4], pose_record=[frame(0, still), frame(2, still),
                                                                      frame(4, moved)])
    annotate(vlm, tmp_path, [clip], style="actionart", blind=None)
    assert clip.status == "accepted", clip.error_message
    result = parse_annotation("actionart", clip.columns["annotate_json"])
    assert [p.frame_index for p in result.pose_descriptions] == [0, 2, 4] == clip.columns["annotate_frame_indices"]
    assert [p.time for p in result.pose_descriptions] == [0.0, 1.0, 2.0]
    assert "Head: head:" in result.pose_descriptions[0].text and "saw red" in result.pose_descriptions[0].text
    assert "saw blue" in result.pose_descriptions[2].text  # each description saw its own keyframe
    # the largest main-person displacement is between a still keyframe and the moved one: (0, 4) before (2, 4)
    diff = result.spatial_differences
    assert [(d.frame_a, d.frame_b, d.time_a, d.time_b) for d in diff] == [(0, 4, 0.0, 2.0)]
    assert "saw red blue" in diff[0].text
    assert len(result.questions) == 1 and result.questions[0].subtask == "body part"
    log = vlm.stats()["log"]
    assert sorted(e["model"] for e in log) == [GENERATOR] + [VISION] * 4
    assert [e["colors"] for e in log if e["model"] == GENERATOR] == [[]]  # QA is generated from the caption only


# -- through the engine on generated videos -----------------------------------------------------------------------
def engine_doc(server, caption_style: str, annotate_params: dict) -> dict:
    return {"name": "annotest", "stages": {
        "probe": {},
        "scenes": {"min_clip_s": 1.0},
        "caption": {"style": caption_style, **endpoint(server, VISION), "max_frames": 3, "batch_size": 2},
        "annotate": {**endpoint(server, GENERATOR), "blind": endpoint(server, BLIND),
                     "vision": endpoint(server, VISION), "batch_size": 2, **annotate_params},
    }}


@pytest.fixture(scope="module")
def engine_runs(ray_local, tmp_path_factory):
    """haic over four clips of two generated videos (the blind call of one clip fails once), then --redo-errors,
    then a resume after the commits were lost; and actionart over the same videos. Request counts per step."""
    root = tmp_path_factory.mktemp("annotate-e2e")
    videos = root / "in"
    for i in range(2):
        media.make_video(videos / f"v{i}.mp4", segments=(40, 40), fps=25, seed=i)
    found: dict = {}
    with VlmServer() as server:
        server.rules([{"model": GENERATOR, "text": "HAICBench", "set": {"questions": HAIC_SET}},
                      {"model": BLIND, "fault": "400", "times": 1}])
        recipe = build_recipe(engine_doc(server, "haic", {"style": "haic"}))
        out = root / "haic"
        opts = RunOptions(recipe=recipe, output=str(out), input=str(videos), progress=False)
        run(opts)
        found["first_log"] = server.stats()["log"]
        found["first"] = clip_rows(str(out))
        server.reset()
        run(RunOptions(recipe=recipe, output=str(out), input=str(videos), progress=False, redo_errors=True))
        found["redo_log"] = server.stats()["log"]
        found["redo"] = clip_rows(str(out))
        found["records"] = CallLedger(str(out)).all()
        for commit in (out / "commits").glob("*.json"):  # as if the run died after every call, before committing
            commit.unlink()
        server.reset()
        run(opts)
        found["resume_log"] = server.stats()["log"]
        found["resumed"] = clip_rows(str(out))
        found["audit"] = audit(str(out))

        server.rules([{"model": GENERATOR, "text": "fine-grained multiple-choice", "set": {"questions": [
            {"subtask": s, "question": f"{q} {{caption_sha}}?", "correct_answer": "left", "distractors":
             ["right", "up", "down"]} for s, q in (("body part", "Which arm rises"), ("direction", "Where does it go"),
                                                  ("count", "How many times does he turn"))]}}])
        server.reset()
        recipe = build_recipe(engine_doc(server, "actionart", {"style": "actionart", "max_frames": 3}))
        run(RunOptions(recipe=recipe, output=str(root / "actionart"), input=str(videos), progress=False))
        found["actionart"] = clip_rows(str(root / "actionart"))
        found["actionart_log"] = server.stats()["log"]
    return found


@pytest.mark.slow
def test_haic_through_the_engine_field_by_field(engine_runs):
    first, rows = engine_runs["first"], engine_runs["redo"]
    assert len(first) == 4
    errored = [r for r in first if r["status"] == "error"]
    assert len(errored) == 1 and errored[0]["error_stage"] == "annotate"
    assert "annotate_blind" in errored[0]["error_message"]
    assert [r["status"] for r in rows] == ["accepted"] * 4
    shas = set()
    for r in rows:
        assert r["annotate_style"] == "haic"
        result = parse_annotation("haic", r["annotate_json"])
        assert isinstance(result, ANNOTATIONS["haic"])
        assert [q.category for q in result.questions] == list(HAIC_CATEGORIES)
        caption_sha = sha(final_caption(r))
        shas.add(caption_sha)
        for q in result.questions:
            assert caption_sha in q.question  # asked about this clip's own caption
            d = next(d for d in HAIC_SET if d["question"].replace("{caption_sha}", caption_sha) == q.question)
            assert q.options[LETTERS.index(q.answer)] == d["correct_answer"] and len(q.options) == 4
            assert not q.options[0].startswith("(")
            assert q.guessable == (q.answer == "A")  # the server's blind answer is "A" to every question
        assert Counter(d["rule"] for d in r["annotate_dropped"]) == HAIC_DROPPED
        assert r["annotate_guessable"] == sum(q.guessable for q in result.questions)
        assert r["annotate_model"] == GENERATOR and r["annotate_blind_model"] == BLIND
        assert r["annotate_outcome"] == "success" and r["annotate_calls"] == 2
        assert r["annotate_prompt_hash"] and r["annotate_prompt_tokens"] > 0 and r["annotate_output_tokens"] > 0
        assert r["annotate_latency_s"] > 0 and r["annotate_thinking_tokens"] == 0
        assert r["annotate_frame_indices"] is None  # haic reads no frames
    assert len(shas) == 4  # four captions, four question sets
    letters = Counter(q.answer for r in rows for q in parse_annotation("haic", r["annotate_json"]).questions)
    assert len(letters) >= 3  # the shuffle spread the answers (the unit test checks the balance over many)
    # the ledger holds one generator and one blind record per clip, every one a success after the redo
    annotate_records = [x for x in engine_runs["records"] if x["expert"].startswith("annotate")]
    assert Counter(x["expert"] for x in annotate_records if x["outcome"] == "success") == {
        "annotate": 4, "annotate_blind": 4}


@pytest.mark.slow
def test_redo_and_resume_repeat_no_finished_call(engine_runs):
    first_log = engine_runs["first_log"]
    assert Counter(e["model"] for e in first_log) == {VISION: 4, GENERATOR: 4, BLIND: 4}
    # --redo-errors: only the failed clip's blind call; its caption and question generation were finished
    assert [e["model"] for e in engine_runs["redo_log"]] == [BLIND]
    redone = next(r for r in engine_runs["redo"] if r["clip_id"] == next(
        x["clip_id"] for x in engine_runs["first"] if x["status"] == "error"))
    assert redone["annotate_calls"] == 2 and redone["annotate_cached_calls"] == 1
    # resumed after losing every commit: every call answered from OUT/calls, the same annotations
    assert engine_runs["resume_log"] == []
    before = {r["clip_id"]: r for r in engine_runs["redo"]}
    for r in engine_runs["resumed"]:
        assert r["annotate_cached_calls"] == r["annotate_calls"] == 2 and r["caption_cached"]
        assert r["annotate_json"] == before[r["clip_id"]]["annotate_json"]
        assert r["annotate_dropped"] == before[r["clip_id"]]["annotate_dropped"]
    costs = {m["stage"]: m for m in engine_runs["audit"]["model_calls"]}
    assert costs["annotate"]["clips"] == 4 and costs["annotate"]["cached_clips"] == 4


@pytest.mark.slow
def test_audit_counts_the_qa_checks(engine_runs):
    rows = engine_runs["resumed"]
    guessable = sum(r["annotate_guessable"] for r in rows)
    assert engine_runs["audit"]["qa"] == [{"stage": "annotate", "kept": 4 * 5, "guessable": guessable,
                                           "dropped": {rule: 4 * n for rule, n in sorted(HAIC_DROPPED.items())}}]
    console = Console(record=True, width=200)
    render_text(engine_runs["audit"], console)
    assert f"QA (annotate): 20 kept on accepted clips, {guessable} of them guessable blind; dropped: count_phrase 4, " \
           "duplicate 4, near_duplicate 4, sequence_option_length 4, sequence_phrase 4, subject_label 4" \
        in console.export_text()


@pytest.mark.slow
def test_actionart_through_the_engine(engine_runs):
    rows = engine_runs["actionart"]
    assert len(rows) == 4 and all(r["status"] == "accepted" for r in rows), rows
    for r in rows:
        assert r["annotate_style"] == "actionart"
        result = parse_annotation("actionart", r["annotate_json"])
        keys = r["annotate_frame_indices"]
        assert len(keys) == 3 and keys == sorted(keys)
        assert [p.frame_index for p in result.pose_descriptions] == keys
        assert all(p.text.startswith("Head: ") for p in result.pose_descriptions)
        # no pose stage: one pair spanning the keyframes evenly (first to last)
        assert [(d.frame_a, d.frame_b) for d in result.spatial_differences] == [(keys[0], keys[-1])]
        assert [q.subtask for q in result.questions] == ["body part", "direction", "count"]
        caption_sha = sha(final_caption(r))
        assert all(caption_sha in q.question for q in result.questions)
        assert all(q.options[LETTERS.index(q.answer)] == "left" for q in result.questions)
        # 3 pose descriptions + 1 difference + the questions + the blind check
        assert r["annotate_calls"] == 6 and r["annotate_guessable"] == sum(q.guessable for q in result.questions)
    log = engine_runs["actionart_log"]
    assert Counter(e["model"] for e in log) == {VISION: 4 + 4 * 4, GENERATOR: 4, BLIND: 4}
    assert all(e["colors"] == [] for e in log if e["model"] != VISION)
