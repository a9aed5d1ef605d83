"""The static page: an index of the selected latents, then one section per latent (contexts,
activation histogram, tracker history, splits and repairs, decoder neighbours, absorption letters)."""
from __future__ import annotations

import html
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.dashboard.options import Context, LatentChoice, LetterRole
from pipeline.dashboard.scan import HIST_EDGES

HISTORY_STATS = ("frequency", "consistency", "encoder_suppression")


class LatentPage(NamedTuple):
    """Everything one latent's section shows."""

    choice: LatentChoice
    fires: int
    max_activation: float
    contexts: list[Context]
    hist_B: np.ndarray
    history: pd.DataFrame
    """Tracker snapshots of this latent (step, frequency, consistency, ...); empty without history."""
    events: pd.DataFrame
    """Split and repair events that touched it (kind, step, role, other latent, ...)."""
    neighbours: list[tuple[int, float]]
    letters: list[LetterRole]
    features: list | None = None
    """For an SAE of a synthetic model: the true features it matches
    (pipeline.dashboard.ground_truth.FeatureMatch); None otherwise."""


def _plot(page: LatentPage, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    stats = [s for s in HISTORY_STATS if s in page.history and page.history[s].fillna(0).abs().gt(0).any()]
    fig, axes = plt.subplots(1, 1 + bool(stats), figsize=(9 if stats else 4.5, 2.6))
    axes = np.atleast_1d(axes)
    edges = HIST_EDGES.numpy()
    nz = np.flatnonzero(page.hist_B)
    if len(nz):
        lo, hi = nz[0], nz[-1] + 1
        axes[0].stairs(page.hist_B[lo:hi], edges[lo:hi + 1], fill=True, color="#4c72b0")
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels of a narrow range overlap
    axes[0].set_title(f"activations when firing ({page.fires:,} rows)", fontsize=9)
    axes[0].set_xlabel("activation", fontsize=8)
    if stats:
        ax = axes[1]
        for s in stats:
            ax.plot(page.history["step"], page.history[s], label=s, lw=1.2)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_title("tracker history", fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _token_html(text: str, activation: float, scale: float, centre: bool, in_cache: bool) -> str:
    shown = html.escape(text.replace("\n", "\u21b5"))
    if not in_cache:
        return f'<span class="gap" title="position not in the cache">{shown}</span>'
    alpha = min(max(activation / scale, 0.0), 1.0) if scale > 0 else 0.0
    cls = ' class="fire"' if centre else ""
    return (f'<span{cls} style="background:rgba(255,120,0,{alpha:.2f})" '
            f'title="{activation:.3g}">{shown}</span>')


def _context_html(ctx: Context, scale: float) -> str:
    tokens = "".join(_token_html(t.text, t.activation, scale, i == ctx.centre, t.in_cache)
                     for i, t in enumerate(ctx.tokens))
    return (f"<tr><td class=num>{ctx.activation:.3g}</td><td class=ctx>{tokens}</td>"
            f"<td class=meta>doc {ctx.doc_id} pos {ctx.position} row {ctx.row}</td></tr>")


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p class=note>none</p>"
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="events")


def _letters_html(letters: list[LetterRole]) -> str:
    if not letters:
        return "<p class=note>not named by the absorption eval</p>"
    items = []
    for r in letters:
        extra = f", cos {r.cosine:.2f} with the letter probe" if r.cosine is not None else ""
        frac = f"; letter's absorption fraction {r.absorption_fraction:.3f}" if r.absorption_fraction is not None else ""
        items.append(f"<li><b>{r.letter}</b>: {r.role} latent ({r.source}{extra}){frac}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _relative_html(r) -> str:
    return f'feature {r.feature} (its closest latent <a href="#latent-{r.latent}">{r.latent}</a>, cos {r.cosine:.2f})'


def _features_html(features: list | None) -> str:
    if features is None:
        return ""
    rows = []
    for f in features:
        parent = _relative_html(f.parent) if f.parent is not None else "none (a root)"
        children = ", ".join(_relative_html(c) for c in f.children) or "none"
        if f.n_children > len(f.children):
            children += f", and {f.n_children - len(f.children)} more"
        rows.append(f"<tr><td class=num>{f.feature}</td><td class=num>{f.cosine:.3f}</td><td class=num>{f.depth}</td>"
                    f"<td>{parent}</td><td>{children}</td></tr>")
    return ("<h3>ground-truth features (cosine of the decoder row with the true feature)</h3>"
            "<table class=events><tr><th>feature</th><th>cosine</th><th>depth</th><th>parent</th><th>children</th></tr>"
            + "".join(rows) + "</table>")


def _section(page: LatentPage, png: str, n_rows: int) -> str:
    i = page.choice.latent
    scale = max((c.activation for c in page.contexts), default=0.0)
    contexts = "".join(_context_html(c, scale) for c in page.contexts) or "<tr><td>never fires on the cache</td></tr>"
    neighbours = ", ".join(f'<a href="#latent-{j}">{j}</a> ({cos:.3f})' for j, cos in page.neighbours)
    return f"""
<section id="latent-{i}">
<h2>latent {i}</h2>
<p class=meta>{html.escape(page.choice.reason)} &middot; fires on {page.fires:,} of {n_rows:,} cache rows
({page.fires / max(n_rows, 1):.3%}) &middot; max activation {page.max_activation:.4g}</p>
<img src="{png}" alt="activation histogram and tracker history of latent {i}">
{_features_html(page.features)}
<h3>first letters (absorption eval)</h3>{_letters_html(page.letters)}
<h3>nearest decoder rows (cosine)</h3><p>{neighbours}</p>
<h3>top contexts</h3>
<table class=contexts>{contexts}</table>
<h3>splits and repairs</h3>{_table(page.events)}
</section>"""


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse}td,th{padding:2px 8px;vertical-align:top}
table.index td,table.index th,table.events td,table.events th{border-bottom:1px solid #ddd;font-size:13px}
.ctx{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap}
.fire{outline:2px solid #c00;font-weight:bold}.gap{color:#999}
.num{text-align:right;font-family:ui-monospace,monospace;font-size:13px}
.meta,.note{color:#666;font-size:12px}section{border-top:2px solid #ccc;margin-top:24px}img{max-width:100%}"""


def write_page(out_dir: Path, title: str, header: list[str], pages: list[LatentPage], n_rows: int) -> Path:
    """index.html plus one PNG per latent into ``out_dir``."""
    rows, sections = [], []
    for page in pages:
        i = page.choice.latent
        png = f"latent_{i}.png"
        _plot(page, out_dir / png)
        letters = ", ".join(f"{r.letter} ({r.role})" for r in page.letters)
        rows.append(f'<tr><td><a href="#latent-{i}">{i}</a></td><td>{html.escape(page.choice.reason)}</td>'
                    f"<td class=num>{page.fires / max(n_rows, 1):.3%}</td><td class=num>{page.max_activation:.3g}</td>"
                    f"<td>{html.escape(letters)}</td></tr>")
        sections.append(_section(page, png, n_rows))
    notes = "".join(f"<p class=note>{html.escape(h)}</p>" for h in header)
    body = (f"<h1>{html.escape(title)}</h1>{notes}<table class=index><tr><th>latent</th><th>why</th>"
            f"<th>fires</th><th>max</th><th>letters</th></tr>{''.join(rows)}</table>{''.join(sections)}")
    path = out_dir / "index.html"
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                    f"<style>{STYLE}</style></head><body>{body}</body></html>")
    return path
