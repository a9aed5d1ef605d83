"""Everything the dashboard reads besides the cache pass, each checked before anything is written:
the SAE folder, the cache's identity, the absorption eval's details and the latent selection."""
from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pandas as pd

from fc_base.errors import ConfigError
from fc_base.sae_folder import HISTORY_FILE, SAES_DIR, SAEMeta, list_sae_folders
from pipeline.rundir import trained_and_cached_sources
from pipeline.dashboard.options import DashboardOptions, LatentChoice, LetterRole

ABSORPTION_TASK = "absorption.json"
FREQUENCY_SAMPLE_ROWS = 65536
"""Without tracker history, ``--top`` ranks latents by firing frequency on this many cache rows."""


def sae_folder(run_dir: Path, name: str) -> Path:
    """The finished SAE folder ``name`` of the run (an unknown or unfinished one is an error)."""
    folder = run_dir / SAES_DIR / name
    if not folder.is_dir():
        have = ", ".join(p.name for p in list_sae_folders(run_dir)) or "none"
        raise ConfigError(f"no SAE {name!r} in {run_dir / SAES_DIR} (finished: {have})")
    SAEMeta.read(folder)  # raises on an unfinished folder
    return folder


def check_cache_matches(store_attrs: dict, meta: SAEMeta, d_model: int) -> None:
    """The cache must hold the activations the SAE was trained on: same model, layer, hook, width."""
    want, have = trained_and_cached_sources(store_attrs, meta)
    if have != want or d_model != meta.d_in:
        raise ConfigError(f"{meta.name} was trained on {want[0]} layer {want[1]} {want[2]} (d_in {meta.d_in}), but "
                          f"the activation cache holds {have[0]} layer {have[1]} {have[2]} (d_model {d_model})")


def parse_latents(text: str) -> tuple[int, ...]:
    """``"12,407"`` -> (12, 407)."""
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--latents takes comma-separated latent indices, got {text!r}") from None


def check_latents(latents: tuple[int, ...], d_sae: int, sae: str) -> None:
    bad = [i for i in latents if not 0 <= i < d_sae]
    if bad:
        raise ConfigError(f"latent {bad[0]} is not a latent of {sae} (it has {d_sae}: 0..{d_sae - 1})")
    if not latents:
        raise ConfigError("--latents names no latent")


# ---- the absorption eval ----------------------------------------------------------------------

def read_absorption(run_dir: Path, sae: str) -> dict | None:
    """The details of the SAE's finished absorption task, or None if it has not run."""
    path = run_dir / "eval" / sae / ABSORPTION_TASK
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    rows = payload.get("rows", [])
    if rows and all(r.get("status") != "ok" for r in rows):
        return None  # a failed task names nothing
    return payload.get("details") or None


def _probe_file(run_dir: Path, layer: int) -> Path | None:
    """The absorption eval's ground-truth first-letter probe of this layer's residual stream."""
    found = sorted((run_dir / "eval_artifacts" / "absorption").glob(f"*_layer{layer}_words*/probes/*/layer_{layer}/probe.pth"))
    return found[0] if found else None


def _probe_cosines(run_dir: Path, layer: int, W_dec_SD, latents: list[int]) -> np.ndarray | None:
    """cos(decoder row, letter probe) of each latent, shape (len(latents), 26), or None without a probe."""
    import torch

    path = _probe_file(run_dir, layer)
    if path is None or not latents:
        return None
    probe = torch.load(path, map_location="cpu", weights_only=False)  # sae-bench's LinearProbe module
    weight_LD = probe.fc.weight.detach().float()
    weight_LD = weight_LD / weight_LD.norm(dim=1, keepdim=True)
    dec_MD = W_dec_SD[latents].float()
    dec_MD = dec_MD / dec_MD.norm(dim=1, keepdim=True)
    return (dec_MD @ weight_LD.T).numpy()


def letter_roles(details: dict | None, run_dir: Path, layer: int, W_dec_SD, latents: list[int]) -> dict[int, list[LetterRole]]:
    """Per latent, the first letters the eval ties it to: named per letter when the eval's details
    have ``letter_latents``; for details without them, each latent the eval named (main or absorbing)
    gets the letter whose ground-truth probe its decoder row is most aligned with."""
    out: dict[int, list[LetterRole]] = {i: [] for i in latents}
    if not details:
        return out
    fraction = {r["letter"]: r.get("absorption_fraction") for r in details.get("letters", []) if r.get("included")}
    per_letter = details.get("letter_latents")
    if per_letter:
        for letter, roles in per_letter.items():
            for role in ("main", "absorbing"):
                for i in roles.get(role, []):
                    if i in out:
                        out[i].append(LetterRole(letter, role, "eval", None, fraction.get(letter)))
        return out
    named = {i: "main" for i in details.get("main_latents", [])} | {i: "absorbing" for i in details.get("absorbing_latents", [])}
    chosen = [i for i in latents if i in named]
    cos_ML = _probe_cosines(run_dir, layer, W_dec_SD, chosen)
    if cos_ML is None:
        return out
    for i, cos_L in zip(chosen, cos_ML):
        letter = string.ascii_lowercase[int(cos_L.argmax())]
        out[i].append(LetterRole(letter, named[i], "probe cosine", float(cos_L.max()), fraction.get(letter)))
    return out


