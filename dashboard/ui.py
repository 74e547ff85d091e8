"""Streamlit pieces shared by the pages: the current run and query, image grids, error panels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core.checkpoint import CheckpointError
from core.run_dir import ARTIFACTS, coords_file
from dashboard import artifacts, caching, catalog, dataset, explanations, figures, logic, model_cache, session, webgl_map

# page name -> script, relative to app.py (st.navigation and st.switch_page both take these)
PAGES = {
    "explore": "dashboard/pages/explore.py",
    "retrieval": "dashboard/pages/retrieval.py",
    "attention": "dashboard/pages/attention.py",
    "cross": "dashboard/pages/cross.py",
    "compare": "dashboard/pages/compare.py",
    "train": "dashboard/pages/train.py",
    "learn": "dashboard/pages/learn.py",
}


def dataset_error_type() -> type[Exception]:
    """core.data's DatasetError, imported on demand: core.data loads torchvision (about a second),
    which drawing the map from a run's artifacts does not need."""
    from core.data.folders import DatasetError
    return DatasetError


def require_run() -> str:
    """The selected run directory, or a message saying how to get one (and stop the page)."""
    run = st.session_state.get(session.RUN)
    if not run:
        st.info("No run selected. Pick one in the sidebar, point the sidebar at a folder of runs, or train one "
                "on the **Train** page (`python -m core train --config configs/shapes_gap.yaml --out checkpoints/NAME`).")
        st.stop()
    return run


# pages that work on a run's artifacts alone, so also on a run imported from embeddings (no model)
MODEL_FREE_PAGES = ("explore", "retrieval", "compare")
CURRENT_PAGE = "_current_page"   # session key app.py sets before it runs a page
# what the pages are called in the navigation (app.py), and so in every message that names one
PAGE_TITLES = {"explore": "Explore", "retrieval": "Retrieval", "attention": "Attention", "cross": "Cross-image",
               "compare": "Compare", "train": "Train", "learn": "Learn"}


def page_name(page: str | None = None) -> str:
    """'the Cross-image page': the current page (or `page`) as the navigation names it."""
    page = page or st.session_state.get(CURRENT_PAGE, "")
    return f"the {PAGE_TITLES[page]} page" if page in PAGE_TITLES else "this page"


def no_model(run: str, what: str = "this page") -> None:
    """The message a page that needs a model shows for a run without one here, and a stopped page."""
    if catalog.imported(run):
        from core.importer import no_model_message
        st.info(f":material/info: {no_model_message(run, what)}")
    else:  # a researcher's own model whose code cannot be imported here: load_or_stop said why above
        st.info(f":material/info: Run {Path(run).name}'s own model cannot be rebuilt here, so {what} cannot work "
                f"on it. Explore, Retrieval by item and Compare use its embeddings.")
    st.stop()


def own_model_missing(run: str, err: CheckpointError, page: str) -> None:
    """A researcher's own model that cannot be rebuilt here (its factory does not import, its weights do not fit):
    why, and the command that fixes it. A page that needs the network stops; Explore, Retrieval and Compare go on
    with the run's embeddings."""
    from core.checkpoint import load_config
    spec = load_config(run).model.user_model or {}
    folder = Path(spec["factory_file"]).parent if spec.get("factory_file") else None
    fix = (f" To explain it here: `PYTHONPATH={folder} streamlit run app.py` (the folder its factory was imported "
           f"from)." if folder else "")
    problem, name = f"{str(err).rstrip('.')}.{fix}", Path(run).name
    if page not in MODEL_FREE_PAGES:
        title = page_name(page)
        st.error(f"**{title[0].upper() + title[1:]} needs {name}'s own model, which cannot be rebuilt here:** "
                 f"{problem} Explore, Retrieval by item and Compare show its embeddings meanwhile.")
        st.stop()
    st.warning(f"**This page shows {name}'s embeddings only:** {problem} Attention, Cross-image and uploaded queries "
               f"need the network.", icon=":material/warning:")


