"""probe: container and stream facts from PyAV (headers plus the first frame), and the metadata rules."""

from __future__ import annotations

from typing import ClassVar

import av
import pyarrow as pa

from pipeline.clip import Clip
from pipeline.stage import Resources, Stage, StageParams
from pipeline.video import open_video, set_decoder_threads


class ProbeParams(StageParams):
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_short_side: int | None = None
    min_fps: float | None = None
    # Decompression-bomb guard: checked from the headers before any frame is decoded. 8K UHD by default.
    max_pixels: int = 7680 * 4320


def _rate(value) -> float | None:
    return float(value) if value else None


def _ratio(value) -> float | None:
    return float(value) if value and float(value) > 0 else None


class ProbeStage(Stage):
    name = "probe"
    Params = ProbeParams
    resources = Resources(cpus=0.5, batch_size=8)
    columns: ClassVar[dict[str, pa.DataType]] = {
        "probe_container": pa.string(),
        "probe_codec": pa.string(),
        "probe_pix_fmt": pa.string(),
        "probe_duration_s": pa.float64(),
        "probe_fps_avg": pa.float64(),
        "probe_fps_nominal": pa.float64(),
        "probe_variable_frame_rate": pa.bool_(),
        "probe_frame_count": pa.int64(),
        "probe_coded_width": pa.int32(),
        "probe_coded_height": pa.int32(),
        "probe_width": pa.int32(),  # display width: after rotation and sample aspect ratio
        "probe_height": pa.int32(),
        "probe_sample_aspect_ratio": pa.float64(),
        "probe_display_aspect_ratio": pa.float64(),
        "probe_rotation": pa.int32(),
        "probe_bit_rate": pa.int64(),
        "probe_has_audio": pa.bool_(),
        "probe_size_bytes": pa.int64(),
    }
    rules: ClassVar[dict[str, str]] = {
        "no_video_stream": "the file has no video stream (audio only, subtitles, ...)",
        "max_pixels": "a frame has more pixels than max_pixels (decompression-bomb guard)",
        "min_duration": "shorter than min_duration_s",
        "max_duration": "longer than max_duration_s",
        "min_short_side": "display short side below min_short_side pixels",
        "min_fps": "average frame rate below min_fps",
    }

    def process_clip(self, clip: Clip) -> None:
        with open_video(clip.video_uri) as container:
            facts = self._facts(container)
        if facts is None:
            self.reject(clip, "no_video_stream", 0, 1)
            return
        self.set(clip, **facts)
        clip.end_s = facts["duration_s"]
        self._apply_rules(clip, facts)

    def _facts(self, container) -> dict | None:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        ctx = stream.codec_context
        coded_w, coded_h = ctx.width, ctx.height
        facts = {
            "container": container.format.name,
            "codec": ctx.name,
            "pix_fmt": ctx.pix_fmt,
            "coded_width": coded_w,
            "coded_height": coded_h,
            "has_audio": bool(container.streams.audio),
            "bit_rate": ctx.bit_rate or container.bit_rate or None,
            "fps_avg": _rate(stream.average_rate),
            "fps_nominal": _rate(stream.base_rate or stream.guessed_rate),
            "frame_count": stream.frames or None,
        }
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        facts["duration_s"] = duration
        if facts["fps_avg"] is None and facts["frame_count"] and duration > 0:
            facts["fps_avg"] = facts["frame_count"] / duration
        avg, nominal = facts["fps_avg"], facts["fps_nominal"]
        facts["variable_frame_rate"] = bool(avg and nominal and abs(avg - nominal) / nominal > 0.01)
        sar = _ratio(stream.sample_aspect_ratio) or _ratio(ctx.sample_aspect_ratio) or 1.0
        facts["sample_aspect_ratio"] = sar
        # Rotation lives in the display matrix, which FFmpeg hands over with the first decoded frame. The pixel
        # guard runs before that decode, from the headers alone.
        rotation = 0
        if coded_w * coded_h <= self.params.max_pixels:
            set_decoder_threads(stream, 1)  # one frame: more threads would only add their start-up
            first = next(container.decode(stream), None)
            if first is not None:
                rotation = int(round(first.rotation or 0)) % 360
        display_w, display_h = round(coded_w * sar), coded_h
        if rotation in (90, 270):
            display_w, display_h = display_h, display_w
        facts.update(
            rotation=rotation,
            width=display_w,
            height=display_h,
            display_aspect_ratio=(display_w / display_h) if display_h else None,
        )
        facts["size_bytes"] = container.size if container.size and container.size > 0 else None
        return facts

    def _apply_rules(self, clip: Clip, f: dict) -> None:
        p = self.params
        short_side = min(f["width"], f["height"])
        (self.at_most(clip, "max_pixels", f["coded_width"] * f["coded_height"], p.max_pixels)
         and self.at_least(clip, "min_duration", f["duration_s"], p.min_duration_s)
         and self.at_most(clip, "max_duration", f["duration_s"], p.max_duration_s)
         and self.at_least(clip, "min_short_side", short_side, p.min_short_side)
         and self.at_least(clip, "min_fps", f["fps_avg"] or 0.0, p.min_fps))
