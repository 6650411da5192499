"""Synthetic media files for tests, written with PyAV only (no ffmpeg CLI).

Every generator is deterministic: content is a pure function of its arguments and
``seed``, and on one machine the file bytes are identical run after run (x264
mb-tree off, bit-exact muxing).  Each creates missing parent directories, accepts
any path (spaces and non-ASCII names included) and returns the written ``Path``.

Scene layout of ``make_video``: each entry of ``segments`` is one scene of that
many frames.  Scenes differ in hue, brightness, saturation and stripe texture, so
ContentDetector (threshold 27) and AdaptiveDetector see a cut at every cumulative
frame index; inside a scene only a small white square moves.  Cuts closer than
PySceneDetect's ``min_scene_len`` (15 frames by default) are suppressed by it.

Rotation convention: ``rotation`` is the clockwise angle a player must turn the
picture by to show it upright, i.e. the legacy ``rotate`` tag phones write and
OpenCV's ``CAP_PROP_ORIENTATION_META``.  It is stored as the container display
matrix, so on read PyAV reports ``frame.rotation == -rotation`` folded into
[-180, 180] (90 -> -90, 180 -> -180, 270 -> 90); see ``read_rotation``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

AUDIO_RATE = 48_000

# Container (by extension) -> audio codec it accepts.  PCM in AVI: MP3 priming
# delay makes the AVI muxer shift the video by a frame.
_AUDIO_CODEC = {".webm": "libopus", ".avi": "pcm_s16le"}
_DEFAULT_AUDIO_CODEC = "aac"

_BIT_RATE = {"mpeg4": 1_500_000}  # mpeg4's 200 kb/s default smears the scenes

_MATROSKA = {".mkv", ".webm"}

# Without it Matroska writes a random segment UID and the date: files differ per run.
_BITEXACT = {"fflags": "+bitexact"}


def _prepare(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- frames


def _scene_background(index: int, width: int, height: int, seed: int) -> np.ndarray:
    """RGB background of scene ``index``: neighbours differ in every HSV channel."""
    hue = (seed * 37 + index * 68) % 180  # OpenCV hue range is 0..179
    sat = 255 if index % 2 == 0 else 140
    val = 225 if index % 2 == 0 else 95
    hsv = np.empty((height, width, 3), np.uint8)
    hsv[..., 0] = hue
    hsv[..., 1] = sat
    hsv[..., 2] = val
    # Stripes whose period and direction change per scene give each a texture.
    yy, xx = np.mgrid[0:height, 0:width]
    period = 8 + 4 * ((index + seed) % 4)
    direction = (xx, yy, xx + yy)[index % 3]
    hsv[..., 2][(direction // (period // 2)) % 2 == 1] = val * 3 // 4
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _triangle(t: int, span: int) -> int:
    """Position bouncing between 0 and ``span`` (no jumps, so no fake cuts)."""
    if span <= 0:
        return 0
    t %= 2 * span
    return t if t <= span else 2 * span - t


def _draw_square(rgb: np.ndarray, t: int) -> np.ndarray:
    """Small high-contrast white square, moved by ``t`` (a frame index)."""
    height, width = rgb.shape[:2]
    size = max(2, min(width, height) // 5)
    x = _triangle(3 * t, width - size)
    y = _triangle(2 * t, height - size)
    rgb[y : y + size, x : x + size] = 255
    rgb[y + size // 4 : y + 3 * size // 4, x + size // 4 : x + 3 * size // 4] = 0
    return rgb


def _scene_frames(
    segments: Sequence[int], width: int, height: int, seed: int, moving: bool
) -> Iterator[np.ndarray]:
    """RGB frames for consecutive scenes of the given lengths."""
    t = 0
    for index, count in enumerate(segments):
        background = _scene_background(index, width, height, seed)
        for _ in range(count):
            yield _draw_square(background.copy(), t if moving else 0)
            t += 1


# --------------------------------------------------------------------------- encoding


def _codec_options(codec: str, gop: int | None) -> dict[str, str]:
    """Fast encoder settings (tests need small files quickly, not quality).

    With ``gop`` there is a keyframe exactly every ``gop`` frames and none at
    scene cuts.
    """
    if codec == "libx264":
        # mbtree=0: with mb-tree on, x264 (AVX-512 build paths on this CPU) wrote
        # different bytes for identical input in ~5-15% of runs.
        params = "mbtree=0"
        if gop:
            params += f":keyint={gop}:min-keyint={gop}:scenecut=0"
        return {"preset": "veryfast", "x264-params": params}
    if codec == "libvpx-vp9":
        options = {"deadline": "realtime", "cpu-used": "8"}
        if gop:
            options.update(g=str(gop), kf_min_dist=str(gop))
        return options
    return {"g": str(gop), "sc_threshold": "1000000000"} if gop else {}


def _add_video_stream(
    container, codec: str, width: int, height: int, fps, pix_fmt: str, options: dict[str, str]
):
    stream = container.add_stream(codec, rate=fps, options=options)
    stream.width = width
    stream.height = height
    stream.pix_fmt = pix_fmt
    if codec in _BIT_RATE:
        stream.bit_rate = _BIT_RATE[codec]
    return stream


def _encode(container, stream, frame) -> None:
    for packet in stream.encode(frame):
        container.mux(packet)


def _audio_frame(start: int, stop: int, freq: float):
    """Mono sine samples ``start``..``stop`` (absolute sample indices, used as pts)."""
    t = np.arange(start, stop) / AUDIO_RATE
    samples = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = AUDIO_RATE
    frame.pts = start
    return frame


def _segment_of(segments: Sequence[int]) -> list[int]:
    """Scene index of every frame."""
    return [index for index, count in enumerate(segments) for _ in range(count)]


# --------------------------------------------------------------------------- public API


def make_video(
    path,
    *,
    width: int = 320,
    height: int = 240,
    fps=30,
    segments: Sequence[int] = (60,),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    rotation: int | None = None,
    sar: tuple[int, int] | None = None,
    audio: bool = False,
    moving: bool = True,
    seed: int = 0,
    faststart: bool = False,
) -> Path:
    """Write a video whose scene cuts sit at the cumulative sums of ``segments``.

    Container follows the extension (.mp4/.mov/.mkv/.webm/.avi).  ``seed`` changes
    colours/textures only (same layout, different-looking video).  ``faststart``
    moves the mp4 moov atom to the front (see ``make_truncated_copy``).  With
    ``audio`` a mono 48 kHz sine track is added (AAC; Opus in .webm; PCM in .avi)
    whose pitch changes at every scene cut.
    """
    path = _prepare(path)
    ext = path.suffix.lower()
    if rotation not in (None, 0, 90, 180, 270):
        raise ValueError(f"rotation must be 0/90/180/270, got {rotation}")
    if rotation and ext == ".avi":
        raise ValueError("AVI cannot store a display matrix")
    if sar and codec == "libvpx-vp9" and ext in _MATROSKA:
        # PyAV sets only the codec SAR; the Matroska muxer reads AVStream's, VP9 has none.
        raise ValueError("SAR cannot be stored for VP9 in Matroska/WebM with PyAV")

    fps = Fraction(fps).limit_denominator(1001)
    options = {**_BITEXACT, "movflags": "faststart"} if faststart else _BITEXACT
    with av.open(str(path), "w", options=options) as container:
        stream = _add_video_stream(
            container, codec, width, height, fps, pix_fmt, _codec_options(codec, gop)
        )
        if sar:
            stream.codec_context.sample_aspect_ratio = Fraction(*sar)
        if rotation:
            # PyAV's angle is counter-clockwise; ours is the clockwise "rotate" tag.
            stream.set_display_rotation(-rotation)
        audio_stream = None
        if audio:
            audio_codec = _AUDIO_CODEC.get(ext, _DEFAULT_AUDIO_CODEC)
            audio_stream = container.add_stream(audio_codec, rate=AUDIO_RATE, layout="mono")

        scene_of = _segment_of(segments)
        frames = _scene_frames(segments, width, height, seed, moving)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            _encode(container, stream, frame)
            if audio_stream is not None:
                # Audio for the same time span, interleaved with the video.
                start = round(i * AUDIO_RATE / fps)
                stop = round((i + 1) * AUDIO_RATE / fps)
                freq = 220.0 * (1 + scene_of[i] % 4)
                _encode(container, audio_stream, _audio_frame(start, stop, freq))
        _encode(container, stream, None)
        if audio_stream is not None:
            _encode(container, audio_stream, None)
    return path


def make_vfr_video(
    path,
    *,
    width: int = 320,
    height: int = 240,
    frame_times: Sequence[float] | None = None,
    segments_at: Sequence[float] = (1.0, 2.0),
    seed: int = 0,
) -> Path:
    """Variable-frame-rate H.264 video: one frame at each time in ``frame_times`` (s).

    A new scene starts with the first frame at or after each time in ``segments_at``.
    Default times: ~3 s of seeded irregular gaps of 10..100 ms.  Timestamps are
    kept at millisecond precision; the last frame lasts 1/30 s.  In .mkv/.webm the
    reported ``average_rate`` is the nominal 30 (Matroska stores a default
    duration), in .mp4 it is the real average.
    """
    path = _prepare(path)
    if frame_times is None:
        frame_times = default_vfr_times(seed)
    times_ms = [round(t * 1000) for t in frame_times]
    if any(b <= a for a, b in zip(times_ms, times_ms[1:])):
        raise ValueError("frame_times must be strictly increasing (at ms precision)")

    time_base = Fraction(1, 1000)
    with av.open(str(path), "w", options=_BITEXACT) as container:
        stream = _add_video_stream(
            container, "libx264", width, height, 30, "yuv420p", _codec_options("libx264", None)
        )
        stream.codec_context.time_base = time_base
        backgrounds: dict[int, np.ndarray] = {}
        for i, (t, pts) in enumerate(zip(frame_times, times_ms)):
            scene = sum(1 for s in segments_at if t >= s)
            if scene not in backgrounds:
                backgrounds[scene] = _scene_background(scene, width, height, seed)
            frame = av.VideoFrame.from_ndarray(
                _draw_square(backgrounds[scene].copy(), i), format="rgb24"
            )
            frame.pts = pts
            frame.time_base = time_base
            _encode(container, stream, frame)
        _encode(container, stream, None)
    return path


def default_vfr_times(seed: int = 0, seconds: float = 3.0) -> list[float]:
    """Seeded irregular frame times (gaps 10..100 ms, ms-aligned) covering ``seconds``."""
    rng = np.random.default_rng(seed)
    times, t = [], 0
    while t < seconds * 1000:
        times.append(t / 1000)
        t += int(rng.choice([10, 17, 33, 40, 67, 100]))
    return times


def make_one_frame_video(path, *, width: int = 320, height: int = 240) -> Path:
    """H.264 video with exactly one frame."""
    return make_video(path, width=width, height=height, segments=(1,))


def make_audio_only(path, *, seconds: float = 1.0) -> Path:
    """Container holding one 440 Hz audio stream (AAC; Opus in .webm) and no video."""
    path = _prepare(path)
    codec = _AUDIO_CODEC.get(path.suffix.lower(), _DEFAULT_AUDIO_CODEC)
    with av.open(str(path), "w", options=_BITEXACT) as container:
        stream = container.add_stream(codec, rate=AUDIO_RATE, layout="mono")
        _encode(container, stream, _audio_frame(0, round(seconds * AUDIO_RATE), 440.0))
        _encode(container, stream, None)
    return path


def make_image_file(
    path, *, width: int = 320, height: int = 240, fmt: str = "png", seed: int = 0
) -> Path:
    """A real PNG or JPEG (``fmt``), whatever the file's extension says.

    av.open sniffs the content, not the name: it opens as a ``png_pipe`` /
    ``jpeg_pipe`` container with one video stream that decodes to 1 frame.
    """
    path = _prepare(path)
    rgb = _draw_square(_scene_background(0, width, height, seed), 0)
    ok, data = cv2.imencode(f".{fmt}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode image format {fmt!r}")
    path.write_bytes(data.tobytes())  # imencode + write_bytes: safe for any file name
    return path


def make_text_file_as_video(path) -> Path:
    """Plain text in a file named like a video; av.open raises av.InvalidDataError."""
    path = _prepare(path)
    path.write_text("This is not a video.\n" * 20, encoding="utf-8")
    return path


def make_zero_byte(path) -> Path:
    """Empty file; av.open raises av.InvalidDataError."""
    path = _prepare(path)
    path.write_bytes(b"")
    return path


def make_truncated_copy(src, dst, keep_fraction: float = 0.3) -> Path:
    """Copy only the first ``keep_fraction`` of ``src``'s bytes to ``dst``.

    What av.open does depends on where ``src`` keeps its moov atom:
    * moov at the end (``make_video`` default): the index is cut off, so
      av.open raises av.InvalidDataError ("moov atom not found").
    * moov at the front (``make_video(..., faststart=True)``): opens, the stream
      still reports the full frame count, but only frames whose packets lie in
      the kept bytes decode (a handful at 0.3 for the small default videos, since
      the moov and the first keyframe take much of the file); the cut packet is
      flagged ``is_corrupt`` and decoding it raises av.InvalidDataError, so
      ``container.decode(video=0)`` raises after those frames.  If
      ``keep_fraction`` is so small that the front moov itself is cut, av.open
      raises as in the first case.
    """
    dst = _prepare(dst)
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def make_unreadable(path, **video_kwargs) -> Path:
    """Valid video with mode 000.

    For a normal user av.open raises av.PermissionError; as root (or with
    CAP_DAC_OVERRIDE) it opens fine, so check ``unreadable_supported()`` first.
    Restore with ``os.chmod(path, 0o644)`` before deleting if the tests need to.
    """
    path = make_video(path, **{"segments": (10,), **video_kwargs})
    path.chmod(0)
    return path


def unreadable_supported() -> bool:
    """Whether chmod 000 really stops this process from reading a file."""
    tmpdir = tempfile.mkdtemp(prefix="actcurate-perm-")
    probe = Path(tmpdir, "probe")
    try:
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.open("rb").close()
        except PermissionError:
            return True
        return False
    finally:
        probe.chmod(0o600)
        shutil.rmtree(tmpdir)


def make_long_video(
    path,
    seconds: float,
    *,
    fps: int = 25,
    width: int = 320,
    height: int = 180,
    cut_every_s: float | None = None,
    seed: int = 0,
) -> Path:
    """Long low-res H.264 video for memory/speed tests (ultrafast preset).

    With ``cut_every_s`` a new scene starts every that many seconds (rounded to
    whole frames); otherwise it is one moving scene.  Writes 60 s in ~0.5 s.
    Colours are approximate (OpenCV's full-range I420 in a limited-range stream).
    """
    path = _prepare(path)
    total = round(seconds * fps)
    per_scene = max(1, round(cut_every_s * fps) if cut_every_s else total)
    segments = [per_scene] * (total // per_scene)
    if total % per_scene:
        segments.append(total % per_scene)

    with av.open(str(path), "w", options=_BITEXACT) as container:
        stream = _add_video_stream(
            container, "libx264", width, height, fps, "yuv420p", {"preset": "ultrafast"}
        )
        for i, rgb in enumerate(_scene_frames(segments, width, height, seed, moving=True)):
            # OpenCV's I420 conversion is ~9x faster than PyAV's reformat here.
            frame = av.VideoFrame.from_ndarray(
                cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p"
            )
            frame.pts = i
            _encode(container, stream, frame)
        _encode(container, stream, None)
    return path


def write_frames(path, frames, *, fps: int = 30, crf: int | None = None, gop: int | None = None) -> Path:
    """H.264 mp4 of the given RGB frames (an array or any iterable of equal-sized HxWx3 uint8 images); with `gop`
    a keyframe exactly every `gop` frames and none at scene cuts."""
    path = _prepare(path)
    options = {**_codec_options("libx264", gop), **({"crf": str(crf)} if crf is not None else {})}
    with av.open(str(path), "w", options=_BITEXACT) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options=options)
        stream.pix_fmt = "yuv420p"
        for i, rgb in enumerate(frames):
            if i == 0:
                stream.height, stream.width = rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            _encode(container, stream, frame)
        _encode(container, stream, None)
    return path


def cut_frames(segments: Sequence[int]) -> list[int]:
    """Frame indices where ``make_video(segments=...)`` starts a new scene."""
    return list(np.cumsum(segments)[:-1].astype(int))


def read_rotation(path) -> int:
    """Clockwise display rotation (0/90/180/270), the convention ``make_video`` takes."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return (-frame.rotation) % 360