def load_or_stop(run: str):
    """(model, cfg, artifacts) of the run, or a clear st.error and a stopped page. A run imported from
    embeddings gives (None, cfg, artifacts) on the pages that need no model and a clear message elsewhere; so
    does, with a warning naming the fix, a researcher's own model whose code cannot be imported here."""
    from core.checkpoint import load_config
    page = st.session_state.get(CURRENT_PAGE, "")
    try:
        if catalog.imported(run):
            if page not in MODEL_FREE_PAGES:
                no_model(run, page_name(page))
            return None, load_config(run), artifacts.artifacts(run)
        try:
            model, cfg = model_cache.load_model(run)
        except CheckpointError as err:
            if not catalog.user_code(run):
                raise
            own_model_missing(run, err, page)
            model, cfg = None, load_config(run)
        return model, cfg, artifacts.artifacts(run)
    except CheckpointError as err:
        st.error(f"**Run {Path(run).name} cannot be used:** {err}")
        st.stop()


def dataset_error(err: Exception, run: str) -> None:
    """Explain a moved data folder and offer to point this run at its new place."""
    if session.teaching():  # no folder box for visitors: the host moves the data back
        st.error(f"**The run's images cannot be read:** {err}\n\nMaps and metrics from the run's artifacts "
                 f"still work. The host of this shared dashboard can move the data back.")
        return
    st.error(f"**The run's images cannot be read:** {err}\n\nMaps and metrics from the run's artifacts still "
             f"work. To see images, move the data back, or give its new folder here (kept for this session).")
    new_root = st.text_input("Data folder for this run", key=f"data_root_{caching.digest(run)}",
                             placeholder="/path/to/the/dataset/root")
    if new_root:
        st.session_state.setdefault(session.DATA_ROOTS, {})[run] = new_root


def images_or_error(run: str, ids) -> list[np.ndarray] | None:
    """Display images of items; None (after an st.error) when the data set is unreachable."""
    try:
        return [dataset.image(run, int(i)) for i in ids]
    except dataset_error_type() as err:
        if catalog.imported(run):  # no data folder to point at: the import named (or did not name) the files
            st.caption(f":material/hide_image: No images to show: {err}. Import with `--path-column` (and "
                       f"`--image-root`) to see them.")
        else:
            dataset_error(err, run)
        return None


def image_grid(images: list[np.ndarray], captions: list[str], columns: int = 8, side: int = 120) -> None:
    for start in range(0, len(images), columns):
        cols = st.columns(columns)
        for col, img, cap in zip(cols, images[start:start + columns], captions[start:start + columns]):
            col.image(figures.enlarge(img, side), caption=cap, width="stretch")


def image_wall(images: list[np.ndarray], captions: list[str], width: int = 112) -> None:
    """Many thumbnails in one element (one st.image call): far fewer browser nodes than a grid of
    columns, which keeps a big selection's grid quick to draw."""
    st.image([figures.enlarge(img, width) for img in images], caption=captions, width=width)


# projection name on the pages -> artifacts/coords_<file>.npy ("Own 2-D": given to `python -m core import --coords`)
PROJECTION_FILES = {"UMAP": "umap", "PCA": "pca", "Own 2-D": "own"}


def projections(*runs: str) -> list[str]:
    """The projections to offer for runs: UMAP and PCA, and the imported coordinates when every run has them."""
    own = runs and all((Path(run) / ARTIFACTS / coords_file("own")).exists() for run in runs)
    return ["UMAP", "PCA"] + (["Own 2-D"] if own else [])


@dataclass
class Query:
    pixels: np.ndarray           # 3×H×W in [0, 1], as the model sees it
    embedding: np.ndarray        # D
    item: int | None             # artifact item id; None for an uploaded image
    label: int | None
    caption: str


