"""The item map as the pages embed it: plotly's WebGL bundle in our own Streamlit component (preloaded while the
server computes), its browser side (click, double-click, hover, j/k: map_bridge.js), and a still picture that
stands in its place until plotly.js has drawn."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import figures


# While plotly.js loads (seconds on first paint) a chart's slot is blank: a still picture of the map stands
# there and hides itself once the plot is drawn (a plotly chart in the same block has drawn its SVG).
MAP_STILL_CSS = """<style>
[data-testid="stVerticalBlock"]:has(.js-plotly-plot .main-svg) [data-testid="stLayoutWrapper"]:has(> [class*="st-key-map_still"]),
[data-testid="stVerticalBlock"]:has(.js-plotly-plot .main-svg) [class*="st-key-map_still"] { display: none; }
</style>"""


# the browser side of every item map (dashboard/map_bridge.js): a click selects its point, a double-click
# clears, hover shows a thumbnail, j/k step the query; it installs itself once per browser tab
MAP_BRIDGE = "<script>\n" + (Path(__file__).resolve().parent / "map_bridge.js").read_text() + "</script>"


def map_bridge() -> None:
    """Call after a page's item maps (their layout.meta is "metriclens-map")."""
    st.html(MAP_BRIDGE, unsafe_allow_javascript=True)


# The item map's renderer (dashboard/map_component.js): plotly's partial WebGL bundle in our own component instead
# of Streamlit's chart, whose 4.7 MB plotly.js chunk is fetched and compiled only once the first chart arrives.
_MAP_LOADER = (Path(__file__).resolve().parent / "map_loader.js").read_text()   # defines loadMapBundle(win, url)
_MAP_JS = _MAP_LOADER + (Path(__file__).resolve().parent / "map_component.js").read_text()
_item_map = st.components.v2.component("metriclens_item_map", js=_MAP_JS, isolate_styles=False)
MAP_BUNDLE = "app/static/vendor/plotly-gl2d/plotly-gl2d.min.js"
# the same loader, run first thing on a page: the bundle loads while the server computes the map
PRELOAD_MAP_CODE = (f"<script>{_MAP_LOADER}loadMapBundle(window, {json.dumps(MAP_BUNDLE)})"
                    ".catch(function () {});</script>")
PRELOAD_MAP_LINK = f'<link rel="preload" as="script" href="{MAP_BUNDLE}">'
MAP_CONFIG = {"displaylogo": False, "responsive": True}


def item_map(fig, key: str) -> dict:
    """Draw an item map (layout.meta "metriclens-map"); returns its value as st.plotly_chart(on_select="rerun")
    would: {"selection": {"points": [...], "box": [...], "lasso": [...], ...}} after a selection, else {}, plus
    "drawn": True once this browser has drawn the map at least once (its first drawing reruns the fragment or
    page once more). A selection reruns the enclosing fragment (or the page)."""
    result = _item_map(key=key, data={"figure": fig.to_json(), "config": MAP_CONFIG, "bundle": MAP_BUNDLE},
                       on_selection_change=lambda: None, on_drawn_change=lambda: None)
    return ({"selection": result.selection} if result.selection else {}) | ({"drawn": True} if result.drawn else {})


def map_still(coords: np.ndarray, categories, colours: dict[str, str] | None = None, key: str = "map_still") -> None:
    """Call right before the page's map chart (in the same block): the same points as a picture, shown at once.
    `key` must start with map_still and be unique on the page. Only on a session's first draw of the map: by
    the next rerun plotly.js is loaded, and a picture of a big map costs a few tenths of a second per rerun.
    The container stays (empty) on every rerun, so the chart after it keeps its place and is not redrawn."""
    import base64
    import io

    from PIL import Image
    with st.container(key=key):
        if st.session_state.get(f"_first_{key}"):
            return
        st.session_state[f"_first_{key}"] = True
        png = io.BytesIO()  # 64 colours: a tenth of the bytes of a full-colour PNG (a JPEG of dots is larger still)
        Image.fromarray(figures.map_still(coords, categories, colours)).quantize(
            64, method=Image.Quantize.FASTOCTREE).save(png, format="PNG")
        # markdown, not st.image: the image element is itself loaded lazily by the browser, markdown is not
        st.markdown(f'<img alt="map" style="width:100%" src="data:image/png;base64,'
                    f'{base64.b64encode(png.getvalue()).decode()}">', unsafe_allow_html=True)
