"""aesthetic: the LAION improved aesthetic predictor on a clip's sampled frames (CLIP ViT-L/14 + an MLP head).

Per sampled frame: CLIP ViT-L/14 image embedding (open_clip, OpenAI weights) -> L2-normalised -> the public MLP
head `sac+logos+ava1-l14-linearMSE.pth` (christophschuhmann/improved-aesthetic-predictor) -> a score on the 1-10
scale. Per clip: the per-frame scores, their mean and their minimum. Frames of every clip of a batch go through
the model together, `batch_size` frames per forward pass, on the GPU when there is one.

Both files come from the model registry (`actcurate models pull clip-vit-l-14-openai laion-aesthetic-head`) or
from explicit paths; nothing is downloaded at run time. The preprocessing is open_clip's own eval transform for
the model (ViT-L/14: bicubic resize of the short side to 224, centre crop, CLIP mean/std), so the scores are the
ones the reference code computes on the same frames.

Sources of the defaults:
- 1 frame per second: Cosmos-Curate samples its aesthetic filter at 1 fps (Open-Sora and Data-Juicer score 3
  frames per clip; `max_frames: 3` gives that cost bound).
- `min_aesthetic` off by default (score only): Cosmos-Curate's aesthetic filter is off unless a threshold is
  given, and the published cut-offs depend on the source footage: 3.5 (Cosmos-Curate docs, on the minimum over
  frames), 4.0 (Data-Juicer default), 4.5 (Open-Sora v1.2 on Panda-70M), 4.75 (Open-Sora-Plan), 5.0 (Open-Sora's
  example); Open-Sora's guide reads 5.5 as "fair" and 6.5 as "good". Recipes set it with their source.
- `reduce: mean`: the Open-Sora and Data-Juicer thresholds apply to the mean over frames; Cosmos-Curate's 3.5
  applies to the minimum (`reduce: min`).
- QuickGELU: OpenAI's CLIP was trained with it; open_clip applies it for its own "openai" tag but not when the
  weights come from a file, so the stage forces it (`quick_gelu`).
- 0.25 GPU per worker on CUDA: Cosmos-Curate's share for this filter.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.clip import Clip
from pipeline.devices import torch_device
from pipeline.errors import UserError
from pipeline.stage import FrameRequest, FrameSample, ModelParams, Resources, Stage

CLIP_ARTIFACT = "clip-vit-l-14-openai"
HEAD_ARTIFACT = "laion-aesthetic-head"
# The open_clip architectures the registry's CLIP file fits; any other clip_model needs an explicit clip_weights.
REGISTRY_CLIP_MODELS = ("ViT-L-14", "ViT-L-14-quickgelu")
# The MLP of improved-aesthetic-predictor (train_predictor.py / simple_inference.py): the ReLUs are commented out
# there, so the linearMSE head is five Linear layers with dropouts between the first four. Indices into
# `layers` are the state-dict keys of the public .pth: layers.0, .2, .4, .6, .7.
HEAD_LAYOUT = (("linear", 1024), ("dropout", 0.2), ("linear", 128), ("dropout", 0.2), ("linear", 64),
               ("dropout", 0.1), ("linear", 16), ("linear", 1))


class AestheticParams(ModelParams):
    # open_clip architecture name, or the path of an open_clip model-config JSON (its file stem becomes the name).
    clip_model: str = "ViT-L-14"
    clip_weights: str | None = None  # open_clip checkpoint (.safetensors/.bin/.pt); None: the registry's file
    head_weights: str | None = None  # the MLP head .pth; None: the registry's file
    quick_gelu: bool = True  # OpenAI CLIP weights need QuickGELU (see the module docstring)
    # Frames read: the rate (thinned from what the scenes stage kept, on its grid) and an optional cap per clip
    # (evenly spread). max_side bounds the kept frames' long side: 448 keeps the short side at or above CLIP's
    # 224 input for frames up to 2:1, so 16:9 video is downscaled, never upscaled, by the CLIP transform.
    fps: float = Field(1.0, gt=0)
    max_frames: int | None = Field(None, ge=1)
    max_side: int = Field(448, ge=32)
    batch_size: int = Field(32, ge=1)  # frames per forward pass, across the clips of a batch
    # fp32 on the CPU; on CUDA, auto means fp16 autocast (the reference code runs CLIP in fp16 on GPUs).
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # Rule (None: score only). A clip is rejected when its score (reduce over its frames) is below the threshold.
    min_aesthetic: float | None = None
    reduce: Literal["mean", "min"] = "mean"


class AestheticStage(Stage):
    name = "aesthetic"
    Params = AestheticParams
    # Rows (videos or parts) per call; their clips' frames are batched together.
    resources = Resources(cpus=1.0, batch_size=4)
    actor = True
    columns: ClassVar[dict[str, pa.DataType]] = {
        "aesthetic_score": pa.float64(),  # the value min_aesthetic checks: `reduce` over the frame scores
        "aesthetic_mean": pa.float64(),
        "aesthetic_min": pa.float64(),
        "aesthetic_frame_scores": pa.list_(pa.float32()),  # per scored frame, aligned with aesthetic_frame_times
        "aesthetic_frame_times": pa.list_(pa.float64()),
        "aesthetic_frames": pa.int32(),
    }
    rules: ClassVar[dict[str, str]] = {
        "min_aesthetic": "LAION aesthetic score (mean or min over sampled frames) below min_aesthetic",
    }

    def __init__(self, params: AestheticParams | None = None, context=None):
        super().__init__(params, context)
        self._scorer: _Scorer | None = None

    def frame_request(self) -> FrameRequest:
        return FrameRequest(self.params.fps, self.params.max_side)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def preflight(self) -> None:
        missing = [m for m in ("torch", "torchvision", "open_clip") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"the aesthetic stage needs {', '.join(missing)}: pip install 'actcurate[aesthetic]' "
                            "(torch==2.14.1, torchvision==0.29.1, open_clip_torch==3.3.0)")
        self.model_files()

    def model_files(self) -> tuple[Path, Path]:
        """(CLIP checkpoint, MLP head) through the registry; a UserError names the pull command when missing."""
        p = self.params
        if p.clip_model.endswith(".json") and not Path(p.clip_model).expanduser().is_file():
            raise UserError(f"aesthetic.clip_model names the config file {p.clip_model}, which does not exist")
        if p.clip_weights is None and _model_name(p.clip_model) not in REGISTRY_CLIP_MODELS:
            raise UserError(f"aesthetic.clip_model is {p.clip_model}: the registry holds weights for ViT-L-14 only; "
                            "set aesthetic.clip_weights to the open_clip checkpoint of that model")
        head = self.model_path(HEAD_ARTIFACT, p.head_weights)
        clip = self.model_path(CLIP_ARTIFACT, p.clip_weights)
        return clip, head

    def setup(self) -> None:
        if self._scorer is None:
            clip_path, head_path = self.model_files()
            self._scorer = _Scorer(self.params, clip_path, head_path)

    # -- processing ------------------------------------------------------------------------------------------------
    def process(self, clips: list[Clip]) -> list[Clip]:
        self.setup()
        work = [_Work(clip) for clip in clips if clip.alive]
        self.isolate(work, self._preprocess, clip_of=lambda w: w.clip)
        # one forward pass over every clip's frames; a model failure is retried clip by clip
        self.isolate([w for w in work if w.tensor is not None], self._score, clip_of=lambda w: w.clip)
        return clips

    def _preprocess(self, work: list[_Work]) -> None:
        for w in work:
            w.sample = self.frames(w.clip, max_frames=self.params.max_frames)
            if not w.sample:
                self.set(w.clip, score=None, mean=None, min=None, frames=0, frame_scores=[], frame_times=[])
                if self.params.min_aesthetic is not None:
                    self.reject(w.clip, "no_frames", 0, 1)
                continue
            w.tensor = self._scorer.preprocess(w.sample.images)

    def _score(self, work: list[_Work]) -> None:
        p = self.params
        scores = self._scorer.score([w.tensor for w in work])
        at = 0
        for w in work:
            frame_scores = scores[at:at + len(w.sample)]
            at += len(w.sample)
            if not np.isfinite(frame_scores).all():  # never let a NaN pass a threshold check silently
                raise ValueError(f"non-finite aesthetic scores {frame_scores.tolist()}")
            mean, low = float(np.mean(frame_scores)), float(np.min(frame_scores))
            value = mean if p.reduce == "mean" else low
            self.set(w.clip, score=value, mean=mean, min=low, frames=len(w.sample),
                     frame_scores=[float(s) for s in frame_scores], frame_times=w.sample.times)
            self.at_least(w.clip, "min_aesthetic", value, p.min_aesthetic)


@dataclass
class _Work:
    """One clip's state inside a batch."""

    clip: Clip
    sample: FrameSample | None = None
    tensor: object | None = None