def current_query(run: str, art: artifacts.Artifacts) -> Query | None:
    """The shared query: an uploaded image when one is active, else an item of the run's test set."""
    upload = st.session_state.get(session.UPLOAD)
    if upload is not None and upload.get("run") == run:
        pixels = upload["pixels"]
        out = explanations.explain_input(run, pixels)
        return Query(pixels, out["embedding"], None, None, f"uploaded: {upload['name']}")
    item = query_item(len(art.items))
    try:
        pixels = dataset.model_input(run, item)
    except dataset_error_type() as err:
        if not catalog.imported(run):
            dataset_error(err, run)
            return None
        pixels = np.full((3, 64, 64), 0.85, np.float32)  # an imported item without an image: a blank tile
    return Query(pixels, art.embeddings[item], item, int(art.labels[item]),
                 f"#{item} · {art.class_names[item]}")


def query_item(n: int) -> int:
    """The shared query as an item of a set of `n`, the same on every page: a number out of range (e.g.
    `query=999999` in a link) is clamped to the nearest item, written back and said once."""
    raw = st.session_state.get(session.QUERY, 0)
    try:
        item = int(raw or 0)
    except (TypeError, ValueError):
        item = 0
    shown = min(max(item, 0), n - 1)
    if shown != item:
        st.warning(f"Query item {item} does not exist: this run's test items are 0–{n - 1}. Showing #{shown}.")
    st.session_state[session.QUERY] = shown
    return shown


def query_picker(art: artifacts.Artifacts, key: str) -> None:
    """Item number, or a label / file / field search next to it; writes the shared query (and leaves upload mode)."""
    widget = f"{key}_query"
    st.session_state[widget] = query_item(len(art.items))  # the box shows the item the page shows

    def changed():
        set_query(int(st.session_state[widget]))
    number, search = st.columns([1, 2])
    number.number_input(f"Query item (0–{len(art.items) - 1})", 0, len(art.items) - 1, key=widget, step=1,
                        on_change=changed, help="Any test item; pick one from the map, the failures list or here.")
    with search:
        query_finder(art, key)
    webgl_map.map_bridge()  # its keys: j/k (or →/←) step the query here too


def set_query(item: int) -> None:
    st.session_state[session.QUERY] = int(item)
    st.session_state[session.UPLOAD] = None
    st.session_state.pop("attention_neighbour", None)  # it belonged to the previous query


def find_items(store, text: str, limit: int = 500) -> list[int]:
    """Items whose class, split, file name, folder or fields contain every word of `text` (any case; '#12': item
    12), in item order, at most `limit` (core.item_store.ItemStore.search: whole columns, never item by item)."""
    return store.search(text)[:limit].tolist()


def query_finder(art: artifacts.Artifacts, key: str) -> None:
    """Type a label, file name or field value ("red diamond", "img_0042") to pick the query among the
    matching items: Enter jumps to the first match, the list below offers the others."""
    find, found = f"{key}_find", f"{key}_found"

    def searched():
        hits = find_items(art.store, st.session_state.get(find) or "")
        if hits and st.session_state.get(session.QUERY) not in hits:
            set_query(hits[0])
    st.text_input("…or find by label, file or field", key=find, on_change=searched,
                  placeholder="e.g. red diamond", help="Every word must appear in the item's class, file name or "
                                                      "fields; Enter shows the first match.")
    text = (st.session_state.get(find) or "").strip()
    if not text:
        return
    hits = find_items(art.store, text)
    if not hits:
        st.caption(f"No item matches {text!r}.")
        return
    current = st.session_state.get(session.QUERY)
    st.session_state[found] = current if current in hits else None

    def picked():
        if st.session_state.get(found) is not None:
            set_query(st.session_state[found])
    st.selectbox(f"{len(hits)}{'+' if len(hits) == 500 else ''} matching item{'s' if len(hits) > 1 else ''}", hits,
                 key=found, on_change=picked, placeholder="pick one of the matches",
                 format_func=lambda i: item_caption(art, int(i)) + _file_suffix(art.items[int(i)]))


