"""TopK SAE with the AuxK loss for dead latents (the baseline, and the base of FC-TopK)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fc_base.errors import check
from fc_base.options import Options
from trainers.saes.sae import SparseAutoencoder, SparseCodes, StepOutput, auxk_loss, latent_major_product, sparse_decode
from trainers.training.recipe import Recipe, register


@dataclass
class AuxKOptions(Options):
    """The AuxK loss of the TopK family (TopK, BatchTopK, Matryoshka), which revives dead latents."""

    section = "auxk"
    alpha: float = 1.0 / 32.0
    """Weight of the AuxK loss."""
    k: int | None = None
    """Dead latents used by the AuxK reconstruction (None: d_model / 2)."""

    def __post_init__(self) -> None:
        check(self.alpha >= 0, f"train.options.auxk.alpha must be >= 0, got {self.alpha}")
        check(self.k is None or self.k > 0, f"train.options.auxk.k must be None or > 0, got {self.k}")


def _top_k_relu(pre_BM: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    vals_BK, idx_BK = pre_BM.topk(k, dim=1, sorted=False)
    return vals_BK.clamp_min(0.0), idx_BK


def _entry_grads(grad_vals_BK: torch.Tensor, vals_BK: torch.Tensor, idx_BK: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient at each selected entry (0 where the relu cut it) with its row and latent. Under
    autocast the values (and their gradient) may be bf16; the sparse products run in ``dtype``."""
    b, k = idx_BK.shape
    g_N = (grad_vals_BK * (vals_BK > 0)).reshape(-1).to(dtype)
    rows_N = torch.arange(b, device=g_N.device).repeat_interleave(k)
    return g_N, rows_N, idx_BK.reshape(-1)


def _latent_sums(g_N: torch.Tensor, lat_N: torch.Tensor, m: int) -> torch.Tensor:
    return torch.zeros(m, device=g_N.device, dtype=g_N.dtype).index_add_(0, lat_N, g_N)


class _TopKEncode(torch.autograd.Function):
    """relu(top-k of x @ W_enc + bias) per row. Only k entries per row get gradient, so the
    backward is a sparse product (O(B k D)) instead of autograd's dense B x M gradient and
    B x M x D matmul."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DM, bias_M, k: int):
        vals_BK, idx_BK = _top_k_relu(torch.addmm(bias_M, x_BD, W_enc_DM), k)
        ctx.save_for_backward(x_BD, W_enc_DM, idx_BK, vals_BK)
        ctx.bias_dtype = bias_M.dtype
        ctx.mark_non_differentiable(idx_BK)
        return vals_BK, idx_BK

    @staticmethod
    def backward(ctx, grad_vals_BK, _grad_idx):
        x_BD, W_enc_DM, idx_BK, vals_BK = ctx.saved_tensors
        b, m = idx_BK.shape[0], W_enc_DM.shape[1]
        g_N, rows_N, lat_N = _entry_grads(grad_vals_BK, vals_BK, idx_BK, x_BD.dtype)
        grad_x = grad_W = grad_bias = None
        if ctx.needs_input_grad[0]:
            g_MB = torch.sparse_coo_tensor(torch.stack([lat_N, rows_N]), g_N, (m, b), check_invariants=False)
            grad_x = torch.sparse.mm(g_MB.t(), W_enc_DM.T.contiguous().to(x_BD.dtype))
        if ctx.needs_input_grad[1]:
            grad_W = latent_major_product(lat_N, rows_N, g_N, m, x_BD).T.contiguous().to(W_enc_DM.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = _latent_sums(g_N, lat_N, m).to(ctx.bias_dtype)
        return grad_x, grad_W, grad_bias, None


class _CentredTopKEncode(torch.autograd.Function):
    """relu(top-k of (x - b_dec) @ W_enc + b_enc) per row, all four gradients taken here: W_enc's is
    one sparse product against the centred input and b_dec's one matrix-vector product, so no
    D x M outer product of a folded bias is formed and accumulated (train.precision bf16). The
    centred input also keeps the residual stream's large mean out of the bfloat16 product."""

    @staticmethod
    def forward(ctx, x_BD, W_enc_DM, b_enc_M, b_dec_D, k: int):
        centred_BD = x_BD - b_dec_D
        vals_BK, idx_BK = _top_k_relu(torch.addmm(b_enc_M, centred_BD, W_enc_DM), k)
        ctx.save_for_backward(centred_BD, W_enc_DM, idx_BK, vals_BK)
        ctx.mark_non_differentiable(idx_BK)
        return vals_BK, idx_BK

    @staticmethod
    def backward(ctx, grad_vals_BK, _grad_idx):
        centred_BD, W_enc_DM, idx_BK, vals_BK = ctx.saved_tensors
        m = W_enc_DM.shape[1]
        g_N, rows_N, lat_N = _entry_grads(grad_vals_BK, vals_BK, idx_BK, W_enc_DM.dtype)
        grad_W = latent_major_product(lat_N, rows_N, g_N, m, centred_BD.to(W_enc_DM.dtype)).T.contiguous()
        grad_b_enc = _latent_sums(g_N, lat_N, m)
        return None, grad_W, grad_b_enc, -(W_enc_DM @ grad_b_enc), None


