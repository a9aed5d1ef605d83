"""Core eval's SAE-independent forwards, computed once per process instead of once per SAE.

sae-bench's ``get_recons_loss`` runs three full forwards per batch (clean, SAE-patched, zero-ablated)
and two full-vocabulary KL divergences. Only the patched forward and its KL depend on the SAE; every
SAE of a run sees the same batches (core eval shuffles its text with a fixed seed). With Gemma's
262k-token vocabulary the clean and ablated forwards and the ablation's KL are about half of core
eval's time, so :func:`shared_reference_forwards` serves them from a cache kept on the model object.

The replacement repeats sae-bench's arithmetic op for op (same softmax, log, product and sum, in the
same order), so its metrics equal sae-bench's bit for bit (``tests/test_reference_forwards.py``).
Hooks on attention heads (``hook_q``/``k``/``v``/``z``) fall through to sae-bench's own function.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import torch

CACHE_BYTES = 4 << 30
"""Most bytes of reference tensors kept per model (Gemma: about 1.1 GB per batch of 4 x 128 tokens)."""
_HEAD_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z")
_CACHE_ATTR = "_fc_sae_reference_forwards"
_PATCH_LOCK = threading.RLock()


@dataclass(frozen=True)
class ReferenceBatch:
    """What one batch's clean and zero-ablated forwards give every SAE (B sequences, T tokens)."""
    probs_BTV: torch.Tensor
    """Softmax of the clean logits."""
    log_probs_BTV: torch.Tensor
    """``log`` of ``probs_BTV`` (sae-bench takes the log of the softmax, not a log-softmax)."""
    ce_loss_BT: torch.Tensor
    """Clean per-token cross-entropy (T - 1 positions)."""
    zero_ce_loss_BT: torch.Tensor
    """Per-token cross-entropy with the hooked activations zeroed."""
    zero_kl_BT: torch.Tensor
    """KL(clean || zero-ablated) per token."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.probs_BTV, self.log_probs_BTV, self.ce_loss_BT,
                                                          self.zero_ce_loss_BT, self.zero_kl_BT))


def _kl_from(probs_BTV: torch.Tensor, log_probs_BTV: torch.Tensor, new_logits_BTV: torch.Tensor) -> torch.Tensor:
    # sae-bench's kl(), with the clean side precomputed: softmax, log, difference, product, sum.
    new_probs = torch.nn.functional.softmax(new_logits_BTV, dim=-1)
    log_new_probs = torch.log(new_probs)
    return (probs_BTV * (log_probs_BTV - log_new_probs)).sum(dim=-1)


def _cache_for(model) -> OrderedDict:
    cache = model.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = OrderedDict()
        model.__dict__[_CACHE_ATTR] = cache
    return cache


def _reference_key(hook_name: str, batch_tokens: torch.Tensor) -> tuple:
    tokens = batch_tokens.detach().cpu().contiguous()
    return hook_name, tuple(tokens.shape), hashlib.sha256(tokens.numpy().tobytes()).hexdigest()


@torch.no_grad()
def _reference(model, hook_name: str, batch_tokens: torch.Tensor) -> ReferenceBatch:
    key = _reference_key(hook_name, batch_tokens)
    cache = _cache_for(model)
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit

    def zero_hook(activations, hook):
        return torch.zeros_like(activations)

    logits, ce_loss = model(batch_tokens, return_type="both", loss_per_token=True)
    zero_logits, zero_ce_loss = model.run_with_hooks(batch_tokens, return_type="both", loss_per_token=True,
                                                     fwd_hooks=[(hook_name, zero_hook)])
    probs = torch.nn.functional.softmax(logits, dim=-1)
    del logits
    log_probs = torch.log(probs)
    ref = ReferenceBatch(probs, log_probs, ce_loss, zero_ce_loss, _kl_from(probs, log_probs, zero_logits))
    cache[key] = ref
    while len(cache) > 1 and sum(r.nbytes for r in cache.values()) > CACHE_BYTES:
        cache.popitem(last=False)
    return ref


@torch.no_grad()
def cached_recons_loss(sae, model, batch_tokens: torch.Tensor, activation_store, compute_kl: bool,
                       compute_ce_loss: bool, ignore_tokens: set = frozenset(),
                       exclude_special_tokens_from_reconstruction: bool = False, model_kwargs=None):
    """sae-bench's ``get_recons_loss`` (same signature, same metrics) with the clean and ablated sides cached."""
    hook_name = sae.cfg.hook_name
    if model_kwargs or any(s in hook_name for s in _HEAD_HOOKS):
        return _ORIGINAL[0](sae, model, batch_tokens, activation_store, compute_kl, compute_ce_loss, ignore_tokens,
                            exclude_special_tokens_from_reconstruction, model_kwargs or {})
    if len(ignore_tokens) > 0 and exclude_special_tokens_from_reconstruction:
        mask_BT = torch.logical_not(torch.any(torch.stack([batch_tokens == t for t in ignore_tokens], dim=0), dim=0))
    else:
        mask_BT = torch.ones_like(batch_tokens, dtype=torch.bool)

    def replacement_hook(activations, hook):
        original_device = activations.device
        activations = activations.to(sae.device)
        recons = sae.decode(sae.encode(activations)).to(activations.dtype)
        return torch.where(mask_BT[..., None], recons, activations).to(original_device)

    ref = _reference(model, hook_name, batch_tokens)
    recons_logits, recons_ce_loss = model.run_with_hooks(batch_tokens, return_type="both", loss_per_token=True,
                                                         fwd_hooks=[(hook_name, replacement_hook)])
    metrics = {}
    if compute_kl:
        metrics["kl_div_with_sae"] = _kl_from(ref.probs_BTV, ref.log_probs_BTV, recons_logits)
        metrics["kl_div_with_ablation"] = ref.zero_kl_BT.clone()
    if compute_ce_loss:
        metrics["ce_loss_with_sae"] = recons_ce_loss
        metrics["ce_loss_without_sae"] = ref.ce_loss_BT.clone()
        metrics["ce_loss_with_ablation"] = ref.zero_ce_loss_BT.clone()
    return metrics


_ORIGINAL: list = []


@contextlib.contextmanager
def shared_reference_forwards() -> Iterator[None]:
    """Inside the block, sae-bench's core eval takes its clean and ablated sides from the cache."""
    from sae_bench.evals.core import main as core_main

    with _PATCH_LOCK:
        if not _ORIGINAL:
            _ORIGINAL.append(core_main.get_recons_loss)
        core_main.get_recons_loss = cached_recons_loss
        try:
            yield
        finally:
            core_main.get_recons_loss = _ORIGINAL[0]


def clear(model) -> None:
    """Drop a model's cached reference batches (tests; freeing memory)."""
    model.__dict__.pop(_CACHE_ATTR, None)
