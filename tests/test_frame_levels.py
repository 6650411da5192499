"""Per-stage frame requests: the scenes stage keeps each later stage's frames at that stage's own size and rate
(requests of one size share one level), so a clip holds what its readers asked for, not one union at the largest
size and the highest rate; the frames travel through the engine's rows and are dropped after the last reader."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

import media
from pipeline.clip import Clip, FrameLevel
from pipeline.executor import StageRunner, decode_clips, encode_row
from pipeline.recipe import build_recipe
from pipeline.stage import FrameRequest, Stage
from stages.probe import ProbeStage
from stages.scenes import ScenesParams, ScenesStage

WIDTH, HEIGHT = 320, 240


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    # two scenes (2 s and 1.5 s at 30 fps): clips of different lengths
    return media.make_video(tmp_path_factory.mktemp("levels") / "two.mp4", width=WIDTH, height=HEIGHT,
                            segments=(60, 45), fps=30)


def decoded(path, scenes_params: ScenesParams) -> list[Clip]:
    clips = ProbeStage().process([Clip(video_id="v", video_uri=str(path), shard_id="s")])
    return list(ScenesStage(scenes_params).iter_process(clips))


def frame_size(max_side: int) -> tuple[int, int]:
    """(height, width) of a kept 4:3 frame whose long side is max_side (even sides)."""
    scale = min(1.0, max_side / WIDTH)
    return round(HEIGHT * scale / 2) * 2, round(WIDTH * scale / 2) * 2


@pytest.fixture(scope="module")
def recipe_run(video):
    # ocr and aesthetic ask for the same size (one shared level at the higher rate), motion for a smaller one
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {},
                                      "ocr": {"fps": 1, "max_side": 320},
                                      "aesthetic": {"fps": 2, "max_side": 320},
                                      "motion": {"fps": 5, "working_side": 160}}})
    stages = {s.name: s.build() for s in recipe.stages}
    return stages, decoded(video, stages["scenes"].params)


def test_the_recipe_asks_for_one_level_per_size(recipe_run):
    stages, _ = recipe_run
    assert stages["scenes"].keep_requests() == [FrameRequest(5, 160), FrameRequest(2, 320)]


def test_each_stage_reads_frames_at_its_own_size_and_rate(recipe_run, video):
    stages, clips = recipe_run
    assert len(clips) == 2 and all(len(c.frame_levels) == 2 for c in clips)
    # what each stage reads is exactly what a scenes stage keeping only that stage's request would hand it
    alone = {name: decoded(video, ScenesParams(keep_fps=r.fps, keep_max_side=r.max_side))
             for name, r in {"motion": FrameRequest(5, 160), "ocr": FrameRequest(1, 320)}.items()}
    for k, clip in enumerate(clips):
        for name, rate, side in (("ocr", 1, 320), ("aesthetic", 2, 320), ("motion", 5, 160)):
            sample = stages[name].frames(clip)
            assert {image.shape for image in sample.images} == {(*frame_size(side), 3)}, name
            steps = np.diff(sample.times)
            assert len(sample) >= 2 and steps.min() >= 1 / rate - 1e-6 and steps.max() < 1 / rate + 1 / 30 + 1e-6
            assert sample.times == [clip.frame_times[i] for i in sample.indices]  # indices into the kept times
            if name in alone:
                single = alone[name][k]
                assert sample.times == single.frame_times
                assert all(np.array_equal(a, b) for a, b in zip(sample.images, single.frames))
        # the manifest's kept times are every kept frame's, and each reader's times are among them
        assert clip.columns["scenes_kept_frame_times"] == clip.frame_times
        assert sorted(set(clip.frame_times)) == clip.frame_times


def test_kept_bytes_are_the_sum_over_levels_not_the_union(recipe_run):
    _, clips = recipe_run
    small, large = (np.prod(frame_size(side)) * 3 for side in (160, 320))
    for clip in clips:
        seconds = clip.end_s - clip.start_s
        counts = {level.max_side: len(level.indices) for level in clip.frame_levels}
        assert counts == {160: round(seconds * 5), 320: round(seconds * 2)}
        assert clip.frame_bytes == counts[160] * small + counts[320] * large
        union = round(seconds * 5) * large  # the old way: the highest rate at the largest size, for every stage
        assert clip.frame_bytes <= 0.65 * union
        # the kept times are both grids' (0.5 s lies on the 2 fps grid only)
        assert len(clip.frame_times) == len({*clip.frame_times}) > counts[160]


def test_a_recipe_that_fixes_keep_fps_keeps_one_level(video):
    recipe = build_recipe({"stages": {"probe": {}, "scenes": {"keep_fps": 2},
                                      "ocr": {"fps": 1, "max_side": 320}, "motion": {"fps": 5, "working_side": 160}}})
    (clip, _) = decoded(video, recipe.stages[1].params)
    assert clip.frame_levels == [] and clip.frames.shape == (4, *frame_size(320), 3)


def test_a_frame_chosen_by_another_stage_comes_from_a_level_that_holds_it():
    small = np.zeros((2, 4, 4, 3), np.uint8)
    large = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 11, 12)])
    clip = Clip(video_id="v", video_uri="/v", shard_id="s", frame_times=[0.0, 0.2, 0.4],
                frame_levels=[FrameLevel(4, [0, 2], small), FrameLevel(8, [0, 1, 2], large)])
    assert clip.frame_image(0, 4).shape == (4, 4, 3)  # the level of the asked size
    assert clip.frame_image(1, 4)[0, 0, 0] == 11  # only the large level holds it (the captioner's pose keyframes)
    assert clip.frame_image(2).shape == (8, 8, 3)  # no size asked: the largest
    with pytest.raises(IndexError, match="in no level"):
        clip.frame_image(3)


class _Reader(Stage):
    """Records what it reads, as a later stage in the engine would."""

    name = "reader"
    columns: ClassVar[dict[str, pa.DataType]] = {"reader_shape": pa.list_(pa.int32()),
                                                 "reader_times": pa.list_(pa.float64())}

    def frame_request(self) -> FrameRequest:
        return FrameRequest(2, 160)

    def process_clip(self, clip: Clip) -> None:
        sample = self.frames(clip)
        self.set(clip, shape=list(sample.images[0].shape), times=sample.times)


def test_levels_travel_through_the_engine_rows_and_are_dropped_after_the_last_reader(video):
    (row,) = [r for b in StageRunner(ProbeStage, {}).run_rows([encode_row("s", "v", 0, True, [
        Clip(video_id="v", video_uri=str(video), shard_id="s")])]) for r in b]
    levels = [{"fps": 2, "max_side": 160}, {"fps": 1, "max_side": 320}]
    scenes_rows = [r for b in StageRunner(ScenesStage, {"keep_levels": levels}).run_rows([row]) for r in b]
    carried = [c for r in scenes_rows for c in decode_clips(r["clips"])]
    assert [sorted(lv.max_side for lv in c.frame_levels) for c in carried] == [[160, 320]] * 2
    out = [r for b in StageRunner(_Reader, {}, strip_frames=True).run_rows(scenes_rows) for r in b]
    clips = [c for r in out for c in decode_clips(r["clips"])]
    for clip, before in zip(clips, carried):
        assert clip.columns["reader_shape"] == [*frame_size(160), 3]
        assert clip.columns["reader_times"] == [before.frame_times[i] for i in before.frame_levels[0].indices]
        assert clip.frame_bytes == 0 and clip.frame_levels == [] and clip.frames is None



def test_a_level_is_dropped_after_the_last_stage_that_reads_its_size(video):
    """ocr reads the 320 level and motion the 160 one: after ocr only motion's frames travel on, after motion none."""
    from pipeline.executor import stage_runner_args

    recipe = build_recipe({"stages": {"probe": {}, "scenes": {},
                                      "ocr": {"fps": 1, "max_side": 320, "max_text_boxes": None,
                                              "max_subtitle_frames": None, "max_overlay_area": None},
                                      "motion": {"fps": 5, "working_side": 160, "min_flow": None}}})
    args = stage_runner_args(recipe)
    assert [a["keep_frame_sides"] for a in args] == [[160, 320], [160, 320], [160], []]
    rows = [encode_row("s", "v", 0, True, [Clip(video_id="v", video_uri=str(video), shard_id="s")])]
    levels_after = {}
    for spec, runner_args in zip(recipe.stages, args):
        rows = [r for b in StageRunner(**runner_args).run_rows(rows) for r in b]
        clips = [c for r in rows for c in decode_clips(r["clips"])]
        assert all(c.alive for c in clips), [(c.reject_rule, c.error_message) for c in clips]
        levels_after[spec.name] = [sorted(level.max_side for level in c.frame_levels) for c in clips]
    assert levels_after["scenes"] == [[160, 320]] * 2
    assert levels_after["ocr"] == [[160]] * 2
    assert levels_after["motion"] == [[]] * 2
    assert all(c.columns["motion_pairs"] > 0 for c in clips)  # motion still read its frames


def test_every_level_is_kept_until_a_stage_that_may_read_any_level_has_run():
    """The captioner may send pose's keyframes, from pose's level: nothing is dropped before it."""
    from pipeline.executor import stage_runner_args

    recipe = build_recipe({"stages": {"probe": {}, "scenes": {}, "ocr": {"max_side": 320},
                                      "caption": {"ground_on_pose": False}}})
    sides = {spec.name: args["keep_frame_sides"] for spec, args in zip(recipe.stages, stage_runner_args(recipe))}
    assert sides["ocr"] is None
    assert sides["caption"] == []