def _model_name(clip_model: str) -> str:
    return Path(clip_model).stem if clip_model.endswith(".json") else clip_model


def build_head(input_size: int):
    """The improved-aesthetic-predictor MLP (linearMSE variant) as a torch module with its state-dict layout."""
    import torch.nn as nn

    layers, width = [], input_size
    for kind, value in HEAD_LAYOUT:
        if kind == "linear":
            layers.append(nn.Linear(width, value))
            width = value
        else:
            layers.append(nn.Dropout(value))

    class AestheticHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(*layers)

        def forward(self, x):
            return self.layers(x)

    return AestheticHead()


def load_head(path: Path):
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"model {HEAD_ARTIFACT} at {path} cannot be read ({str(exc).strip()[:200]}); fetch it again "
                        f"with `actcurate models pull {HEAD_ARTIFACT}`") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    first = state.get("layers.0.weight") if isinstance(state, dict) else None
    if first is None or first.ndim != 2:
        raise UserError(f"model {HEAD_ARTIFACT} at {path} is not the improved-aesthetic-predictor MLP "
                        "(no layers.0.weight)")
    head = build_head(int(first.shape[1]))
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"model {HEAD_ARTIFACT} at {path} does not fit the linearMSE MLP layout "
                        f"768-1024-128-64-16-1: {str(exc).strip()[:300]}") from None
    return head.eval()


