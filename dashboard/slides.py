"""A row or grid of map panels as one picture for a slide: PNG and SVG files made with matplotlib (no Streamlit;
plotly's static export needs kaleido, which is not a dependency). The SVG keeps its text as text, so a caption
can be edited on the slide."""
from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from dashboard import figures

PANEL_INCHES = 1.9      # one panel's width and height
CAPTION_CHARS = 26      # a caption wraps at about this many characters (a panel's width at 7 pt)


@dataclass
class Sheet:
    """Panels (H×W×3 uint8) in rows of `columns`, each over its caption, under a title; `scale` (low, high,
    signed) adds the colour bar the panels share."""
    panels: list[np.ndarray]
    captions: list[str]
    title: str = ""
    scale: tuple[float, float, bool] | None = None
    columns: int = 5

    def figure(self) -> Figure:
        columns = max(1, min(self.columns, len(self.panels)))
        rows = -(-len(self.panels) // columns)
        lines = max((len(textwrap.wrap(c, CAPTION_CHARS)) for c in self.captions), default=1)
        cell_h = PANEL_INCHES + 0.13 * lines + 0.1
        bar_h = 0.75 if self.scale else 0.0
        title_h = 0.4 if self.title else 0.1
        height = rows * cell_h + bar_h + title_h
        fig = Figure(figsize=(columns * PANEL_INCHES, height), dpi=150)
        if self.title:
            fig.suptitle(self.title, fontsize=10, y=1 - 0.12 / height)
        for i, (panel, caption) in enumerate(zip(self.panels, self.captions)):
            r, c = divmod(i, columns)
            top = 1 - (title_h + r * cell_h) / height
            ax = fig.add_axes((c / columns + 0.01, top - PANEL_INCHES / height, 1 / columns - 0.02,
                               (PANEL_INCHES - 0.05) / height))
            ax.imshow(figures.enlarge(panel, 160), interpolation="nearest")
            ax.set_axis_off()
            ax.text(0.5, -0.03, "\n".join(textwrap.wrap(caption, CAPTION_CHARS)), transform=ax.transAxes,
                    ha="center", va="top", fontsize=7)
        if self.scale:
            low, high, signed = self.scale
            ax = fig.add_axes((0.3, 0.35 / height, 0.4, 0.18 / height))
            ax.imshow(figures.colour_bar(low, high, signed), aspect="auto", extent=(0, 1, 0, 1))
            ax.set_yticks([])
            ax.set_xticks([0, 0.5, 1] if signed else [0, 1],
                          [f"−{high:.3g}", "0", f"+{high:.3g}"] if signed else [f"{low:.3g}", f"{high:.3g}"], fontsize=7)
        return fig

    def _save(self, kind: str) -> bytes:
        out = io.BytesIO()
        with rc_context({"svg.fonttype": "none"}):   # SVG text stays text (editable), not glyph outlines
            self.figure().savefig(out, format=kind, facecolor="white")
        return out.getvalue()

    def png(self) -> bytes:
        return self._save("png")

    def svg(self) -> bytes:
        return self._save("svg")
