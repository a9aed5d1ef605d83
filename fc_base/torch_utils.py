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


def slow_cpu_low_precision(dtype_name: str, device: str) -> str | None:
    """A warning when ``dtype_name`` arithmetic would run on a CPU without bfloat16/float16 matrix
    units (no AVX512-BF16 or AMX): there oneDNN falls back to a path measured at about 100x slower
    than float32 for the model's matmuls. None when the setting is fine."""
    if dtype_name == "float32" or resolve_device(device) != "cpu":
        return None
    import torch

    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return (f"warning: {dtype_name} on this CPU ({torch.backends.cpu.get_cpu_capability()}, no bfloat16 matrix "
            f"units) runs about 100x slower than float32; float32 is the fast setting here")
