"""What a dashboard shows and how it is chosen: the options and the records passed between stages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DEFAULT_TOP = 16


@dataclass(frozen=True)
class DashboardOptions:
    """Options of ``fc-sae dashboard``; exactly one of ``latents``, ``absorbing`` picks the latents,
    otherwise ``top`` does."""

    sae: str
    """Folder name under RUN_DIR/saes."""
    latents: tuple[int, ...] = ()
    """Explicit latent indices."""
    absorbing: str | None = None
    """A first letter: the latents the absorption eval named for it."""
    top: int = DEFAULT_TOP
    """With neither of the above: this many latents of highest absorption score s = f(1-c)."""
    out: Path | None = None
    """Output folder (default RUN_DIR/dashboards/<sae>)."""
    n_contexts: int = 20
    """Top-activating contexts kept per latent."""
    context_tokens: int = 12
    """Tokens of context on each side of the firing token."""
    batch_size: int = 4096
    """Cache rows encoded at once."""
    n_neighbours: int = 5
    """Nearest decoder rows shown per latent."""


class LatentChoice(NamedTuple):
    """One selected latent and why it was picked."""

    latent: int
    reason: str


class ContextToken(NamedTuple):
    """One token of a context; ``in_cache`` False marks a gap (a position the cache does not hold)."""

    token_id: int
    text: str
    activation: float
    in_cache: bool


class Context(NamedTuple):
    """One top-activating cache row with its neighbours in the same document."""

    row: int
    doc_id: int
    position: int
    activation: float
    tokens: list[ContextToken]
    centre: int
    """Index in ``tokens`` of the firing token (the cache's token at ``row``)."""


class LetterRole(NamedTuple):
    """A first letter this latent is tied to in the absorption eval."""

    letter: str
    role: str
    """"main" (the letter's probe feature) or "absorbing"."""
    source: str
    """"eval" (named per letter in the eval's details) or "probe cosine" (attributed here)."""
    cosine: float | None
    absorption_fraction: float | None
