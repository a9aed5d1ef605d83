"""sae-bench's k-sparse probing step of the absorption eval, without its per-row Python loops.

sae-bench scores every test word against 26 letters x max_k probes one row and one probe at a time
(416k small torch calls for 1,600 words, each building a dict of arrays), writes the result to
parquet and reads it back, and then makes about 2,000 sklearn metric calls on it. On 2 cores that
is about 30 s of a 69 s absorption eval, every probe seed of every SAE. This module gives the same
numbers, bit for bit (the tests check it against sae-bench's own functions):

- the ground-truth probe and the SAE encode the test words in sae-bench's batches of 24 rows (a
  matmul's rounding may depend on its shape);
- each k-sparse score is the same 1-D torch dot sae-bench's ``KSparseProbe`` computes (a batched
  matrix-vector product rounds differently), taken over a gathered (words, k) matrix; the bias is
  added in float32 as there;
- F1 is sklearn's binary formula, 2 tp / (true + predicted) in float64, 0 when both are 0.

It keeps only what the absorption metrics read: the score columns, F1 per letter and k, and the
feature splits; no per-word activation arrays, AUCs or intermediate files.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from eval.absorption.metrics import LETTERS

EVAL_BATCH = 24  # sae-bench's eval_batch_size for the raw scores


@torch.inference_mode()
def raw_scores(sae, probe, k_sparse_probes: dict, eval_labels: list[tuple[str, int]],
               eval_acts_ND: torch.Tensor) -> pd.DataFrame:
    """sae-bench's ``eval_probe_and_sae_k_sparse_raw_scores`` without the per-word activation arrays:
    one row per test word with ``token``, ``answer_letter``, ``score_probe_<l>`` and, for every k,
    ``score_sparse_sae_<l>_k_<k>`` and ``sum_sparse_sae_<l>_k_<k>``."""
    from sae_bench.evals.absorption.k_sparse_probing import _get_sae_acts

    probe = probe.to(sae.device)
    sae_parts, probe_parts = [], []
    for start in range(0, len(eval_labels), EVAL_BATCH):
        batch_BD = eval_acts_ND[start:start + EVAL_BATCH].to(sae.device)
        sae_parts.append(_get_sae_acts(sae, batch_BD).float().cpu())
        probe_parts.append(probe(batch_BD).float().cpu())
    acts_NM = torch.cat(sae_parts)
    probe_NL = torch.cat(probe_parts)
    columns: dict[str, list] = {"token": [t for t, _ in eval_labels],
                                "answer_letter": [LETTERS[i] for _, i in eval_labels]}
    for letter_i, letter in enumerate(LETTERS):
        columns[f"score_probe_{letter}"] = probe_NL[:, letter_i].tolist()
        for k, k_probes in k_sparse_probes.items():
            k_probe = k_probes[letter_i]
            picked_NK = acts_NM[:, k_probe.feature_ids].contiguous()
            dots_N = torch.stack([torch.dot(row_K, k_probe.weight) for row_K in picked_NK])
            columns[f"score_sparse_sae_{letter}_k_{k}"] = (dots_N + k_probe.bias).tolist()
            columns[f"sum_sparse_sae_{letter}_k_{k}"] = picked_NK.sum(1).tolist()
    return pd.DataFrame(columns)


def binary_f1(y_N: np.ndarray, pred_N: np.ndarray) -> float:
    """sklearn's ``f1_score(y, pred)`` for boolean arrays: 2 tp / (true + predicted), 0 when both are 0."""
    tp = float(np.count_nonzero(y_N & pred_N))
    denom = float(np.count_nonzero(y_N)) + float(np.count_nonzero(pred_N))
    return 2.0 * tp / denom if denom else 0.0


def metrics_frame(results_df: pd.DataFrame, k_sparse_probes: dict, max_k: int,
                  f1_jump_threshold: float) -> pd.DataFrame:
    """The part of sae-bench's ``build_metrics_df`` the absorption metrics read (``f1_probe``,
    ``f1_sparse_sae_<k>``, ``sparse_sae_k_<k>_feats``), then sae-bench's own feature-split rule."""
    from sae_bench.evals.absorption.k_sparse_probing import add_feature_splits_to_metrics_df

    answers_N = results_df["answer_letter"].to_numpy()
    rows = []
    for letter_i, letter in enumerate(LETTERS):
        y_N = answers_N == letter
        row = {"letter": letter, "f1_probe": binary_f1(y_N, results_df[f"score_probe_{letter}"].to_numpy() > 0.0)}
        for k in range(1, max_k + 1):
            row[f"f1_sparse_sae_{k}"] = binary_f1(y_N, results_df[f"score_sparse_sae_{letter}_k_{k}"].to_numpy() > 0.0)
            row[f"sparse_sae_k_{k}_feats"] = k_sparse_probes[k][letter_i].feature_ids.numpy()
        rows.append(row)
    df = pd.DataFrame(rows)
    add_feature_splits_to_metrics_df(df, max_k_value=max_k, f1_jump_threshold=f1_jump_threshold)
    return df


def likely_false_negatives(metrics_df: pd.DataFrame, results_df: pd.DataFrame) -> dict:
    """sae-bench's ``get_stats_and_likely_false_negative_tokens`` on the in-memory scores: per letter,
    the test words the ground-truth probe gets right, and how many of them the letter's split
    features catch."""
    from sae_bench.evals.absorption.feature_absorption import StatsAndLikelyFalseNegativeResults

    out = {}
    for letter in LETTERS:
        split_feats = metrics_df.loc[metrics_df["letter"] == letter, "split_feats"].iloc[0]
        k = len(split_feats)
        probe_hit = (results_df["answer_letter"] == letter) & (results_df[f"score_probe_{letter}"] > 0)
        out[letter] = StatsAndLikelyFalseNegativeResults(
            probe_true_positives=int(probe_hit.sum()),
            split_feats_true_positives=int((probe_hit & (results_df[f"score_sparse_sae_{letter}_k_{k}"] > 0)).sum()),
            split_feats=split_feats,
            potential_false_negatives=results_df.loc[probe_hit, "token"].tolist())
    return out