def _file_suffix(item: dict) -> str:
    return f" · {Path(str(item['path'])).name}" if item.get("path") else ""


def go_to(page: str, query: int | None = None, **values) -> None:
    """Set the shared query (and any other session values) and switch page."""
    if query is not None:
        st.session_state[session.QUERY] = int(query)
        st.session_state[session.UPLOAD] = None
    st.session_state.update(values)
    st.switch_page(PAGES[page])


def int_slider(container, label: str, low: int, high: int, default: int, key: str, **kwargs) -> int:
    """An integer slider whose range may collapse to one value (tiny data, a 1×1 grid, one logged
    epoch): then there is nothing to choose and no widget (Streamlit refuses min == max).

    Its value is kept under a plain session key and handed to the widget on every run: a slider skipped
    by one run (e.g. Retrieval while no upload is there yet) loses its widget state, and the browser then
    drew the default (8) while the page still used the old value (1)."""
    if high <= low:
        return low
    kept = f"_kept_{key}"
    st.session_state[key] = min(max(int(st.session_state.get(kept, default)), low), high)

    def changed():
        st.session_state[kept] = st.session_state[key]
    container.slider(label, low, high, key=key, on_change=changed, **kwargs)
    return int(st.session_state[key])


def metric_pair(label: str, selected: float, rest: float) -> None:
    fmt = (lambda v: "—" if np.isnan(v) else f"{v:.3f}")
    delta = None if np.isnan(selected) or np.isnan(rest) else f"{selected - rest:+.3f} vs rest"
    st.metric(f"{label} of the selection", fmt(selected), delta, help=f"rest of the set: {fmt(rest)}")


def item_caption(art: artifacts.Artifacts, item: int, similarity: float | None = None, match: bool | None = None) -> str:
    mark = "" if match is None else ("✓ " if match else "✗ ")
    sim = "" if similarity is None else f" · {similarity:.3f}"
    return f"{mark}#{item} {art.class_names[item]}{sim}"


def neighbours_row(run: str, art: artifacts.Artifacts, ids, sims, query_label: int | None, columns: int = 8) -> bool:
    """Neighbour images with cosine and ✓/✗ class match. Returns False when images are unreachable."""
    imgs = images_or_error(run, ids)
    if imgs is None:
        return False
    caps = [item_caption(art, int(i), float(s), None if query_label is None else bool(art.labels[i] == query_label))
            for i, s in zip(ids, sims)]
    image_grid(imgs, caps, columns)
    return True


def describe_map(name: str, maps: np.ndarray) -> str:
    from core.registry import MAP_DESCRIPTIONS
    # blocks may suffix their maps with where they sit ("csa_base@stage3"); the description is per kind
    desc = MAP_DESCRIPTIONS.get(name, MAP_DESCRIPTIONS.get(name.split("@")[0], "no description registered for this map"))
    k, h, w = maps.shape
    return f"**{name}** — {desc} ({k} channel{'s' if k > 1 else ''}, {h}×{w} positions)"


def upload_widget(run: str, key: str, has_model: bool) -> None:
    """Upload an image as the query; invalid files give a clear error, never a traceback. Without a model here
    (load_or_stop gave none) a message says why there is no search by image."""
    if not has_model:
        no_model(run, "searching with an uploaded image")
    file = st.file_uploader("Upload a query image (PNG/JPEG, ≤ 10 MB)", key=key,
                            type=["png", "jpg", "jpeg", "bmp", "webp", "gif"])
    if file is None:
        return
    data = file.getvalue()
    try:
        pil = logic.validate_upload(data, file.name)
    except logic.UploadError as err:
        st.error(f"**Upload refused:** {err}")
        return
    upload = st.session_state.get(session.UPLOAD) or {}
    if upload.get("name") != file.name or upload.get("size") != len(data) or upload.get("run") != run:
        st.session_state[session.UPLOAD] = {"name": file.name, "size": len(data), "run": run,
                                            "pixels": dataset.upload_input(run, pil)}
