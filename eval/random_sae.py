"""Random-weight SAE folders in the trained-SAE format, for measuring the evals before (or without)
training: the eval cost depends on shapes, not on what the weights learned."""
from __future__ import annotations

from pathlib import Path

import torch

from fc_base.sae_folder import WEIGHTS_FILE, SAEMeta


def write_random_sae(folder: str | Path, *, trainer: str, seed: int, d_in: int, d_sae: int,
                     model_name: str, layer: int, architecture: str = "topk", k: int | None = 8,
                     model_source: str = "auto", input_scale: float = 1.0, hook: str = "hook_resid_post") -> Path:
    """Write ``sae_weights.safetensors`` and ``sae_meta.json`` (last) with random weights.

    ``input_scale`` mimics a folded input normalisation: decoder rows get that norm and the encoder
    is divided by it, as trainers do when they fold the scale into the weights. ``hook`` is the kind of
    hook of block ``layer`` the folder says it reads (``hook_resid_post``, ``hook_mlp_out``,
    ``hook_attn_out``): the evals splice the SAE in there."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    W_dec_SD = torch.randn(d_sae, d_in, generator=gen)
    W_dec_SD = W_dec_SD / W_dec_SD.norm(dim=1, keepdim=True) * input_scale
    weights = {
        "W_enc": (W_dec_SD.T / input_scale**2).contiguous(),
        "W_dec": W_dec_SD.contiguous(),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d_in),
    }
    if architecture == "jumprelu":
        weights["threshold"] = torch.full((d_sae,), 0.1)
    save_file(weights, str(folder / WEIGHTS_FILE))
    SAEMeta(name=folder.name, trainer=trainer, seed=seed, architecture=architecture,
            k=k if architecture == "topk" else None, d_in=d_in, d_sae=d_sae, model_name=model_name,
            model_source=model_source, layer=layer, hook_name=f"blocks.{layer}.{hook}", train_tokens=0,
            l0_target=k, final_l0=None, norm_scale=input_scale).write(folder)
    return folder
