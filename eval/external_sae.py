"""An SAE saved in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``) by anyone, as the
tensors and metadata of this project's SAE folders, so that every eval and the dashboard score it by
the same encoding rule as the SAEs trained here.

The folder is loaded by SAELens itself (``SAE.load_from_disk``: its config defaulting, its state-dict
conversions), then rewritten exactly into the project's rule ``codes = act((x - b_dec) @ W_enc +
b_enc)`` (docs/ARCHITECTURE.md):

- ``apply_b_dec_to_input: false`` folds b_dec into the encoder bias: ``b_enc + b_dec @ W_enc``;
- a TopK SAE with ``rescale_acts_by_decoder_norm`` selects on ``pre * |W_dec_i|`` and decodes with
  ``acts / |W_dec_i|``: the norms are folded into the encoder and the decoder rows made unit, which
  selects the same latents and reconstructs the same output;
- JumpReLU (SAELens: ``relu(pre) * (pre > threshold)``) keeps its threshold clamped at 0, where the
  project's ``pre * (pre > threshold)`` gives the same codes for every threshold.

What cannot be rewritten exactly (per-input normalisations, hook_z reshaping, other architectures) is
refused with the reason. :func:`check_against_saelens` compares the rewritten SAE with SAELens's own
encode/decode on real activations before anything is written.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fc_base  # noqa: F401  (Hugging Face environment before torch/transformers imports)
import torch

from fc_base.sae_folder import SAELENS_CFG_FILE, WEIGHTS_FILE, SAEFolderError

SAELENS_TO_PROJECT = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
"""SAELens architectures that import, and the project's encoding rule each becomes."""
EXACT_NORMALISATIONS = ("none", "expected_average_only_in", "covariance_whitening")
"""``normalize_activations`` values SAELens's inference SAE applies as the identity (the factor or
the whitening is folded into the saved weights); ``constant_norm_rescale`` and ``layer_norm`` rescale
each input and have no equivalent weights."""
EXTERNAL_TRAINER = "external"
"""The ``trainer`` of an imported SAE in sae_meta.json and in every row of the results table."""
_HOOK_LAYER = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class ExternalSAE:
    """An SAELens folder rewritten into the project's tensors (W_enc_DS, W_dec_SD, b_enc_S, b_dec_D,
    threshold_S for jumprelu) with what its cfg.json says about where its activations came from."""

    source: Path
    saelens_architecture: str
    architecture: str
    k: int | None
    d_in: int
    d_sae: int
    model_name: str
    hook_name: str
    layer: int
    train_tokens: int
    tensors: dict[str, torch.Tensor]
    digest: str
    """sha256 of the source cfg.json and weights: the same folder imports to the same SAE."""
    saelens_version: str
    saelens_cfg: dict[str, Any]
    """SAELens's cfg.json of the rewritten tensors (b_dec applied to the input, no decoder-norm
    rescaling): the imported folder still loads in SAELens and encodes as the source did."""

    def provenance(self) -> dict[str, Any]:
        """The ``external`` record of sae_meta.json."""
        return {"source": str(self.source), "format": "sae_lens", "saelens_architecture": self.saelens_architecture,
                "saelens_version": self.saelens_version, "sha256": self.digest}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (SAELENS_CFG_FILE, WEIGHTS_FILE):
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_folder(folder: Path) -> None:
    """An SAELens folder must hold both of its files (one line naming the first that is missing)."""
    if not folder.is_dir():
        raise SAEFolderError(f"{folder} is not a folder (an SAELens SAE is a folder with {SAELENS_CFG_FILE} "
                             f"and {WEIGHTS_FILE})")
    for name in (SAELENS_CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise SAEFolderError(f"{folder} is not a complete SAELens SAE folder: {name} is missing")


def load_saelens(folder: str | Path):
    """The SAELens inference SAE of ``folder`` (float32, cpu), loaded by SAELens itself."""
    from sae_lens import SAE

    folder = Path(folder)
    check_folder(folder)
    try:
        return SAE.load_from_disk(str(folder), device="cpu", dtype="float32")
    except Exception as e:  # SAELens's own reasons (unknown architecture, bad JSON, wrong shapes)
        raise SAEFolderError(f"SAELens cannot load {folder}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _layer_of(hook_name: str, metadata) -> int:
    match = _HOOK_LAYER.match(hook_name)
    if match:
        return int(match.group(1))
    layer = metadata.get("hook_layer")
    return int(layer) if layer is not None else 0


@torch.no_grad()
def read_external(folder: str | Path) -> ExternalSAE:
    """Load ``folder`` with SAELens and rewrite it into the project's encoding rule (raises
    :class:`SAEFolderError` with the reason for what cannot be rewritten exactly)."""
    import sae_lens

    folder = Path(folder).resolve()
    sae = load_saelens(folder)
    cfg = sae.cfg
    arch = cfg.architecture()
    if arch not in SAELENS_TO_PROJECT:
        raise SAEFolderError(f"{folder}: SAELens architecture {arch!r} is not supported "
                             f"(supported: {', '.join(SAELENS_TO_PROJECT)})")
    if cfg.normalize_activations not in EXACT_NORMALISATIONS:
        raise SAEFolderError(f"{folder}: normalize_activations={cfg.normalize_activations!r} rescales every input; "
                             f"only {', '.join(EXACT_NORMALISATIONS)} have equivalent weights")
    if cfg.reshape_activations != "none":
        raise SAEFolderError(f"{folder}: reshape_activations={cfg.reshape_activations!r} (attention-head SAEs) is "
                             "not supported: the activation cache holds one d_model vector per token")
    metadata = cfg.metadata
    model_name, hook_name = metadata.get("model_name"), metadata.get("hook_name")
    if not model_name or not hook_name:
        raise SAEFolderError(f"{folder}/{SAELENS_CFG_FILE} does not name its model and hook "
                             f"(metadata.model_name={model_name!r}, metadata.hook_name={hook_name!r})")

    W_enc_DS = sae.W_enc.detach().float().clone()
    W_dec_SD = sae.W_dec.detach().float().clone()
    b_enc_S = sae.b_enc.detach().float().clone()
    b_dec_D = sae.b_dec.detach().float().clone()
    if not cfg.apply_b_dec_to_input:
        # SAELens: x @ W_enc + b_enc; the project subtracts b_dec first, so add it back through W_enc.
        b_enc_S = b_enc_S + b_dec_D @ W_enc_DS
    k = None
    tensors: dict[str, torch.Tensor] = {}
    if arch == "topk":
        k = int(cfg.k)
        if getattr(cfg, "rescale_acts_by_decoder_norm", False):
            norm_S = W_dec_SD.norm(dim=1)
            W_enc_DS, b_enc_S, W_dec_SD = W_enc_DS * norm_S, b_enc_S * norm_S, W_dec_SD / norm_S[:, None]
    elif arch == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().float().clamp_min(0.0).clone()
    tensors.update(W_enc=W_enc_DS.contiguous(), W_dec=W_dec_SD.contiguous(), b_enc=b_enc_S.contiguous(),
                   b_dec=b_dec_D.contiguous())
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise SAEFolderError(f"{folder}: {name} contains NaN or inf")
    if not torch.all(W_dec_SD.norm(dim=1) > 0):
        raise SAEFolderError(f"{folder}: some decoder rows are all zero")
    saelens_cfg = cfg.to_dict()
    saelens_cfg.update(apply_b_dec_to_input=True, dtype="float32", device="cpu")
    if "rescale_acts_by_decoder_norm" in saelens_cfg:
        saelens_cfg["rescale_acts_by_decoder_norm"] = False
    return ExternalSAE(source=folder, saelens_architecture=arch, architecture=SAELENS_TO_PROJECT[arch], k=k,
                       d_in=int(cfg.d_in), d_sae=int(cfg.d_sae), model_name=str(model_name), hook_name=str(hook_name),
                       layer=_layer_of(str(hook_name), metadata),
                       train_tokens=int(metadata.get("training_tokens") or 0), tensors=tensors,
                       digest=_digest(folder), saelens_version=sae_lens.__version__,
                       saelens_cfg=saelens_cfg)


@torch.no_grad()
def check_against_saelens(external: ExternalSAE, project_sae, x_ND: torch.Tensor, *, rtol: float = 1e-4) -> float:
    """The rewritten SAE (``project_sae``: an :class:`eval.sae.FolderSAE` of ``external``) reconstructs
    ``x_ND`` as SAELens's own SAE does and fires the same latents; returns the largest relative
    reconstruction difference, raises when it exceeds ``rtol`` or a latent differs."""
    sae = load_saelens(external.source)
    want_ND = sae.decode(sae.encode(x_ND))
    got_ND = project_sae.decode(project_sae.encode(x_ND))
    rel = float((want_ND - got_ND).norm() / want_ND.norm().clamp_min(1e-12))
    fired_diff = int(((sae.encode(x_ND) > 0) != (project_sae.encode(x_ND) > 0)).sum())
    if rel > rtol or fired_diff:
        raise SAEFolderError(f"{external.source}: rewritten for this project's encoding, it differs from SAELens's "
                             f"own on {len(x_ND)} cache rows (relative reconstruction difference {rel:.2e}, "
                             f"{fired_diff} latent activations fire differently)")
    return rel
