"""A tiny open_clip model and a LAION-layout aesthetic head, written to disk as a user would have the real files."""

from __future__ import annotations

import json
from pathlib import Path

# A ViT small enough to run in milliseconds, with CLIP ViT-L/14's embedding width so the real head's shape fits.
TINY_CONFIG = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
# improved-aesthetic-predictor's linearMSE .pth, key by key (its ReLUs are commented out, so no gaps but dropouts).
LAION_HEAD_SHAPES = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64),
                     "layers.7": (1, 16)}


def make_tiny_aesthetic(root: Path, model_name: str = "actcurate-tiny-clip") -> dict:
    """Config JSON + checkpoint of a random tiny CLIP, and a random head .pth in a models folder."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    config = root / f"{model_name}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True)
    checkpoint = root / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    # The head's state dict written key by key in the public file's layout, independently of the stage's module;
    # weights scaled so scores spread over a few units like real ones.
    generator = torch.Generator().manual_seed(1)
    head_state = {}
    for key, (out_f, in_f) in LAION_HEAD_SHAPES.items():
        head_state[f"{key}.weight"] = torch.randn(out_f, in_f, generator=generator) / in_f**0.5 * 2
        head_state[f"{key}.bias"] = torch.randn(out_f, generator=generator) * 0.1
    head_state["layers.7.bias"] = torch.tensor([5.0])
    models_dir = root / "models"
    models_dir.mkdir()
    head = models_dir / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(head_state, head)
    return {"root": root, "config": config, "checkpoint": checkpoint, "head": head, "models_dir": models_dir,
            "head_state": head_state}
