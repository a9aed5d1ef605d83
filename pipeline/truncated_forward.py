"""A causal LM's forward pass stopped right after one decoder layer.

The harvested activation is TransformerLens's ``blocks.{layer}.hook_resid_post``: the output of
decoder layer ``layer`` (``hidden_states[layer + 1]`` in transformers). Layers above it and the
unembedding are never run: a forward hook on that layer raises a private exception carrying the
output, which unwinds the rest of the forward.
"""
from __future__ import annotations

import torch

from pipeline.models import decoder_layers


class _StopForward(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("forward stopped at the hooked layer")
        self.output = output


class TruncatedForward:
    """Callable ``(token_ids_BT) -> resid_BTD`` running ``model`` only up to decoder layer ``layer``."""

    def __init__(self, model: torch.nn.Module, layer: int) -> None:
        layers = decoder_layers(model)
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} out of range: {type(model).__name__} has {len(layers)} decoder layers")
        self.model = model
        self.layer = layer
        self.device = next(model.parameters()).device
        self._handle = layers[layer].register_forward_hook(self._hook)

    @staticmethod
    def _hook(module, inputs, output):
        raise _StopForward(output[0] if isinstance(output, tuple) else output)

    @torch.inference_mode()
    def __call__(self, token_ids_BT: torch.Tensor) -> torch.Tensor:
        try:
            self.model(input_ids=token_ids_BT.to(self.device), use_cache=False)
        except _StopForward as stop:
            return stop.output
        raise RuntimeError(f"decoder layer {self.layer} never ran during the forward pass")

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "TruncatedForward":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
