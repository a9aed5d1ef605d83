"""Top-activating rows back into text: each row's neighbours are the rows of the same document at
the nearby positions. The harvest shuffles rows, so they are found by (doc_id, position), in one pass
over the small token arrays (doc_ids, positions) of the cache, never its activations."""
from __future__ import annotations

import numpy as np
import torch

from cache_tools import ActivationStore
from cache_tools.reader import storage_to_float32
from pipeline.dashboard.options import Context, ContextToken
from pipeline.dashboard.scan import TopActivations, gather_rows

GAP = "\u2026"


def _keys(doc_R: np.ndarray, pos_R: np.ndarray) -> np.ndarray:
    return (doc_R.astype(np.int64) << 32) | pos_R.astype(np.int64)


def find_rows(store: ActivationStore, wanted_keys: np.ndarray) -> dict[int, int]:
    """Global row of each wanted (doc, position) key the cache holds."""
    wanted = np.unique(wanted_keys)
    found: dict[int, int] = {}
    for shard in store.shards:
        keys = _keys(np.asarray(store.shard_array(shard, "doc_ids")), np.asarray(store.shard_array(shard, "positions")))
        local = np.flatnonzero(np.isin(keys, wanted))
        found.update(zip(keys[local].tolist(), (local + shard * store.spec.shard_rows).tolist()))
    return found


def token_texts(tokenizer, token_ids: list[int]) -> dict[int, str]:
    """Each token decoded alone (as the page shows it)."""
    unique = sorted(set(token_ids))
    return dict(zip(unique, (tokenizer.decode([t]) for t in unique)))


@torch.no_grad()
def build_contexts(store: ActivationStore, sae, top: TopActivations, tokenizer, width: int,
                   batch_size: int = 4096) -> list[list[Context]]:
    """Per selected latent, its top rows as contexts of ``width`` tokens each side, every token
    shaded by the latent's activation there."""
    rows_NM = top.top_rows_NM.numpy()
    top_rows = np.unique(rows_NM[rows_NM >= 0])
    doc = dict(zip(top_rows.tolist(), gather_rows(store, "doc_ids", top_rows).tolist()))
    pos = dict(zip(top_rows.tolist(), gather_rows(store, "positions", top_rows).tolist()))
    offsets = np.arange(-width, width + 1)
    docs_R = np.array([doc[r] for r in top_rows.tolist()], dtype=np.int64)
    pos_RW = np.array([pos[r] for r in top_rows.tolist()], dtype=np.int64)[:, None] + offsets
    wanted = _keys(np.repeat(docs_R, len(offsets)), pos_RW.reshape(-1))
    row_of = find_rows(store, wanted[pos_RW.reshape(-1) >= 0])

    # the latents' activations on every context row: one small encode, no language model
    ctx_rows = np.array(sorted(set(row_of.values())), dtype=np.int64)
    token_of = dict(zip(ctx_rows.tolist(), gather_rows(store, "token_ids", ctx_rows).tolist()))
    acts_RM = torch.empty(len(ctx_rows), len(top.latents_M))
    for lo in range(0, len(ctx_rows), batch_size):
        raw = gather_rows(store, "acts", ctx_rows[lo:lo + batch_size])
        x_BD = torch.from_numpy(storage_to_float32(raw, store.acts_dtype))
        acts_RM[lo:lo + batch_size] = sae.encode(x_BD).index_select(1, top.latents_M)
    index_of = {r: i for i, r in enumerate(ctx_rows.tolist())}
    texts = token_texts(tokenizer, list(token_of.values()))

    out: list[list[Context]] = []
    for m in range(len(top.latents_M)):
        contexts = []
        for n in range(rows_NM.shape[0]):
            row = int(rows_NM[n, m])
            if row < 0:
                break
            contexts.append(_context(row, doc[row], pos[row], float(top.top_vals_NM[n, m]), m, offsets,
                                     row_of, token_of, index_of, acts_RM, texts))
        out.append(contexts)
    return out


def _context(row, doc_id, position, activation, m, offsets, row_of, token_of, index_of, acts_RM, texts) -> Context:
    tokens: list[ContextToken] = []
    centre = 0
    for off in offsets.tolist():
        p = position + off
        r = row_of.get((doc_id << 32) | p) if p >= 0 else None
        if r is None:
            tokens.append(ContextToken(-1, GAP, 0.0, False))
            continue
        if r == row:
            centre = len(tokens)
        tokens.append(ContextToken(token_of[r], texts[token_of[r]], float(acts_RM[index_of[r], m]), True))
    # positions before the document or past the cache's last row of it are trimmed; inner gaps stay
    lo = next(i for i, t in enumerate(tokens) if t.in_cache)
    hi = max(i for i, t in enumerate(tokens) if t.in_cache) + 1
    return Context(row, doc_id, position, activation, tokens[lo:hi], centre - lo)
