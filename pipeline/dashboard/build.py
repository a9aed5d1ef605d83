"""``build_dashboard(run_dir, options)``: check every input, make the one pass over the cache, then
write the page into a temporary folder that replaces the output folder at the end (bad input and
failures leave nothing behind)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from fc_base.errors import ConfigError
from fc_base.sae_folder import HISTORY_FILE, REPAIRS_FILE, SPLITS_FILE, SAEMeta
from pipeline.dashboard.contexts import build_contexts
from pipeline.dashboard.ground_truth import check_synthetic_source, feature_matches, is_synthetic, row_contexts
from pipeline.dashboard.inputs import (FREQUENCY_SAMPLE_ROWS, check_cache_matches, check_selection, choose_latents,
                                       letter_roles,
                                       read_absorption, sae_folder)
from pipeline.dashboard.options import DashboardOptions, LatentChoice
from pipeline.dashboard.render import HISTORY_STATS, LatentPage, write_page
from pipeline.dashboard.scan import frequent_latents, scan_top_activations

DASHBOARDS_DIR = "dashboards"
EVENT_FILES = {"split": (SPLITS_FILE, "slot"), "repair": (REPAIRS_FILE, "child")}


def default_out(run_dir: Path, sae: str) -> Path:
    return run_dir / DASHBOARDS_DIR / sae


def _history(folder: Path, latents: list[int]) -> pd.DataFrame:
    path = folder / HISTORY_FILE
    if not path.is_file():
        return pd.DataFrame(columns=["step", "latent"])
    wanted = ["step", "latent", *HISTORY_STATS]
    have = pd.read_parquet(path, columns=None).columns
    frame = pd.read_parquet(path, columns=[c for c in wanted if c in have], filters=[("latent", "in", latents)])
    return frame.sort_values("step")


def _events(folder: Path, latent: int) -> pd.DataFrame:
    """Splits and repairs in which ``latent`` was the parent or the new/child latent."""
    parts = []
    for kind, (file, other) in EVENT_FILES.items():
        path = folder / file
        if not path.is_file():
            continue
        frame = pd.read_parquet(path)
        for role, mine, theirs in (("parent", "latent", other), (other, other, "latent")):
            hit = frame[frame[mine] == latent]
            if len(hit):
                extra = [c for c in hit.columns if c not in ("step", "latent", other)]
                parts.append(pd.DataFrame({"event": kind, "step": hit["step"], "role": role,
                                           "other latent": hit[theirs]}).join(hit[extra]))
    return pd.concat(parts).sort_values("step") if parts else pd.DataFrame()


def _neighbours(W_dec_SD: torch.Tensor, latents: list[int], n: int) -> list[list[tuple[int, float]]]:
    unit_SD = W_dec_SD / W_dec_SD.norm(dim=1, keepdim=True)
    cos_MS = unit_SD[latents] @ unit_SD.T
    cos_MS[torch.arange(len(latents)), torch.tensor(latents)] = -2.0  # not its own neighbour
    vals, idx = cos_MS.topk(min(n, unit_SD.shape[0] - 1), dim=1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(idx, vals)]


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def build_dashboard(run_dir: str | Path, opts: DashboardOptions) -> Path:
    """Write the dashboard of ``opts.sae`` and return its index.html."""
    from cache_tools import open_store

    started = time.monotonic()
    run_dir = Path(run_dir)
    folder = sae_folder(run_dir, opts.sae)
    meta = SAEMeta.read(folder)
    cache = run_dir / "cache"
    if not cache.exists():
        raise ConfigError(f"no activation cache at {cache}: run the harvest stage first")
    store = open_store(cache)
    check_cache_matches(store.attrs, meta, store.d_model)
    details = read_absorption(run_dir, meta.name)
    check_selection(opts, meta, details, run_dir)  # before the slow SAE load: bad input fails fast
    if is_synthetic(meta):
        check_synthetic_source(run_dir, folder, meta)
    from eval.sae import load_sae  # sae-bench: imported only once the input is known good
    from pipeline.models import load_tokenizer

    sae = load_sae(folder)
    W_dec_SD = sae.W_dec.detach()
    choices = choose_latents(opts, run_dir, folder, meta, W_dec_SD, details)
    synthetic = is_synthetic(meta)
    # A synthetic model has no tokenizer: its rows are shown alone, with the true features instead.
    tokenizer = None if synthetic else load_tokenizer(meta.model_name, source=meta.model_source)
    features = None
    if choices is None:  # --top without tracker history
        rows = min(FREQUENCY_SAMPLE_ROWS, store.n_rows)
        choices = [LatentChoice(i, f"fires on {f:.3%} of the first {rows:,} cache rows (no tracker history)")
                   for i, f in frequent_latents(store, sae, opts.top, opts.batch_size, rows)]
    latents = [c.latent for c in choices]

    top = scan_top_activations(store, sae, latents, opts.n_contexts, opts.batch_size)
    scanned = time.monotonic() - started
    if synthetic:
        contexts = row_contexts(store, top)
        features = feature_matches(run_dir, folder, meta, W_dec_SD, latents)
    else:
        contexts = build_contexts(store, sae, top, tokenizer, opts.context_tokens, opts.batch_size)
    history = _history(folder, latents)
    neighbours = _neighbours(W_dec_SD, latents, opts.n_neighbours)
    roles = letter_roles(details, run_dir, meta.layer, W_dec_SD, latents)
    hist_MB = top.hist_MB.numpy()
    pages = [LatentPage(c, int(hist_MB[m].sum()), float(top.top_vals_NM[0, m]), contexts[m], hist_MB[m],
                        history[history["latent"] == c.latent], _events(folder, c.latent), neighbours[m],
                        roles[c.latent], features[c.latent] if features is not None else None)
             for m, c in enumerate(choices)]

    out = Path(opts.out) if opts.out else default_out(run_dir, meta.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = [f"{meta.trainer}, seed {meta.seed}, {meta.architecture} (k={meta.k}), d_sae {meta.d_sae:,}; "
              f"{meta.model_name} layer {meta.layer} {meta.hook_name}",
              f"cache {cache}: {store.n_rows:,} rows, encoded in one pass ({scanned:.1f} s). Each context is the "
              f"rows of the same document within {opts.context_tokens} positions of the firing token that the "
              f"cache holds (\u2026 marks a position it lacks). "
              f"Tokens are shaded by this latent's activation; hover for the value."]
    if details is None:
        header.append("no absorption eval of this SAE yet")
    elif not details.get("letter_latents"):
        header.append("the absorption eval's details name latents without their letters: each named latent "
                      "gets the letter whose ground-truth probe its decoder row aligns with best (probe cosine)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_page(tmp, f"{meta.name}: {len(pages)} latents", header, pages, store.n_rows)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"
