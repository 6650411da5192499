"""Where a model stage runs, from its one `device: auto|cpu|cuda` parameter, for the two runtimes stages use."""

from __future__ import annotations

from pipeline.errors import UserError


def onnx_providers(device: str, stage: str) -> list[str]:
    """onnxruntime execution providers: CUDA first when asked for (cuda) or available (auto), else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise UserError(f"{stage}.device is cuda but onnxruntime has no CUDAExecutionProvider here (available: "
                        f"{', '.join(available)}); install onnxruntime-gpu or set {stage}.device=auto")
    return ["CPUExecutionProvider"]


def torch_device(device: str, stage: str) -> str:
    """"cuda" or "cpu" for torch: auto takes the GPU when torch sees one."""
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UserError(f"{stage}.device is cuda but torch sees no CUDA device here; run on a GPU node or set "
                        f"{stage}.device=auto")
    return "cpu"
