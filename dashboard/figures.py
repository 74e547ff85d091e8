"""Pure figure builders (plotly / numpy images): no Streamlit, no model, testable on their own."""
from __future__ import annotations

import base64
import functools
import io

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from matplotlib import colormaps
from PIL import Image

# Ten clearly different hues (tab10); past ten categories the marker symbol changes too, so 32 classes
# get 32 distinct (hue, symbol) pairs instead of 32 near-identical hues
DISTINCT = qualitative.D3
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon", "pentagon", "triangle-down"]
CORRECT_COLOURS = {"top-1 correct": "#2ca02c", "top-1 wrong": "#d62728"}
# class names that say their colour and shape (the shapes set: "green circle") are drawn that way
NAMED_COLOURS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f5fd6", "cyan": "#17becf", "magenta": "#d020c8",
                 "yellow": "#e6c200", "orange": "#ff7f0e", "white": "#f4f4f4", "black": "#222222",
                 "purple": "#7b3fbf", "pink": "#f48fb1", "brown": "#8c564b", "grey": "#8a8a8a", "gray": "#8a8a8a"}
NAMED_SYMBOLS = {"circle": "circle", "ring": "circle-open", "square": "square", "diamond": "diamond",
                 "cross": "cross", "star": "star", "hexagon": "hexagon", "triangle": "triangle-up",
                 "pentagon": "pentagon", "x": "x"}
LEGEND_BELOW = 12        # more legend entries than this go in rows under the map instead of a scrolling column


def _word(name: str, words: dict) -> str | None:
    return next((words[t] for t in str(name).lower().replace("_", " ").split() if t in words), None)