def absorbing_choices(details: dict | None, letter: str, run_dir: Path, meta: SAEMeta, W_dec_SD) -> list[LatentChoice]:
    """The latents the absorption eval named for ``letter``: its absorbing latents, then its main ones."""
    letter = _letter(letter)
    _require_eval(details, run_dir, meta.name)
    named = sorted(set(details.get("main_latents", [])) | set(details.get("absorbing_latents", [])))
    if not details.get("letter_latents") and _probe_file(run_dir, meta.layer) is None:
        raise ConfigError(f"the absorption details of {meta.name} do not say which letter each latent belongs to, "
                          f"and the eval's letter probe is not under {run_dir / 'eval_artifacts'}")
    roles = letter_roles(details, run_dir, meta.layer, W_dec_SD, named)
    picked = [LatentChoice(i, f"{r.role} latent of '{letter}' ({r.source})")
              for role in ("absorbing", "main") for i in named for r in roles[i] if r.letter == letter and r.role == role]
    if not picked:
        raise ConfigError(f"the absorption eval of {meta.name} names no latent for the letter {letter!r}")
    return picked


# ---- --top -------------------------------------------------------------------------------------

def last_snapshot(folder: Path) -> pd.DataFrame | None:
    """The tracker's last snapshot (one row per latent), or None without tracker history."""
    path = folder / HISTORY_FILE
    if not path.is_file():
        return None
    history = pd.read_parquet(path)
    if history.empty:
        return None
    return history[history["step"] == history["step"].max()].set_index("latent")


def top_choices(folder: Path, n: int, frequency_M=None) -> list[LatentChoice] | None:
    """The ``n`` latents of highest absorption score in the tracker's last snapshot (None without
    history: the caller ranks by frequency on a cache sample instead)."""
    if n <= 0:
        raise ConfigError(f"--top must be positive, got {n}")
    snap = last_snapshot(folder)
    if snap is None:
        return None
    score = snap["absorption_score"] if "absorption_score" in snap else snap["frequency"] * (1 - snap["consistency"])
    best = score.sort_values(ascending=False, kind="stable").head(n)
    step = int(snap["step"].iloc[0])
    return [LatentChoice(int(i), f"absorption score s = f(1-c) = {s:.4g} at step {step}") for i, s in best.items()]


def _letter(text: str) -> str:
    if not (len(text) == 1 and text.lower() in string.ascii_lowercase):
        raise ConfigError(f"--absorbing takes one first letter a-z, got {text!r}")
    return text.lower()


def _require_eval(details: dict | None, run_dir: Path, sae: str) -> None:
    if details is None:
        raise ConfigError(f"no finished absorption eval of {sae} in {run_dir / 'eval' / sae}: "
                          f"run fc-sae eval --eval absorption --sae {sae} first")


def check_selection(opts: DashboardOptions, meta: SAEMeta, details: dict | None, run_dir: Path) -> None:
    """The selection's own checks, which need neither the weights nor the cache pass."""
    if opts.latents and opts.absorbing:
        raise ConfigError("give --latents or --absorbing, not both")
    if opts.latents:
        check_latents(opts.latents, meta.d_sae, meta.name)
    elif opts.absorbing:
        _letter(opts.absorbing)
        _require_eval(details, run_dir, meta.name)
    elif opts.top <= 0:
        raise ConfigError(f"--top must be positive, got {opts.top}")


def choose_latents(opts: DashboardOptions, run_dir: Path, folder: Path, meta: SAEMeta, W_dec_SD,
                   details: dict | None) -> list[LatentChoice] | None:
    """The selected latents, or None when ``--top`` must rank by frequency on the cache."""
    if opts.latents and opts.absorbing:
        raise ConfigError("give --latents or --absorbing, not both")
    if opts.latents:
        check_latents(opts.latents, meta.d_sae, meta.name)
        return [LatentChoice(i, "named on the command line") for i in dict.fromkeys(opts.latents)]
    if opts.absorbing:
        return absorbing_choices(details, opts.absorbing, run_dir, meta, W_dec_SD)
    return top_choices(folder, opts.top)
