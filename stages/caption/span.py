"""A clip's own span of its source video, stream-copied (no re-encode) into a small MP4 for Gemini's video input.

The copy starts at the keyframe at or before the clip's start (a stream copy cannot start elsewhere) and ends with
the last packet that decodes before the clip's end, so the file usually holds a little before the clip; Gemini's
`videoMetadata` start/end offsets (relative to the copied file) cut it back to the clip, and its `fps` says how
densely to sample. Only the video track is copied: the captions describe what is seen, and audio costs tokens.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import av

from pipeline.video import open_video, remux_to_mp4


class SpanError(Exception):
    """The clip's span cannot be copied out of its source (no video track, no keyframe, nothing in the span)."""


@dataclass
class Span:
    """The copied file and where the clip lies in it."""

    data: bytes  # an MP4 holding the video track from `copy_start_s` (source time) on
    copy_start_s: float  # source time of the copied file's first frame (the keyframe)
    start_offset_s: float  # the clip's start, in the copied file's time
    end_offset_s: float
    fps: float  # frames a second Gemini samples
    digest: str  # of the bytes and the metadata: the call records' frames hash for this input

    def metadata(self) -> dict:
        """Gemini's videoMetadata (durations as the API writes them: "1.250s")."""
        return {"startOffset": f"{self.start_offset_s:.3f}s", "endOffset": f"{self.end_offset_s:.3f}s",
                "fps": self.fps}

    def record(self) -> dict:
        """What the manifest keeps of what was sent (not the bytes)."""
        return {"copy_start_s": self.copy_start_s, "start_offset_s": self.start_offset_s,
                "end_offset_s": self.end_offset_s, "fps": self.fps, "bytes": len(self.data)}


def copy_span(uri: str, start_s: float, end_s: float, fps: float) -> Span:
    """Remux the packets of [keyframe at or before start_s, end_s) of the first video track into an MP4 in memory.

    Packets are taken in decode order until one's decode time reaches end_s: every frame shown before end_s
    decodes no later than it is shown, so it and every frame it references are in the copy."""
    with open_video(uri) as source:
        if not source.streams.video:
            raise SpanError(f"{uri} has no video track to copy")
        stream = source.streams.video[0]
        base = stream.time_base
        source.seek(max(0, int(start_s / base)), stream=stream, backward=True, any_frame=False)
        packets, first_key = [], None
        for packet in source.demux(stream):
            if packet.dts is None and packet.pts is None:
                continue  # a flush packet
            dts = packet.dts if packet.dts is not None else packet.pts
            if first_key is None:
                if not packet.is_keyframe or packet.pts is None:
                    continue  # a copy starts at a keyframe (the seek lands on one, or before it)
                first_key = packet.pts
            if dts * base >= end_s:
                break
            packets.append(packet)
        if not packets:
            raise SpanError(f"no video packets between {start_s:.3f} s and {end_s:.3f} s of {uri}")
        copy_start = float(first_key * base)
        data = remux_to_mp4(stream, packets, first_key)  # the copy starts at 0: the offsets are the file's times
    start_offset = max(0.0, start_s - copy_start) + _file_start(data)
    end_offset = start_offset + (end_s - max(start_s, copy_start))
    meta = {"start": round(start_offset, 3), "end": round(end_offset, 3), "fps": fps}
    digest = hashlib.sha256(data + json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return Span(data, round(copy_start, 6), round(start_offset, 3), round(end_offset, 3), fps, digest)


def _file_start(data: bytes) -> float:
    """Where the copied file's presentation starts, as FFmpeg reads it back (an edit list may shift it from 0)."""
    with av.open(io.BytesIO(data)) as copy:
        stream = copy.streams.video[0]
        start = stream.start_time
        return float(start * stream.time_base) if start is not None else 0.0


__all__ = ["Span", "SpanError", "copy_span"]