def category_styles(names: list[str], colours: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """name -> (colour, marker symbol). Explicit `colours` win; names that all carry a colour word use
    it (and a shape word, when they all have one, picks the symbol); otherwise ten distinct hues, then
    a new symbol for each further ten."""
    return dict(_category_styles(tuple(names), tuple(sorted((colours or {}).items()))))


@functools.lru_cache(maxsize=32)
def _category_styles(names: tuple[str, ...], colours: tuple[tuple[str, str], ...]) -> tuple:
    """category_styles, kept per list of names: 11k SOP classes took a tenth of a second per map drawn."""
    colours = dict(colours)
    named = all(_word(n, NAMED_COLOURS) for n in names)
    shaped = named and all(_word(n, NAMED_SYMBOLS) for n in names)
    out = {}
    for i, name in enumerate(names):
        colour = (colours or {}).get(name) or (_word(name, NAMED_COLOURS) if named else DISTINCT[i % len(DISTINCT)])
        symbol = _word(name, NAMED_SYMBOLS) if shaped else SYMBOLS[(i // len(DISTINCT)) % len(SYMBOLS)]
        out[name] = (colour, symbol)
    return tuple(out.items())


MAX_TRACES = 40          # more categories than this go in one trace (11k SOP classes as traces would stall)
HIGHLIGHT = "#ff1493"    # rings around a clicked item's neighbours: no class colour is this pink


def embedding_map(coords: np.ndarray, ids: np.ndarray, categories: list[str] | None, hover: list[str],
                  colours: dict[str, str] | None = None, title: str = "", height: int = 560,
                  selected=None, values: np.ndarray | None = None, value_name: str = "",
                  sizes: np.ndarray | None = None, thumbs: str | None = None,
                  opacities: np.ndarray | None = None) -> go.Figure:
    """The map: one WebGL trace per category, or one trace coloured on a continuous scale (`values`,
    nan drawn grey), or one trace with a colour per point past MAX_TRACES categories. customdata
    carries item ids, because point indices count within a trace (research/dashboard.md §3.3); a
    selection's customdata may come back as {'0': v}, which logic.decode_customdata reads. `selected` item ids
    are drawn as plotly's selection (the others faded), so a selection kept across a recolouring stays
    visible. `sizes`, `opacities`: a marker size and opacity per point. `thumbs`: the URL folder of the thumbnail sheets, read
    by the page's hover script (trace meta)."""
    fig = go.Figure()
    hover, ids = np.asarray(hover), np.asarray(ids)
    chosen = np.isin(ids, np.asarray(list(selected), dtype=int)) if selected is not None and len(selected) else None
    size = (lambda m: 7 if sizes is None else np.asarray(sizes, dtype=np.float32)[m])  # noqa: E731
    opacity = (lambda m: 0.85 if opacities is None else np.asarray(opacities, dtype=np.float32)[m])  # noqa: E731

    def add(m, name, marker, showlegend=True):
        # numpy arrays, not lists: plotly checks a list element by element and Streamlit deep-copies it
        # (seconds for 20k points); arrays go to the browser as typed arrays
        trace = go.Scattergl(x=coords[m, 0].astype(np.float32), y=coords[m, 1].astype(np.float32), mode="markers",
                             name=str(name), customdata=ids[m], text=hover[m], hovertemplate="%{text}<extra></extra>",
                             marker=dict(size=size(m), opacity=opacity(m), **marker), showlegend=showlegend, meta=thumbs)
        if chosen is not None:
            trace.update(selectedpoints=np.flatnonzero(chosen[m]).tolist(),
                         selected=dict(marker=dict(opacity=1.0)), unselected=dict(marker=dict(opacity=0.25)))
        fig.add_trace(trace)

    names = []
    if values is not None:
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values)
        if (~finite).any():
            add(~finite, f"{value_name}: none", dict(color="#9a9a9a"))
        add(finite, value_name, dict(color=values[finite].astype(np.float32), colorscale="Viridis",
                                     cmin=float(np.nanmin(values)) if finite.any() else 0,
                                     cmax=float(np.nanmax(values)) if finite.any() else 1,
                                     colorbar=dict(title=dict(text=value_name, side="right"), thickness=14)),
            showlegend=False)
    else:
        categories = np.asarray(categories)
        names = list(dict.fromkeys(categories.tolist()))  # first-seen order: stable between reruns
        styles = category_styles(names, colours)
        if len(names) > MAX_TRACES:  # a number per point on a stepped scale: strings per point cost seconds
            palette = list(dict.fromkeys(styles[c][0] for c in names))
            step = [[edge, colour] for k, colour in enumerate(palette) for edge in (k / len(palette), (k + 1) / len(palette))]
            code = {name: palette.index(styles[name][0]) + 0.5 for name in names}
            point_codes = np.asarray([code[c] for c in categories.tolist()], np.float32)
            add(np.ones(len(ids), bool), "items", dict(color=point_codes, colorscale=step, cmin=0, cmax=len(palette)),
                showlegend=False)
        for name in names if len(names) <= MAX_TRACES else []:
            colour, symbol = styles[name]
            light = colour.lower() in ("#f4f4f4", "#ffffff", "white")  # a white marker needs an outline on white
            add(categories == name, name, dict(color=colour, symbol=symbol, line=dict(
                width=1 if light or symbol.endswith("-open") else 0, color="#555" if light else colour)))
    legend = dict(itemsizing="constant")
    below = MAX_TRACES >= len(names) > LEGEND_BELOW
    if below:  # rows under the map: every entry visible without scrolling
        legend.update(orientation="h", yanchor="top", y=-0.02, x=0, font=dict(size=11))
    fig.update_layout(dragmode="lasso", height=height + (22 * ((len(names) + 5) // 6) if below else 0),
                      margin=dict(l=10, r=10, t=30 if title else 10, b=10), showlegend=len(names) <= MAX_TRACES,
                      title=dict(text=title) if title else None, uirevision="map", legend=legend, meta="metriclens-map",
                      xaxis=dict(showticklabels=False, title=None), yaxis=dict(showticklabels=False, title=None))
    return fig


def colour_bar(low: float, high: float, signed: bool = False, width: int = 320, height: int = 14) -> np.ndarray:
    """The colour scale `overlay` uses, as a small horizontal image (low on the left, high on the right)."""
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    rgb = colormaps["RdBu_r" if signed else "inferno"](ramp)[..., :3]
    return (rgb * 255).round().astype(np.uint8)


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (width, height)."""
    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float = 0.5, signed: bool = False,
            scale: float | None = None) -> np.ndarray:
    """Blend a map (any h×w) over an H×W×3 uint8 image.

    Unsigned maps use a sequential colormap scaled to [min, max] (or [0, scale]); signed maps
    (attributions, differences) use a diverging one centred on 0 so red = pushed up, blue = down.
    """
    h, w = image.shape[:2]
    heat = _resize(heat, (w, h))
    if signed:
        bound = scale or float(np.abs(heat).max()) or 1.0
        norm = 0.5 + 0.5 * np.clip(heat / bound, -1, 1)
        rgb = colormaps["RdBu_r"](norm)[..., :3]
    else:
        lo, hi = (0.0, scale) if scale else (float(heat.min()), float(heat.max()))
        norm = np.clip((heat - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(heat)
        rgb = colormaps["inferno"](norm)[..., :3]
    blended = (1 - opacity) * image.astype(np.float32) / 255 + opacity * rgb
    return (np.clip(blended, 0, 1) * 255).round().astype(np.uint8)


def enlarge(image: np.ndarray, side: int = 160) -> np.ndarray:
    """Upscale small images (64 px shapes) with nearest neighbour so pixels stay crisp."""
    h, w = image.shape[:2]
    if max(h, w) >= side:
        return image
    f = max(1, side // max(h, w))
    return np.asarray(Image.fromarray(image).resize((w * f, h * f), Image.NEAREST))


def mark_cell(image: np.ndarray, row: int, col: int, grid_h: int, grid_w: int,
              colour=(0, 229, 255)) -> np.ndarray:
    """Outline one feature-grid cell on an image (e.g. the query position of a self-attention map)."""
    out = image.copy()
    h, w = out.shape[:2]
    y0, y1 = int(row * h / grid_h), max(int((row + 1) * h / grid_h) - 1, int(row * h / grid_h))
    x0, x1 = int(col * w / grid_w), max(int((col + 1) * w / grid_w) - 1, int(col * w / grid_w))
    for t in range(max(1, min(h, w) // 80)):  # about 2 px on a 160 px panel
        out[y0:y1 + 1, [min(x0 + t, w - 1), max(x1 - t, 0)]] = colour
        out[[min(y0 + t, h - 1), max(y1 - t, 0)], x0:x1 + 1] = colour
    return out


def cell_grid(image: np.ndarray, grid_h: int, grid_w: int, colour=(200, 200, 200)) -> np.ndarray:
    """The image with every feature-grid cell outlined alike (1 px lines), e.g. a uniform map: no cell stands
    out, and the object keeps its colours (a tint of a constant map would shift every hue)."""
    out = image.copy()
    h, w = out.shape[:2]
    out[np.unique(np.linspace(0, h - 1, grid_h + 1).round().astype(int)), :] = colour
    out[:, np.unique(np.linspace(0, w - 1, grid_w + 1).round().astype(int))] = colour
    return out


def group_terms(terms: dict[str, np.ndarray], height: int = 300) -> go.Figure:
    """Grouped bars: for each compared image (legend), its similarity term in each embedding group."""
    k = len(next(iter(terms.values()))) if terms else 0
    fig = go.Figure([go.Bar(name=label, x=[f"group {g}" for g in range(k)], y=np.asarray(t, float).tolist())
                     for label, t in terms.items()])
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=10, b=10),
                      yaxis_title="dot product over the group's dims")
    return fig


def extra_bars(name: str, series: dict[str, np.ndarray], height: int = 260) -> go.Figure:
    """Grouped bars of a non-spatial explanation output (an `Explanation.extras` vector, e.g. GSP's
    attribute histogram): one bar per entry, one colour per compared image (legend)."""
    fig = go.Figure([go.Bar(name=label, x=list(range(len(values))), y=np.asarray(values, float).tolist())
                     for label, values in series.items()])
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=10, b=10),
                      xaxis_title=f"{name} entry", yaxis_title=name, legend=dict(orientation="h", y=1.15))
    return fig


def learner_partition(sizes: list[int], height: int = 160) -> go.Figure:
    """The embedding's dims split into learners (subspaces), as one stacked bar."""
    fig = go.Figure([go.Bar(y=["learners"], x=[size], name=f"learner {j} ({size} dims)", orientation="h",
                            text=[f"learner {j}: {size} dims"], textposition="inside")
                     for j, size in enumerate(sizes)])
    fig.update_layout(barmode="stack", height=height, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="embedding dims")
    return fig


def metric_curve(epochs: list[int], values: list, name: str, marker_epoch: int | None = None,
                 height: int = 240) -> go.Figure:
    fig = go.Figure(go.Scatter(x=list(epochs), y=list(values), mode="lines+markers", name=name))
    if marker_epoch is not None:
        fig.add_vline(x=marker_epoch, line_dash="dot")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="epoch", yaxis_title=name)
    return fig


def histogram(values, title: str, xaxis_title: str, nbins: int = 40, height: int = 300) -> go.Figure:
    """Counts of `values` in `nbins` equal bins over their range (nan left out), binned here: the browser gets
    the bars, not a million values (plotly's own histogram would send and bin every one)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        values = np.zeros(1)
    low, high = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=nbins, range=(low, high) if high > low else (low - 0.5, high + 0.5))
    fig = go.Figure(go.Bar(x=((edges[:-1] + edges[1:]) / 2).tolist(), y=counts.tolist(), width=float(edges[1] - edges[0]),
                           marker_color="#4c78a8", hovertemplate="%{x:.3g}: %{y} queries<extra></extra>"))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10), bargap=0.05,
                      xaxis_title=xaxis_title, yaxis_title="queries")
    return fig


def history_curves(history, columns: list[str], title: str, height: int = 300) -> go.Figure:
    """Line per column of a history DataFrame (one row per epoch)."""
    fig = go.Figure()
    for col in columns:
        if col in history:
            fig.add_trace(go.Scatter(x=history["epoch"].tolist(), y=history[col].tolist(), mode="lines+markers", name=col))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="epoch")
    return fig


def _data_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def patch_picker(image: np.ndarray, grid_h: int, grid_w: int, selected: tuple[int, int] | None = None,
                 height: int = 360) -> go.Figure:
    """The image with a clickable marker at every feature-patch centre (heatmaps emit no selection
    events in Streamlit, scatter points do). customdata = [row, col]."""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    xs, ys = (cols.ravel() + 0.5) / grid_w, (rows.ravel() + 0.5) / grid_h
    ids = (rows.ravel() * grid_w + cols.ravel()).tolist()
    fig = go.Figure(go.Scatter(x=xs.tolist(), y=ys.tolist(), mode="markers", customdata=ids,
                               text=[f"row {r}, col {c}" for r, c in zip(rows.ravel(), cols.ravel())],
                               hovertemplate="%{text}<extra></extra>",
                               marker=dict(size=max(6, 200 // max(grid_h, grid_w)), color="rgba(255,255,255,0.25)",
                                           line=dict(width=1, color="rgba(0,0,0,0.6)"))))
    if selected is not None:
        r, c = selected
        fig.add_trace(go.Scatter(x=[(c + 0.5) / grid_w], y=[(r + 0.5) / grid_h], mode="markers", hoverinfo="skip",
                                 marker=dict(size=max(10, 320 // max(grid_h, grid_w)), symbol="square-open",
                                             color="#00e5ff", line=dict(width=3))))
    fig.add_layout_image(dict(source=_data_uri(image), xref="x", yref="y", x=0, y=0, sizex=1, sizey=1,
                              sizing="stretch", layer="below"))
    fig.update_layout(height=height, width=height, margin=dict(l=0, r=0, t=0, b=0), showlegend=False,
                      dragmode=False, clickmode="event+select",
                      xaxis=dict(range=[0, 1], visible=False, fixedrange=True),
                      yaxis=dict(range=[1, 0], visible=False, fixedrange=True, scaleanchor="x"))
    return fig


def cell_picker(image: np.ndarray, hidden: np.ndarray, drag: str | None = None, height: int = 320) -> go.Figure:
    """The query (as the model sees it, hidden cells filled) with one marker per grid cell (h×w bool `hidden`):
    `drag` None: a click selects one cell; "select" (a box) or "lasso": a drag selects a region (Streamlit's
    chart sends no selection for a click in those modes). customdata = the cell's flat index; hidden cells are
    drawn as crossed squares. Selected markers are not highlighted: the page applies a selection at once and
    draws a fresh chart."""
    grid_h, grid_w = hidden.shape
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    xs, ys = (cols.ravel() + 0.5) / grid_w, (rows.ravel() + 0.5) / grid_h
    flat = hidden.ravel()
    size = max(6, int(0.6 * height / max(grid_h, grid_w)))
    marker = dict(size=size, symbol=np.where(flat, "square-x", "circle").tolist(),
                  color=np.where(flat, "rgba(20,20,20,0.55)", "rgba(255,255,255,0.15)").tolist(),
                  line=dict(width=np.where(flat, 2, 1).tolist(),
                            color=np.where(flat, "#ff4b4b", "rgba(0,0,0,0.55)").tolist()))
    fig = go.Figure(go.Scatter(
        x=xs.tolist(), y=ys.tolist(), mode="markers", customdata=list(range(flat.size)), marker=marker,
        text=[f"row {r}, col {c}: {'hidden' if h else 'shown'}" for r, c, h in zip(rows.ravel(), cols.ravel(), flat)],
        hovertemplate="%{text}<extra></extra>", selected=dict(marker=dict(opacity=1)),
        unselected=dict(marker=dict(opacity=1))))
    fig.add_layout_image(dict(source=_data_uri(image), xref="x", yref="y", x=0, y=0, sizex=1, sizey=1,
                              sizing="stretch", layer="below"))
    fig.update_layout(height=height, width=height, margin=dict(l=0, r=0, t=0, b=0), showlegend=False,
                      dragmode=drag or False, clickmode="event+select",
                      xaxis=dict(range=[0, 1], visible=False, fixedrange=True),
                      yaxis=dict(range=[1, 0], visible=False, fixedrange=True, scaleanchor="x"))
    return fig


# ---- Compare: one run's map coloured by a per-query change between two runs ---------------------------
SHIFT_SCALE = [[0.0, "#d62728"], [0.5, "#c8c8c8"], [1.0, "#1f5fd6"]]   # worse in B · no change · better in B
# the selection's outline: none of the scale's red, grey or blue, with a contrast of 3:1 or more on a white and a dark page
SELECTED_OUTLINE = "#c800c8"
SHIFT_PERCENTILE = 95   # the scale ends at this percentile of the changes' size: a few large shifts don't grey the rest


def shift_bound(values: np.ndarray) -> float:
    """The symmetric colour range ±bound for signed changes: the SHIFT_PERCENTILE-th percentile of the non-zero
    changes' size (most queries do not change, so a percentile over all of them would be 0), beyond it the ends'
    colours; 1 when nothing changed."""
    size = np.abs(np.nan_to_num(np.asarray(values, dtype=float)))
    size = size[size > 0]
    return float(np.percentile(size, SHIFT_PERCENTILE)) if len(size) else 1.0


def shift_map(coords: np.ndarray, ids: np.ndarray, values: np.ndarray, hover: list[str], title: str,
              bar_title: str, selected=None, height: int = 440) -> go.Figure:
    """Points coloured by a signed per-item value (0 grey, B better blue, B worse red) on a symmetric scale
    clipped to the data (`shift_bound`); `selected` ids drawn again on top, larger and outlined in
    SELECTED_OUTLINE, the rest faded, so a selection made on the other run's map stands out here whatever its
    colour (most items are grey: no change). customdata carries item ids as lists (see `embedding_map`)."""
    values = np.nan_to_num(np.asarray(values, dtype=float))
    bound = shift_bound(values)
    colour = dict(colorscale=SHIFT_SCALE, cmin=-bound, cmax=bound)
    xy, ids, hover = np.asarray(coords), np.asarray(ids), np.asarray(hover, dtype=object)
    # coordinates and colours as float32 arrays (sent as typed arrays; lists cost seconds on a 20k-point map)
    xy, values = xy.astype(np.float32), values.astype(np.float32)
    trace = go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", customdata=ids.tolist(),
                         text=hover.tolist(), hovertemplate="%{text}<extra></extra>",
                         marker=dict(size=7, color=values, opacity=0.9, **colour,
                                     colorbar=dict(title=dict(text=bar_title, side="right"), thickness=12)))
    traces = [trace]
    if selected is not None and len(selected):
        chosen = np.isin(ids, np.asarray(list(selected), dtype=int))
        trace.update(marker_opacity=0.25)
        traces.append(go.Scattergl(
            x=xy[chosen, 0].tolist(), y=xy[chosen, 1].tolist(), mode="markers", customdata=ids[chosen].tolist(),
            text=hover[chosen].tolist(), hovertemplate="%{text}<extra></extra>", name="selection",
            marker=dict(size=11, color=values[chosen].tolist(), opacity=1.0, **colour,
                        line=dict(width=2.5, color=SELECTED_OUTLINE))))
    fig = go.Figure(traces)
    fig.update_layout(dragmode="lasso", height=height, margin=dict(l=10, r=10, t=36, b=10), title=title,
                      uirevision="compare", meta="metriclens-map", showlegend=False,
                      xaxis=dict(showticklabels=False, title=None), yaxis=dict(showticklabels=False, title=None))
    return fig


# ---- a still picture of a map, for the seconds before the browser has loaded plotly.js -----------------
def map_still(coords: np.ndarray, categories, colours: dict[str, str] | None = None, width: int = 1100,
              height: int = 560, note: str = "Loading the interactive map…") -> np.ndarray:
    """The points in their category colours (as `embedding_map` draws them) on a white H×W×3 picture, made in
    milliseconds with numpy (a small disc per point, stamped for all points at once): what a page shows while
    the browser still loads and parses plotly.js."""
    from PIL import ImageDraw, ImageFont

    categories = np.asarray(categories)
    names, which = np.unique(categories, return_inverse=True)
    styles = category_styles(list(dict.fromkeys(categories.tolist())), colours)
    hexes = ["#bbbbbb" if styles[name][0].lower() == "#f4f4f4" else styles[name][0] for name in names.tolist()]
    rgb = np.asarray([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hexes], dtype=np.uint8)[which.ravel()]
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    pad = 24
    lo, hi = coords.min(0), coords.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    x = np.round(pad + (coords[:, 0] - lo[0]) / span[0] * (width - 2 * pad)).astype(int)
    y = np.round(height - pad - (coords[:, 1] - lo[1]) / span[1] * (height - 2 * pad)).astype(int)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            if dx * dx + dy * dy <= 10:   # a disc of radius 3 px
                img[np.clip(y + dy, 0, height - 1), np.clip(x + dx, 0, width - 1)] = rgb
    picture = Image.fromarray(img)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    ImageDraw.Draw(picture).text((10, 6), note, fill="#666666", font=font)
    return np.asarray(picture)
