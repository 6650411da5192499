"""Checks that the synthetic media in tests/media.py is what it claims to be."""

from __future__ import annotations

import socket
from fractions import Fraction

import av
import cv2
import numpy as np
import pyarrow.fs
import pytest
from scenedetect import FrameTimecode, detect
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from media import (
    cut_frames,
    default_vfr_times,
    make_audio_only,
    make_image_file,
    make_long_video,
    make_one_frame_video,
    make_text_file_as_video,
    make_truncated_copy,
    make_unreadable,
    make_video,
    make_vfr_video,
    make_zero_byte,
    read_rotation,
    unreadable_supported,
)
from s3server import MotoServer, start_moto_server

ODD_NAME = "clip ünïcødé 1"


@pytest.fixture
def media_dir(tmp_path):
    """Directory (not yet created) whose name has spaces and non-ASCII characters."""
    return tmp_path / "sub dir ß"


def scene_starts(path, detector) -> list[FrameTimecode]:
    return [start for start, _ in detect(str(path), detector, backend="pyav")]


def detected_cuts(path, detector) -> list[int]:
    return [start.frame_num for start in scene_starts(path, detector)[1:]]


def decoded_frames(path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


# --------------------------------------------------------------------------- make_video


def test_default_video(media_dir):
    path = make_video(media_dir / f"{ODD_NAME}.mp4")
    assert path.exists() and path.parent == media_dir
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 320, 240)
        assert stream.average_rate == 30
        assert not container.streams.audio
    assert len(decoded_frames(path)) == 60
    assert detected_cuts(path, ContentDetector()) == []


