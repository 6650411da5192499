"""Clip files for `actcurate export`: the manifest's span cut out of its source video with PyAV (imported only here).

A clip's span is the truth: the frames whose start times lie in [start_s, end_s), as the scenes stage tiled them.
- `encode`: decode from the keyframe before the span, keep the span's frames, re-encode them (H.264, fixed options,
  one encoder thread, bit-exact MP4), keeping each frame's time relative to the span start (variable rates stay).
- `copy`: stream-copy the span's packets, without re-encoding, where that gives exactly the span: the span starts on
  a keyframe, no packet of the span depends on one outside it, and the packets are the span's frame count.
  Otherwise that clip is re-encoded; the method used is reported per clip.
Video only: audio is not exported. The display rotation is kept; an odd width or height loses its last pixel
column or row when re-encoded (4:2:0 needs even sizes).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av

from pipeline.video import open_video, remux_to_mp4

# Fixed encoder settings: same input, same bytes (mbtree off and one thread, see tests/media.py on x264's
# run-to-run differences); crf 18 keeps the clip visually close to its source.
ENCODER = "libx264"
ENCODER_OPTIONS = {"preset": "veryfast", "crf": "18", "x264-params": "mbtree=0:threads=1"}
BITEXACT = {"fflags": "+bitexact"}  # no creation time, no encoder version string in the container


@dataclass
class ClipFile:
    data: bytes
    method: str  # copy | encode
    frames: int
    note: str = ""  # why a copy fell back to encoding


def cut_clip(uri: str, start_s: float, end_s: float, method: str, expected_frames: int | None = None) -> ClipFile:
    if method == "copy":
        copied, why = _copy(uri, start_s, end_s, expected_frames)
        if copied is not None:
            return copied
        encoded = _encode(uri, start_s, end_s)
        encoded.note = why
        return encoded
    return _encode(uri, start_s, end_s)


def _half_frame(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return 0.5 / float(rate)


def _seek(container, stream, start_s: float) -> None:
    """To the keyframe at or before start_s (PyAV seeks backward to a keyframe)."""
    if start_s > 0 and stream.time_base:
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True, any_frame=False)


def _span_frames(container, stream, start_s: float, end_s: float):
    half = _half_frame(stream)
    for frame in container.decode(stream):
        t = frame.time
        if t is None:
            continue
        if t >= end_s - half:
            return
        if t >= start_s - half:
            yield frame


def _encode(uri: str, start_s: float, end_s: float) -> ClipFile:
    buf = io.BytesIO()
    frames = 0
    with open_video(uri) as src:
        stream = src.streams.video[0]
        _seek(src, stream, start_s)
        with av.open(buf, "w", format="mp4", options=BITEXACT) as out:
            ostream = None
            first_pts = None
            for frame in _span_frames(src, stream, start_s, end_s):
                if ostream is None:
                    ostream = out.add_stream(ENCODER, options=ENCODER_OPTIONS)
                    ostream.width, ostream.height = frame.width - frame.width % 2, frame.height - frame.height % 2
                    ostream.pix_fmt = "yuv420p"
                    ostream.codec_context.time_base = stream.time_base
                    ostream.time_base = stream.time_base
                    ostream.codec_context.flags |= av.codec.context.Flags.bitexact
                    if frame.rotation:
                        ostream.set_display_rotation(frame.rotation)
                    first_pts = frame.pts
                image = frame.reformat(width=ostream.width, height=ostream.height, format="yuv420p")
                image.pts = frame.pts - first_pts
                image.time_base = stream.time_base
                for packet in ostream.encode(image):
                    out.mux(packet)
                frames += 1
            if ostream is None:
                raise ValueError(f"no frames in [{start_s:.3f}, {end_s:.3f}) s of {uri}")
            for packet in ostream.encode(None):
                out.mux(packet)
    return ClipFile(buf.getvalue(), "encode", frames)


def _copy(uri: str, start_s: float, end_s: float, expected_frames: int | None) -> tuple[ClipFile | None, str]:
    with open_video(uri) as src:
        stream = src.streams.video[0]
        tb = stream.time_base
        half = _half_frame(stream)
        _seek(src, stream, start_s)
        collected = []
        for packet in src.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue  # the demuxer's flush packet; a packet without a time cannot be placed
            if collected and packet.is_keyframe and packet.pts * tb >= end_s - half:
                break  # the next GOP starts after the span
            collected.append(packet)
        if not collected or not collected[0].is_keyframe:
            return None, "no keyframe found before the span"
        key = collected[0]
        if abs(float(key.pts * tb) - start_s) >= half:
            return None, "the span does not start on a keyframe"
        inside = [float(p.pts * tb) < end_s - half for p in collected]
        n_inside = sum(inside)
        # the span's packets must come first in decode order: then none of them references a packet left out
        if not all(inside[:n_inside]) or min(p.pts for p in collected) < key.pts:
            return None, "frames of the span depend on frames outside it"
        if expected_frames is not None and n_inside != expected_frames:
            return None, f"{n_inside} packets for {expected_frames} frames"
        data = remux_to_mp4(stream, collected[:n_inside], key.pts)
    return ClipFile(data, "copy", n_inside), ""