class _Scorer:
    """The loaded models (once per worker) and the batched forward pass."""

    def __init__(self, p: AestheticParams, clip_path: Path, head_path: Path):
        import open_clip
        import torch

        self.torch = torch
        name = p.clip_model
        if name.endswith(".json"):
            config = Path(name).expanduser()
            json.loads(config.read_text())  # a clear JSONDecodeError here rather than a silent skip in open_clip
            open_clip.add_model_config(config)
            name = config.stem
        self.device = torch_device(p.device, "aesthetic")
        try:
            model, _, self.transform = open_clip.create_model_and_transforms(
                name, pretrained=str(clip_path), force_quick_gelu=p.quick_gelu)
        except RuntimeError as exc:
            raise UserError(f"aesthetic: the CLIP checkpoint {clip_path} does not fit open_clip model {name} "
                            f"({str(exc).strip()[:300]})") from None
        # Only the image tower is used: CLIP.encode_image(x) is visual(x) (normalised here, below).
        self.visual = model.visual.eval().to(self.device)
        del model
        self.head = load_head(head_path).to(self.device)
        embed = getattr(self.visual, "output_dim", None)
        head_in = self.head.layers[0].in_features
        if embed is not None and embed != head_in:
            raise UserError(f"aesthetic: {name} embeds images in {embed} dimensions but the head expects {head_in}; "
                            "the LAION head needs a ViT-L/14 (768) embedding")
        self.pil_steps, self.tensor_steps = _split_transform(self.transform)
        self.batch_size = p.batch_size
        precision = p.precision
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self.autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def preprocess(self, frames: list[np.ndarray]):
        """open_clip's eval transform on the chosen RGB frames. Its PIL steps (bicubic resize, centre crop) run here,
        per frame; its tensor steps (to float / 255, normalise) run batched on the model's device in score(), with
        the same operations, so the values are identical and only uint8 pixels travel to the device."""
        from PIL import Image

        batch = []
        for i, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"frame {i} is {frame.dtype} {frame.shape}, not uint8 (H, W, 3) RGB")
            image = Image.fromarray(frame)
            if self.pil_steps is None:
                batch.append(self.transform(image))
                continue
            for step in self.pil_steps:
                image = step(image)
            batch.append(self.torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)))
        if self.pil_steps is None:
            return self.torch.stack(batch)
        return self.torch.stack(batch).permute(0, 3, 1, 2)  # (n, 3, S, S) uint8

    def score(self, inputs: list) -> np.ndarray:
        """Scores of every frame of `inputs` (a list of (n, 3, S, S) tensors), batch_size frames at a time."""
        torch = self.torch
        images = torch.cat(inputs)
        out = []
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = images[start:start + self.batch_size].to(self.device, non_blocking=True)
                if self.pil_steps is not None:  # what ToTensor and Normalize do, batched
                    x = x.contiguous().float().div(255)
                    for step in self.tensor_steps:
                        x = step(x)
                if self.autocast_dtype is not None:
                    with torch.autocast(device_type, dtype=self.autocast_dtype):
                        embedding = self.visual(x)
                else:
                    embedding = self.visual(x)
                embedding = torch.nn.functional.normalize(embedding.float(), dim=-1)
                out.append(self.head(embedding).float().squeeze(-1).cpu())
        return torch.cat(out).numpy()


def _split_transform(transform) -> tuple[list | None, list]:
    """open_clip's eval Compose split at its ToTensor step: (PIL steps, tensor steps), when every tensor step is a
    Normalize (true of the CLIP configs); (None, []) otherwise, and the whole transform then runs per frame."""
    steps = list(getattr(transform, "transforms", []))
    for i, step in enumerate(steps):
        if type(step).__name__ in ("MaybeToTensor", "ToTensor"):
            tail = steps[i + 1:]
            if all(type(t).__name__ == "Normalize" for t in tail):
                return steps[:i], tail
            break
    return None, []
