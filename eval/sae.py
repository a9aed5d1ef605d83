"""Trained SAE folders as SAE-Bench custom SAEs.

The folder schema (file names, ``sae_meta.json``) is owned by :mod:`fc_base.sae_folder` and
re-exported here.  :class:`FolderSAE` implements the project's encoding rule for every
architecture (topk, relu, jumprelu) on raw model activations.
"""
from __future__ import annotations

from pathlib import Path

import fc_base  # noqa: F401  (Hugging Face environment before torch/transformers imports)
import torch
from sae_bench.custom_saes.base_sae import BaseSAE

from fc_base.sae_folder import (ARCHITECTURES, META_FILE, WEIGHTS_FILE, SAEFolderError, SAEMeta,  # noqa: F401
                                list_sae_folders)

class FolderSAE(BaseSAE):
    """A trained SAE folder as an SAE-Bench custom SAE.

    SAE-Bench measures a latent's contribution as activation x cosine(probe, decoder row), which
    assumes unit-norm decoder rows.  Trained decoders may carry the folded input-normalisation scale,
    so the wrapper stores unit decoder rows and multiplies the codes by the row norms: decode(encode(x))
    is unchanged, latents are selected by the original rule, and SAE-Bench's norm check holds.
    """

    def __init__(self, weights: dict[str, torch.Tensor], meta: SAEMeta, *, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__(meta.d_in, meta.d_sae, meta.model_name, meta.layer, torch.device(device), dtype,
                         hook_name=meta.hook_name)
        self.meta = meta
        self.architecture = meta.architecture
        self.k = meta.k
        W_dec_SD = weights["W_dec"].float()
        dec_norm_S = W_dec_SD.norm(dim=1)
        if not torch.all(dec_norm_S > 0):
            raise SAEFolderError(f"SAE {meta.name}: {int((dec_norm_S == 0).sum())} decoder rows are all zero")
        with torch.no_grad():
            self.W_enc.copy_(weights["W_enc"])
            self.W_dec.copy_(W_dec_SD / dec_norm_S[:, None])
            self.b_enc.copy_(weights["b_enc"])
            self.b_dec.copy_(weights["b_dec"])
        self.register_buffer("dec_norm", dec_norm_S.to(dtype=dtype, device=device))
        threshold_S = weights.get("threshold")
        if meta.architecture == "jumprelu" and threshold_S is None:
            raise SAEFolderError(f"SAE {meta.name}: a jumprelu SAE needs a 'threshold' tensor")
        self.register_buffer("threshold", None if threshold_S is None else threshold_S.to(dtype=dtype, device=device))
        self.cfg.architecture = meta.architecture
        self.cfg.context_size = 128
        self.requires_grad_(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of x (shape (..., d_in)) -> (..., d_sae), by the folder's architecture."""
        pre = (x.to(self.dtype) - self.b_dec) @ self.W_enc + self.b_enc
        if self.architecture == "topk":
            relu_pre = torch.relu(pre)
            top = relu_pre.topk(self.k, dim=-1, sorted=False)
            codes = torch.zeros_like(relu_pre).scatter_(-1, top.indices, top.values)
        elif self.architecture == "relu":
            codes = torch.relu(pre)
        else:
            codes = pre * (pre > self.threshold)
        return codes * self.dec_norm

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return feature_acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def load_weights(folder: Path, meta: SAEMeta) -> dict[str, torch.Tensor]:
    """The SAE's tensors, checked against ``sae_meta.json`` (shapes) and for NaN/inf."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise SAEFolderError(f"{folder}: {WEIGHTS_FILE} is missing")
    weights = load_file(str(path))
    expected = {"W_enc": (meta.d_in, meta.d_sae), "W_dec": (meta.d_sae, meta.d_in),
                "b_enc": (meta.d_sae,), "b_dec": (meta.d_in,), "threshold": (meta.d_sae,)}
    for key, shape in expected.items():
        if key not in weights:
            if key == "threshold":
                continue
            raise SAEFolderError(f"{path}: tensor {key!r} is missing")
        if tuple(weights[key].shape) != shape:
            raise SAEFolderError(f"{path}: {key} has shape {tuple(weights[key].shape)}, sae_meta.json says {shape}")
        if not torch.isfinite(weights[key]).all():
            raise SAEFolderError(f"{path}: {key} contains NaN or inf")
    return weights


def load_sae(folder: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> FolderSAE:
    """Load a finished SAE folder as an SAE-Bench custom SAE (checks shapes and finiteness)."""
    folder = Path(folder)
    meta = SAEMeta.read(folder)
    return FolderSAE(load_weights(folder, meta), meta, device=device, dtype=dtype)
