"""A causal LM's forward pass stopped right after the module that produces one TransformerLens hook.

Three hooks of a decoder layer ``L`` can be harvested, each from the transformers module whose output
is the tensor TransformerLens records under that name:

- ``blocks.{L}.hook_resid_post``: the output of decoder layer ``L`` (``hidden_states[L + 1]``);
- ``blocks.{L}.hook_attn_out``: what the layer's attention adds to the residual stream: the output of
  the attention output projection, or of the norm applied after it where the family has one (Gemma-3);
- ``blocks.{L}.hook_mlp_out``: what the layer's MLP adds to the residual stream: the output of the
  MLP, or of the norm applied after it (Gemma-3).

Modules above the hooked one and the unembedding are never run: a forward hook on that module raises
a private exception carrying the output, which unwinds the rest of the forward.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline.config import HOOK_ATTN_OUT, HOOK_MLP_OUT, HOOK_RESID_POST, parse_hook
from pipeline.models import decoder_layers

SUBMODULES: dict[str, dict[str, str]] = {
    # GPT-NeoX (Pythia, the tiny test model): attention.dense is the output projection.
    "gpt_neox": {HOOK_ATTN_OUT: "attention.dense", HOOK_MLP_OUT: "mlp"},
    # Llama (SmolLM2).
    "llama": {HOOK_ATTN_OUT: "self_attn.o_proj", HOOK_MLP_OUT: "mlp"},
    # Gemma-3 normalises both branch outputs before adding them to the residual stream, and
    # TransformerLens records them after that norm (its ln1_post / ln2_post).
    "gemma3_text": {HOOK_ATTN_OUT: "post_attention_layernorm", HOOK_MLP_OUT: "post_feedforward_layernorm"},
}
"""Per model family (the text config's ``model_type``): the module inside a decoder layer whose output
is TransformerLens's ``hook_attn_out`` / ``hook_mlp_out``."""


class HookSite(NamedTuple):
    """Where a hook's activations come from in a transformers model."""

    layer: int
    """The decoder layer."""
    kind: str
    """``hook_resid_post``, ``hook_attn_out`` or ``hook_mlp_out``."""
    module: str
    """The module inside the decoder layer whose output is read ('' for the layer itself)."""

    def describe(self) -> str:
        return f"layers[{self.layer}]" + (f".{self.module}" if self.module else "")


def text_config(config):
    """The language part of a transformers config (itself for a plain causal LM)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hook_site(config, hook: str) -> HookSite:
    """The module that produces ``hook`` in a model with this transformers config.

    Raises ValueError (one line) for a hook name outside the supported grammar, a layer the model
    does not have, or a family whose attention/MLP modules are not known here."""
    layer, kind = parse_hook(hook)
    cfg = text_config(config)
    n_layers = getattr(cfg, "num_hidden_layers", None)
    model_type = getattr(cfg, "model_type", "?")
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ValueError(f"hook {hook!r}: layer {layer} out of range: the model ({model_type}) has "
                         f"{n_layers} decoder layers (0..{n_layers - 1})")
    if kind == HOOK_RESID_POST:
        return HookSite(layer, kind, "")
    if model_type not in SUBMODULES:
        raise ValueError(f"hook {hook!r}: {kind} is known for the model families {', '.join(SUBMODULES)}, not "
                         f"{model_type!r}; use blocks.{layer}.{HOOK_RESID_POST}")
    return HookSite(layer, kind, SUBMODULES[model_type][kind])


def _submodule(root: torch.nn.Module, path: str) -> torch.nn.Module:
    module = root
    for part in path.split(".") if path else ():
        module = getattr(module, part)
    return module


class _StopForward(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("forward stopped at the hooked module")
        self.output = output


class TruncatedForward:
    """Callable ``(token_ids_BT) -> acts_BTD`` running ``model`` only up to the module producing
    ``hook`` (default ``blocks.{layer}.hook_resid_post``)."""

    def __init__(self, model: torch.nn.Module, layer: int, hook: str | None = None) -> None:
        hook = hook or f"blocks.{layer}.{HOOK_RESID_POST}"
        layers = decoder_layers(model)
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} out of range: {type(model).__name__} has {len(layers)} decoder layers")
        site = hook_site(model.config, hook)
        if site.layer != layer:
            raise ValueError(f"hook {hook!r} belongs to layer {site.layer}, not to layer {layer}")
        self.model = model
        self.layer = layer
        self.hook = hook
        self.site = site
        self.device = next(model.parameters()).device
        self._handle = _submodule(layers[layer], site.module).register_forward_hook(self._hook)

    @staticmethod
    def _hook(module, inputs, output):
        raise _StopForward(output[0] if isinstance(output, tuple) else output)

    @torch.inference_mode()
    def __call__(self, token_ids_BT: torch.Tensor) -> torch.Tensor:
        try:
            self.model(input_ids=token_ids_BT.to(self.device), use_cache=False)
        except _StopForward as stop:
            return stop.output
        raise RuntimeError(f"{self.site.describe()} never ran during the forward pass")

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "TruncatedForward":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
