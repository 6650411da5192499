"""All six stages in one Ray run on 2 CPUs: fixture models with the real contracts, no deadlock, one manifest."""

from __future__ import annotations

import pytest

import fixtures_models as fm
import media
from fixtures_aesthetic import make_tiny_aesthetic
from fixtures_run import clip_rows
from manifests.audit import audit
from pipeline.recipe import build_recipe
from pipeline.run import RunOptions, run

pytestmark = pytest.mark.slow
pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tiny_aesthetic(tmp_path_factory):
    files = make_tiny_aesthetic(tmp_path_factory.mktemp("aesthetic-full"), "actcurate-tiny-clip-full")
    return {"clip_model": str(files["config"]), "clip_weights": str(files["checkpoint"]),
            "head_weights": str(files["head"]), "device": "cpu"}


def test_every_stage_in_one_run(ray_local, tiny_aesthetic, tmp_path):
    models = fm.make_model_dir(tmp_path / "models")
    media.make_video(tmp_path / "in" / "two scenes.mp4", segments=(75, 75), fps=25)
    media.make_zero_byte(tmp_path / "in" / "broken.mp4")
    recipe = build_recipe({"name": "full", "stages": {
        "probe": {"min_duration_s": 1.0},
        "scenes": {"min_clip_s": 2.0, "max_clip_s": 10.0},
        "pose": {"det_model": str(models / "yolox_l.onnx"), "pose_model": str(models / "dw-ll_ucoco_384.onnx"),
                 "min_persons": 1},
        "ocr": {"max_text_boxes": 5},
        "aesthetic": tiny_aesthetic,
        "motion": {},
    }})
    result = run(RunOptions(recipe=recipe, output=str(tmp_path / "out"), input=str(tmp_path / "in"), progress=False))
    assert not result.shards_pending
    rows = clip_rows(str(tmp_path / "out"))
    broken = [r for r in rows if r["video_uri"].endswith("broken.mp4")]
    assert [(r["status"], r["error_stage"]) for r in broken] == [("error", "probe")]
    clips = [r for r in rows if r["video_uri"].endswith("two scenes.mp4")]
    assert [r["scenes_start_frame"] for r in clips] == [0, 75]
    for r in clips:
        assert r["status"] == "accepted", r
        assert r["pose_persons_max"] >= 1 and len(r["pose_keyframe_times"]) > 0
        assert r["ocr_frames"] >= 3 and r["aesthetic_frames"] >= 3 and r["motion_pairs"] >= 1
    throughput = {t["stage"]: t for t in audit(str(tmp_path / "out"))["throughput"]}
    assert all(throughput[s]["count"] == 2 and throughput[s]["seconds"] > 0 for s in ("pose", "ocr", "aesthetic", "motion"))
