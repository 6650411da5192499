"""Opening a video (local path or S3 object) with PyAV, with errors that name the URI's problem."""

from __future__ import annotations

import av

from pipeline.storage import open_input


def open_video(uri: str) -> av.container.InputContainer:
    """Open a local path or S3 object with PyAV; the error names the URI's problem, not PyAV's internals."""
    try:
        return av.open(open_input(uri), metadata_errors="ignore")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {uri}") from None
    except PermissionError:
        raise PermissionError(f"permission denied: {uri}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"is a directory, not a video file: {uri}") from None
    except av.error.FFmpegError as exc:
        raise VideoOpenError(f"not a readable video container ({exc.strerror or exc})") from None


class VideoOpenError(Exception):
    """The file exists but FFmpeg cannot read it as a media container."""
