"""A worker's native threads follow the CPUs the engine gives it: one decoder, OpenCV and onnxruntime thread on a
1-CPU Ray worker (a thread per core there competes with the node's other workers and costs CPU), every core in
process, where stages run one at a time; the rows are the same either way."""

from __future__ import annotations

import os

import av
import cv2
import numpy as np
import pytest

import media
from pipeline.executor import StageRunner, decode_clips, source_row
from pipeline.plan import PlannedVideo
from pipeline.stage import Stage
from pipeline.video import set_decoder_threads
from stages.ocr import OcrStage
from stages.probe import ProbeStage
from stages.scenes import ScenesStage


@pytest.fixture
def opencv_threads():
    before = cv2.getNumThreads()
    yield
    cv2.setNumThreads(before)


def _threads_while_decoding(path, threads: int) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        set_decoder_threads(stream, threads)
        for index, _ in enumerate(container.decode(stream)):
            if index == 10:
                return len(os.listdir("/proc/self/task"))
    raise AssertionError("the video has fewer than 11 frames")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="FFmpeg picks one thread on one core anyway")
def test_one_decoder_thread_starts_no_threads_and_zero_lets_ffmpeg_use_the_cores(tmp_path):
    video = media.make_video(tmp_path / "v.mp4", segments=(40,), fps=25, seed=3)
    alone = len(os.listdir("/proc/self/task"))
    assert _threads_while_decoding(video, 1) == alone
    assert _threads_while_decoding(video, 0) > alone


def test_outside_the_engine_a_stage_leaves_threads_to_its_libraries():
    assert Stage().worker_threads() == 0  # 0: the library's own choice


@pytest.mark.parametrize("worker_cpus, threads", [(0.5, 1), (1.0, 1), (2.0, 2)])
def test_the_engine_sizes_a_workers_threads_to_its_cpus(opencv_threads, worker_cpus, threads):
    runner = StageRunner(OcrStage, {}, worker_cpus=worker_cpus)
    assert runner.stage.worker_threads() == threads
    assert cv2.getNumThreads() == threads
    session = runner.stage._backend.engine.text_det.session.session
    assert session.get_session_options().intra_op_num_threads == threads


def test_scenes_clips_do_not_depend_on_the_workers_threads(opencv_threads, tmp_path):
    video = media.make_video(tmp_path / "cuts.mp4", segments=(50, 70), fps=25, seed=4)
    row = source_row(PlannedVideo(str(video), "vid", "shard-000000", 0))
    runs = []
    for worker_cpus in (1.0, 2.0):
        (probed,) = [r for b in StageRunner(ProbeStage, {}, worker_cpus=worker_cpus).run_rows([row]) for r in b]
        rows = [r for b in StageRunner(ScenesStage, {"keep_fps": 4.0}, worker_cpus=worker_cpus).run_rows([probed])
                for r in b]
        runs.append([clip for r in rows for clip in decode_clips(r["clips"])])
    one, two = runs
    assert len(one) == len(two) == 2  # the cut at frame 50
    for a, b in zip(one, two):
        assert np.array_equal(a.frames, b.frames) and len(a.frames) >= 8
        assert {**a.__dict__, "frames": None, "timings": None} == {**b.__dict__, "frames": None, "timings": None}