class TopKSAE(SparseAutoencoder):
    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int, *, auxk_alpha: float = 1 / 32, auxk_k: int | None = None,
                 centred_encode: bool = False, generator: torch.Generator | None = None):
        super().__init__(d_in, d_sae, k, generator)
        self.auxk_alpha = auxk_alpha
        self.auxk_k = auxk_k or max(1, d_in // 2)
        # train.precision bf16: the encoder centres its input instead of folding b_dec into a bias
        # (the same function; the floats differ, so float32 keeps the fold and its earlier SAEs).
        self.centred_encode = centred_encode

    @torch.no_grad()
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        post_BM = self.pre_acts(x_BD).relu()
        vals_BK, idx_BK = post_BM.topk(self.k, dim=1)
        return torch.zeros_like(post_BM).scatter_(1, idx_BK, vals_BK)

    def training_step(self, x_BD: torch.Tensor, dead_M: torch.Tensor) -> StepOutput:
        if self.centred_encode:
            vals_BK, idx_BK = _CentredTopKEncode.apply(x_BD, self.W_enc, self.b_enc, self.b_dec, self.k)
        else:
            bias_M = self.effective_bias()
            vals_BK, idx_BK = _TopKEncode.apply(x_BD, self.W_enc, bias_M, self.k)
        b = x_BD.shape[0]
        rows_N = torch.arange(b, device=x_BD.device).repeat_interleave(self.k)
        codes = SparseCodes(rows_N, idx_BK.reshape(-1), vals_BK.reshape(-1))
        recon_BD = sparse_decode(codes, self.W_dec, b) + self.b_dec
        mse = (recon_BD - x_BD).pow(2).sum(1).mean()
        aux = mse.new_zeros(())
        if self.auxk_alpha > 0 and bool(dead_M.any()):
            dead_L = torch.nonzero(dead_M).squeeze(1)
            if self.centred_encode:
                dead_pre_BL = torch.addmm(self.b_enc[dead_L], x_BD - self.b_dec, self.W_enc[:, dead_L])
            else:
                dead_pre_BL = torch.addmm(bias_M[dead_L], x_BD, self.W_enc[:, dead_L])
            aux = self.auxk_alpha * auxk_loss(self, dead_pre_BL, dead_L, x_BD, recon_BD, self.auxk_k)
        return StepOutput(mse + aux, mse, aux, recon_BD, codes, None)


def build_topk(d_in: int, cfg, generator: torch.Generator) -> TopKSAE:
    aux = cfg.option(AuxKOptions)
    return TopKSAE(d_in, cfg.d_sae, cfg.k, auxk_alpha=aux.alpha, auxk_k=aux.k,
                   centred_encode=cfg.precision == "bf16", generator=generator)


TOPK = register(Recipe("topk", "TopK SAE with AuxK (the baseline)", build_topk, options=(AuxKOptions,)))