@pytest.mark.parametrize(
    "ext, codec",
    [("mp4", "libx264"), ("mkv", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4"), ("mp4", "mpeg4")],
)
def test_scene_cuts_per_codec_and_container(media_dir, ext, codec):
    segments = (30, 30, 30)
    path = make_video(media_dir / f"{ODD_NAME}.{ext}", codec=codec, segments=segments, audio=True)
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 30
        assert len(container.streams.audio) == 1
    assert len(decoded_frames(path)) == 90
    assert detected_cuts(path, ContentDetector()) == cut_frames(segments) == [30, 60]
    assert detected_cuts(path, AdaptiveDetector()) == [30, 60]


def test_uneven_segments_and_size(media_dir):
    path = make_video(media_dir / "a.mp4", width=160, height=120, segments=(20, 45, 15, 25))
    frames = decoded_frames(path)
    assert len(frames) == 105
    assert (frames[0].width, frames[0].height) == (160, 120)
    assert detected_cuts(path, ContentDetector()) == [20, 65, 80]


def test_ntsc_fps(media_dir):
    path = make_video(media_dir / "a.mp4", fps=Fraction(30000, 1001), segments=(30, 30))
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
    assert detected_cuts(path, ContentDetector()) == [30]


def test_pix_fmt(media_dir):
    path = make_video(media_dir / "a.mkv", pix_fmt="yuv444p", segments=(10,))
    assert decoded_frames(path)[0].format.name == "yuv444p"


def test_moving_controls_motion_within_scene(media_dir):
    def max_step(path) -> float:
        frames = [f.to_ndarray(format="gray").astype(int) for f in decoded_frames(path)]
        return max(np.abs(a - b).mean() for a, b in zip(frames, frames[1:]))

    moving = make_video(media_dir / "moving.mp4", segments=(20,))
    still = make_video(media_dir / "still.mp4", segments=(20,), moving=False)
    assert max_step(moving) > 1.0
    assert max_step(still) < 0.5


def test_deterministic_and_seeded(media_dir):
    first = make_video(media_dir / "1.mp4", segments=(20, 20), audio=True)
    again = make_video(media_dir / "2.mp4", segments=(20, 20), audio=True)
    other = make_video(media_dir / "3.mp4", segments=(20, 20), audio=True, seed=1)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


@pytest.mark.parametrize("codec, ext", [("libx264", "mp4"), ("mpeg4", "avi"), ("libvpx-vp9", "webm")])
def test_gop_gives_regular_keyframes(media_dir, codec, ext):
    path = make_video(media_dir / f"a.{ext}", codec=codec, gop=12, segments=(30, 30))
    keyframes = [i for i, f in enumerate(decoded_frames(path)) if f.key_frame]
    assert keyframes == [0, 12, 24, 36, 48]


# PyAV reports the counter-clockwise angle in [-180, 180]; OpenCV the clockwise one.
@pytest.mark.parametrize("rotation, pyav_angle", [(0, 0), (90, -90), (180, -180), (270, 90)])
def test_rotation_in_display_matrix(media_dir, rotation, pyav_angle):
    path = make_video(media_dir / f"{ODD_NAME}.mp4", rotation=rotation, segments=(5,))
    assert decoded_frames(path)[0].rotation == pyav_angle
    assert read_rotation(path) == rotation
    capture = cv2.VideoCapture(str(path))
    try:
        assert capture.get(cv2.CAP_PROP_ORIENTATION_META) == rotation
    finally:
        capture.release()


@pytest.mark.parametrize("ext, codec", [("mov", "libx264"), ("mkv", "libx264"), ("webm", "libvpx-vp9")])
def test_rotation_other_containers(media_dir, ext, codec):
    path = make_video(media_dir / f"a.{ext}", codec=codec, rotation=90, segments=(5,))
    assert read_rotation(path) == 90


def test_rotation_rejected_where_unstorable(media_dir):
    with pytest.raises(ValueError):
        make_video(media_dir / "a.avi", codec="mpeg4", rotation=90)
    with pytest.raises(ValueError):
        make_video(media_dir / "a.mp4", rotation=45)


@pytest.mark.parametrize(
    "ext, codec, codec_level",
    [("mp4", "libx264", True), ("mkv", "libx264", True), ("avi", "mpeg4", True), ("mp4", "libvpx-vp9", False)],
)
def test_sample_aspect_ratio(media_dir, ext, codec, codec_level):
    path = make_video(media_dir / f"a.{ext}", codec=codec, sar=(4, 3), segments=(5,))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.sample_aspect_ratio == Fraction(4, 3)
        # VP9 has no SAR field in its bitstream: only the mp4 'pasp' box has it.
        if codec_level:
            assert stream.codec_context.sample_aspect_ratio == Fraction(4, 3)
            assert stream.display_aspect_ratio == Fraction(16, 9)
    assert decoded_frames(path)[0].width == 320  # stored size, not display size


def test_sar_rejected_for_vp9_in_matroska(media_dir):
    with pytest.raises(ValueError):
        make_video(media_dir / "a.webm", codec="libvpx-vp9", sar=(4, 3))


# --------------------------------------------------------------------------- VFR


def test_vfr_default_timestamps_and_scenes(media_dir):
    path = make_vfr_video(media_dir / f"{ODD_NAME}.mp4")
    expected = default_vfr_times()
    times = [f.time for f in decoded_frames(path)]
    assert times == pytest.approx(expected, abs=1e-3)
    assert len(set(np.round(np.diff(times), 3))) > 3  # really irregular
    starts = [t.seconds for t in scene_starts(path, ContentDetector())]
    first_at_or_after = [min(t for t in expected if t >= s) for s in (1.0, 2.0)]
    assert starts[1:] == pytest.approx(first_at_or_after, abs=1e-3)


def test_vfr_custom_times(media_dir):
    frame_times = [0.0, 0.05, 0.06, 0.2, 0.21, 0.5, 0.9, 0.95, 1.4, 1.41]
    path = make_vfr_video(media_dir / "a.mkv", width=160, height=120, frame_times=frame_times)
    frames = decoded_frames(path)
    assert [f.time for f in frames] == pytest.approx(frame_times, abs=1e-3)
    assert (frames[0].width, frames[0].height) == (160, 120)


# --------------------------------------------------------------------------- odd and bad files


def test_one_frame_video(media_dir):
    path = make_one_frame_video(media_dir / f"{ODD_NAME}.mp4")
    assert len(decoded_frames(path)) == 1


def test_audio_only(media_dir):
    path = make_audio_only(media_dir / f"{ODD_NAME}.mp4")
    with av.open(str(path)) as container:
        assert not container.streams.video
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
        assert container.duration / av.time_base == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("fmt, demuxer, codec", [("png", "png_pipe", "png"), ("jpg", "jpeg_pipe", "mjpeg")])
def test_image_named_as_video(media_dir, fmt, demuxer, codec):
    path = make_image_file(media_dir / f"{ODD_NAME}.mp4", fmt=fmt)
    with av.open(str(path)) as container:
        assert container.format.name == demuxer
        assert container.streams.video[0].codec_context.name == codec
    frames = decoded_frames(path)
    assert [(f.width, f.height) for f in frames] == [(320, 240)]


@pytest.mark.parametrize("maker", [make_text_file_as_video, make_zero_byte])
def test_non_media_fails_to_open(media_dir, maker):
    path = maker(media_dir / f"{ODD_NAME}.mp4")
    with pytest.raises(av.InvalidDataError):
        av.open(str(path))


def test_truncated_moov_at_end_fails_to_open(media_dir):
    src = make_video(media_dir / "src.mp4", segments=(30, 30))
    dst = make_truncated_copy(src, media_dir / f"{ODD_NAME}.mp4")
    assert dst.stat().st_size == int(src.stat().st_size * 0.3)
    with pytest.raises(av.InvalidDataError):
        av.open(str(dst))


def test_truncated_faststart_is_partially_decodable(media_dir):
    src = make_video(media_dir / "src.mp4", segments=(30, 30), faststart=True)
    dst = make_truncated_copy(src, media_dir / "cut.mp4", keep_fraction=0.5)
    decoded = 0
    with av.open(str(dst)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 60  # the index still describes the whole video
        with pytest.raises(av.InvalidDataError):
            for packet in container.demux(stream):
                decoded += len(stream.decode(packet))
    assert 0 < decoded < 60


def test_unreadable(media_dir):
    path = make_unreadable(media_dir / f"{ODD_NAME}.mp4")
    try:
        assert path.stat().st_mode & 0o777 == 0
        if unreadable_supported():
            with pytest.raises(PermissionError):
                av.open(str(path))
        else:  # e.g. root: permission bits are not enforced
            assert len(decoded_frames(path)) == 10
    finally:
        path.chmod(0o644)


def test_long_video(media_dir):
    path = make_long_video(media_dir / f"{ODD_NAME}.mp4", 20, cut_every_s=5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (320, 180, 25)
        assert stream.frames == 500
        assert container.duration / av.time_base == pytest.approx(20, abs=0.1)
    assert detected_cuts(path, ContentDetector()) == [125, 250, 375]


# --------------------------------------------------------------------------- S3 server


@pytest.fixture(scope="module")
def s3():
    server = start_moto_server()
    yield server
    server.stop()


def test_s3_env(s3):
    assert s3.endpoint_url.startswith("http://127.0.0.1:")
    assert s3.env["AWS_ENDPOINT_URL"] == s3.endpoint_url
    assert s3.env["AWS_ACCESS_KEY_ID"] == s3.env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert s3.env["AWS_DEFAULT_REGION"] == s3.env["AWS_REGION"] == "us-east-1"


def test_s3_round_trip_with_boto3_and_pyarrow(s3, media_dir):
    video = make_video(media_dir / f"{ODD_NAME}.mp4", segments=(5,))
    s3.create_bucket("videos")
    s3.upload("videos", f"raw/{video.name}", video)

    body = s3.client().get_object(Bucket="videos", Key=f"raw/{video.name}")["Body"].read()
    assert body == video.read_bytes()

    fs = pyarrow.fs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        endpoint_override=s3.endpoint_url,
        scheme="http",
        region="us-east-1",
    )
    with fs.open_input_file(f"videos/raw/{video.name}") as remote:
        assert remote.read() == video.read_bytes()


def test_moto_server_stops_on_error():
    with pytest.raises(RuntimeError, match="boom"):
        with MotoServer() as server:
            server.create_bucket("scratch")
            raise RuntimeError("boom")
    with pytest.raises(OSError):  # connection refused: nothing listens any more
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
