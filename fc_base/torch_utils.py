"""Dtype names and device resolution shared by the model, training and eval code."""
from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")
"""Dtype names the configs accept."""


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; anything else unchanged."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
