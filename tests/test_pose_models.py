"""The pose stage against fixture ONNX models with the real DWPose/YOLOX contracts, through onnxruntime: decoding
checked exactly (letterbox ratio, NMS, affine crop, SimCC, inverse affine, channel order), fixed and dynamic batch,
and the start-up errors for missing, corrupt or wrong weights."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fixtures_models as fm
from pipeline.clip import Clip
from pipeline.errors import UserError
from stages.pose import ops
from stages.pose import PoseParams, PoseStage

WHITE_R = (255 - 123.675) / 58.395  # the marker's normalised value in channel 0 (R)
WHITE_B = (255 - 103.53) / 57.375  # ... when the crop is fed as BGR
OFFSETS = fm.default_offsets()
WEIGHTS = fm.default_weights()
# A box whose padded, 3:4 crop is exactly the 288x384 input at 1:1 (230.4 x 1.25 = 288, 307.2 x 1.25 = 384).
ONE_TO_ONE = [200 - 115.2, 250 - 153.6, 200 + 115.2, 250 + 153.6, 0.95]
ELSEWHERE = [400, 100, 500, 300, 0.8]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "fixed": fm.make_yolox(d / "fixed.onnx", mode="fixed", boxes=[ONE_TO_ONE, ELSEWHERE]),
        "fixed_b1": fm.make_yolox(d / "fixed_b1.onnx", mode="fixed", boxes=[ONE_TO_ONE, ELSEWHERE], batch=1),
        "bright": fm.make_yolox(d / "bright.onnx"),
        "raw": fm.make_yolox(d / "raw.onnx", output="raw", boxes=[
            (10 * 80 + 20, [0.5, 0.5, math.log(40 / 8), math.log(100 / 8), 0.9, 0.95] + [0] * 79),
            (10 * 80 + 21, [0.5, 0.5, math.log(40 / 8), math.log(100 / 8), 0.9, 0.5] + [0] * 79),  # NMS drops it
            (6400 + 5 * 40 + 30, [0, 0, math.log(4), math.log(10), 0.9, 0.02, 0.99] + [0] * 78),  # not a person
        ]),
        "pose": fm.make_dwpose(d / "pose.onnx"),
        "pose_b1": fm.make_dwpose(d / "pose_b1.onnx", batch=1),
        "dir": d,
    }


def stage_for(models, det="fixed", pose="pose", **params) -> PoseStage:
    stage = PoseStage(PoseParams(det_model=str(models[det]), pose_model=str(models[pose]), device="cpu",
                                 threads=1, **params))
    stage.setup()
    return stage


def marker_frames(n: int, width: int = 640, height: int = 480, at=(100, 120)) -> list[np.ndarray]:
    """Black RGB frames with one white pixel, moved one pixel right per frame. The default spot sits near the top
    left of the ONE_TO_ONE crop, so that every keypoint offset lands inside the 288x384 input."""
    frames = []
    for t in range(n):
        f = np.zeros((height, width, 3), np.uint8)
        f[at[1], at[0] + t] = 255
        frames.append(f)
    return frames


@pytest.mark.parametrize("det, pose", [("fixed", "pose"), ("fixed_b1", "pose_b1")])
def test_keypoints_are_decoded_exactly_through_onnxruntime(models, det, pose):
    stage = stage_for(models, det, pose, det_batch=3, pose_batch=4)
    frames = marker_frames(5)
    found = stage.detector.detect(frames, stage.params)
    assert len(found) == 5
    for boxes, scores in found:
        assert boxes == pytest.approx(np.array([ONE_TO_ONE[:4], ELSEWHERE[:4]]), abs=1e-4)  # ratio 1: as output
        assert scores == pytest.approx([0.95, 0.8])
    persons = [ops.FramePersons(b, s) for b, s in found]
    stage.pose.estimate(list(zip(frames, persons)), stage.params)
    for t, fp in enumerate(persons):
        assert fp.keypoints.shape == (2, 133, 2) and fp.keypoint_scores.shape == (2, 133)
        expect = np.array([100 + t, 120]) + OFFSETS  # the 1:1 crop: image pixel = marker + offset
        assert fp.keypoints[0] == pytest.approx(expect, abs=1e-3)
        assert fp.keypoint_scores[0] == pytest.approx(WEIGHTS * WHITE_R, rel=1e-4)
        assert (fp.keypoint_scores[1] < 0).all()  # the other box never sees the marker: nothing visible


def test_letterbox_ratio_and_a_scaled_crop_map_back_exactly(models):
    """A 320x240 frame: YOLOX sees it at 2x, so boxes come back halved; the crop then magnifies 2x."""
    stage = stage_for(models)
    frames = marker_frames(2, 320, 240, at=(53, 61))
    found = stage.detector.detect(frames, stage.params)
    assert found[0][0][0] == pytest.approx(np.array(ONE_TO_ONE[:4]) / 2, abs=1e-4)
    persons = [ops.FramePersons(b, s) for b, s in found]
    stage.pose.estimate(list(zip(frames, persons)), stage.params)
    for t, fp in enumerate(persons):
        assert fp.keypoints[0] == pytest.approx(np.array([53 + t, 61]) + OFFSETS / 2, abs=1e-3)


def test_channel_order_of_the_pose_input(models):
    stage = stage_for(models, pose_channels="bgr")
    frames = marker_frames(1)
    (found,) = stage.detector.detect(frames, stage.params)
    fp = ops.FramePersons(*found)
    stage.pose.estimate([(frames[0], fp)], stage.params)
    assert fp.keypoint_scores[0] == pytest.approx(WEIGHTS * WHITE_B, rel=1e-4)


def test_raw_yolox_head_through_onnxruntime(models):
    stage = stage_for(models, det="raw")
    (boxes, scores), = stage.detector.detect([np.zeros((240, 320, 3), np.uint8)], stage.params)
    cx, cy = 20.5 * 8, 10.5 * 8
    assert scores == pytest.approx([0.855]) and stage.detector.kind == "raw"
    assert boxes[0] == pytest.approx(np.array([cx - 20, cy - 50, cx + 20, cy + 50]) / 2, abs=1e-3)


def test_content_detector_finds_the_bright_person(models):
    stage = stage_for(models, det="bright")
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[100:300, 250:330] = 230
    frame[0:50, 0:50] = (255, 10, 10)  # bright but not in every channel: not a person
    empty = np.zeros((480, 640, 3), np.uint8)
    (boxes, scores), (none, _) = stage.detector.detect([frame, empty], stage.params)
    assert boxes.tolist() == [[250, 100, 330, 300]] and scores == pytest.approx([0.9]) and len(none) == 0


def test_fixed_batch_models_are_called_once_per_item(models):
    stage = stage_for(models, "fixed_b1", "pose_b1")
    calls = []
    for model in (stage.detector, stage.pose):
        real = model.session.run
        model.session.run = lambda names, feed, real=real: calls.append(len(next(iter(feed.values())))) or real(names, feed)
    clip = Clip(video_id="v", video_uri="/x.mp4", shard_id="s", end_s=1.0)
    clip.frames = np.stack(marker_frames(3))
    clip.frame_times = [0.0, 0.2, 0.4]
    stage.process([clip])
    assert calls == [1] * (3 + 6)  # 3 frames, 2 persons each


def test_whole_stage_on_frames_with_two_people(models):
    stage = stage_for(models, record_frames="all", record_persons=2, record_keypoints="wholebody")
    clip = Clip(video_id="v", video_uri="/x.mp4", shard_id="s", end_s=1.0)
    clip.frames = np.stack(marker_frames(5))
    clip.frame_times = [t * 0.2 for t in range(5)]
    (out,) = stage.process([clip])
    c = out.columns
    assert out.status == "accepted" and c["pose_persons_per_frame"] == [2] * 5 and c["pose_tracks"] == 2
    assert c["pose_keypoint_format"] == "coco_wholebody133"
    first = c["pose_record"][0]["persons"]
    assert [p["track"] for p in first] == [0, 1] and len(first[0]["keypoints"]) == 133
    x, y, s = first[0]["keypoints"][0]
    assert (x * 640, y * 480) == pytest.approx((100 + OFFSETS[0, 0], 120 + OFFSETS[0, 1]), abs=0.05)
    assert s == pytest.approx(WEIGHTS[0] * WHITE_R, abs=1e-3)
    assert c["pose_visible_keypoints"] == 17


# -- start-up errors -------------------------------------------------------------------------------------------------
@pytest.fixture
def no_models(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTCURATE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("ACTCURATE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def test_missing_weights_are_a_clear_start_up_error(no_models):
    with pytest.raises(UserError, match=r"model dwpose-det is missing .*actcurate models pull dwpose-det"):
        PoseStage(PoseParams()).preflight()
    fm.make_yolox(no_models / "yolox_l.onnx")
    with pytest.raises(UserError, match=r"model dwpose-pose is missing .*actcurate models pull dwpose-pose"):
        PoseStage(PoseParams()).preflight()
    fm.make_dwpose(no_models / "dw-ll_ucoco_384.onnx")
    PoseStage(PoseParams()).preflight()  # both found in the models folder
    with pytest.raises(UserError, match="the recipe names /no/such/det.onnx"):
        PoseStage(PoseParams(det_model="/no/such/det.onnx")).preflight()


def test_corrupt_or_swapped_weights_and_a_missing_gpu_provider(no_models, models):
    (no_models / "yolox_l.onnx").write_bytes(b"<html>rate limited</html>")
    fm.make_dwpose(no_models / "dw-ll_ucoco_384.onnx")
    with pytest.raises(UserError, match="dwpose-det at .* cannot be loaded by onnxruntime"):
        PoseStage(PoseParams()).preflight()
    with pytest.raises(UserError, match="expected a YOLOX output"):
        PoseStage(PoseParams(det_model=str(models["pose"]))).preflight()
    from onnx import TensorProto, helper

    flat = fm._save([helper.make_node("Identity", ["x"], ["dets"])],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
                    [helper.make_tensor_value_info("dets", TensorProto.FLOAT, ["batch", 10])], [], no_models / "flat.onnx")
    with pytest.raises(UserError, match="expected an image input"):
        PoseStage(PoseParams(det_model=str(flat), pose_model=str(models["pose"]))).preflight()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UserError, match="onnxruntime-gpu"):
            PoseStage(PoseParams(det_model=str(models["fixed"]), pose_model=str(models["pose"]),
                                 device="cuda")).preflight()


@pytest.mark.slow
def test_cli_run_stops_before_any_video_when_weights_are_missing(tmp_path):
    import media

    media.make_video(tmp_path / "in" / "a.mp4", segments=(30,))
    recipe = tmp_path / "pose.yaml"
    recipe.write_text("stages:\n  probe: {}\n  scenes: {}\n  pose:\n    min_single_person_ratio: 0.9\n")
    env = {**os.environ, "ACTCURATE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--recipe", recipe, "--input", tmp_path / "in",
                           "--output", tmp_path / "out", "--models-dir", tmp_path / "empty"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "dwpose-det" in done.stderr and "actcurate models pull dwpose-det" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing touched
