"""A real moto S3 server in a child process, for tests that need an HTTP endpoint.

In-process ``mock_aws`` cannot serve other processes (workers, pyarrow's C++ S3
client), so this starts ``moto_server`` on 127.0.0.1 and a free port.

    with MotoServer() as s3:
        s3.create_bucket("videos")
        s3.upload("videos", "a.mp4", path)
        subprocess.run(cmd, env={**os.environ, **s3.env})
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> list[str]:
    """The venv's moto_server script if present, else ``python -m moto.server``."""
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # already gone


class MotoServer:
    """Context manager owning one ``moto_server`` process (and its process group)."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables pointing AWS SDKs (and our CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def start(self) -> MotoServer:
        if self._process is not None:
            return self
        # The free port could be taken between probe and bind; retry then.
        for _ in range(3):
            self.port = _free_port()
            self._process = subprocess.Popen(
                _server_command(self.port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() kills children too
            )
            atexit.register(self.stop)  # covers callers that never reach stop()
            if self._wait_until_up():
                return self
            self.stop()
        raise RuntimeError("moto_server did not start")

    def _wait_until_up(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.endpoint_url, timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def client(self):
        """boto3 S3 client for this server (path-style, so no bucket DNS names)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def upload(self, bucket: str, key: str, local_path) -> None:
        self.client().upload_file(str(local_path), bucket, key)


def start_moto_server() -> MotoServer:
    """Started server for fixtures: ``server = start_moto_server(); yield server; server.stop()``."""
    return MotoServer().start()
