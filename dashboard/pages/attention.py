"""Attention: every registered explainer the run supports, for the query and its neighbours: learned maps
and their extras, per-position maps, the similarity split into per-group terms, and attributions of the
similarity with "why this neighbour, not the true match". The page names no explainer and no method."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from core.explain import explainers
from dashboard import artifacts, counterfactual, dataset, explanations, faithfulness, figures, logic, session, slides, ui

PER_ROW = 5  # every panel the same size, and wide enough that a caption breaks between words, not inside them
PER_GRID_ROW = 8  # the all-channels grid: smaller multiples of the query's map


@dataclass
class Panels:
    """The query and the images it is compared with, as the page's rows show them."""
    run: str
    art: artifacts.Artifacts
    query: ui.Query
    ids: list[int]                 # neighbours (+ the chosen one), then the true match when it is extra
    true_match: int | None
    extra_true: bool               # the true match is shown only because it is the true match
    images: list[np.ndarray]       # query first, then one per id
    captions: list[str]
    table: dict | None = None      # the run's faithfulness table (None: none yet)
    test: bool = False             # test each map on this query (deletion against random)

    def caption(self, i: int) -> str:
        sim = float(self.art.embeddings[i] @ self.query.embedding)
        tag = "true match " if self.extra_true and i == self.ids[-1] else ""
        same = None if self.query.label is None else bool(self.art.labels[i] == self.query.label)
        return tag + ui.item_caption(self.art, i, sim, same)

    def shown(self, i: int | None) -> faithfulness.Shown:
        """The query (None) or item i, as a map's faithfulness test takes it."""
        if i is None:
            return faithfulness.Shown(counterfactual.query_key(self.query), self.query.pixels, "the query")
        return faithfulness.Shown(f"item {i}", dataset.model_input(self.run, i), f"#{i}")

    def note(self, key: str | None, cell_map: np.ndarray, query: int | None = None, reference: int | None = None,
             true_match: int | None = None, contrast: bool = False, label: str = "") -> None:
        """The faithfulness notes of one map of `query` (None: the query) against `reference` (default: its top-1)."""
        reference = self.ids[0] if reference is None and query is None else reference
        faithfulness.map_note_ui(self.run, self.table, key, cell_map, self.shown(query), self.shown(reference),
                                 self.test, None if true_match is None else self.shown(true_match), contrast, label)


def image_row(panels: list[np.ndarray], captions: list[str]) -> None:
    for start in range(0, len(panels), PER_ROW):
        cols = st.columns(PER_ROW)
        for col, img, cap in zip(cols, panels[start:start + PER_ROW], captions[start:start + PER_ROW]):
            col.image(figures.enlarge(img, 160), caption=cap, width="stretch")


def colour_bar(low: float, high: float, signed: bool = False) -> None:
    """The row's colour scale, so a bright panel reads as a value, not just 'more'."""
    text = (f"colour scale: −{high:.3g} (blue) · 0 · +{high:.3g} (red), shared by the row" if signed
            else f"colour scale: {low:.3g} (dark) → {high:.3g} (bright), shared by the row")
    st.image(figures.colour_bar(low, high, signed), caption=text, width=320)


def controls_ui(art: artifacts.Artifacts) -> tuple[int, float]:
    c1, c2, c3 = st.columns([2, 1, 1])
    with c1:
        if st.session_state.get(session.UPLOAD):
            st.caption("Query: the uploaded image (pick a test item on the Retrieval page to leave upload mode).")
        else:
            ui.query_picker(art, "attention")
    k = ui.int_slider(c2, "Neighbours", 1, 8, 4, key="attention_k")
    opacity = c3.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="attention_opacity")
    return k, opacity


def compared_images(run: str, art: artifacts.Artifacts, query: ui.Query, k: int) -> Panels | None:
    """The query's k neighbours, the neighbour chosen elsewhere ("Explain →", even beyond k) and its nearest
    true match; None (after saying why) when their images cannot be read."""
    table = artifacts.retrieval(run)
    if query.item is not None:
        ids = table.neighbours[query.item, :k].tolist()
        true_match = logic.nearest_true_match(table, art.embeddings, art.labels, query.item)
    else:
        ids, true_match = logic.search(art.embeddings, query.embedding, k)[0].tolist(), None
    focus = st.session_state.get("attention_neighbour")
    if focus is not None and focus not in ids and 0 <= focus < len(art.labels) and focus != query.item:
        ids.append(focus)
    extra_true = true_match is not None and true_match not in ids
    ids += [true_match] if extra_true else []
    images = ui.images_or_error(run, ids)
    if images is None:
        return None
    panels = Panels(run, art, query, ids, true_match, extra_true, [logic.to_uint8(query.pixels)] + images, [])
    panels.captions = [f"query {query.caption}"] + [panels.caption(i) for i in ids]
    return panels


def download_ui(sheet: slides.Sheet, name: str, key: str) -> None:
    """PNG and SVG of a figure as shown (made only when a button is clicked), for a slide."""
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name).strip("_")
    c1, c2, _ = st.columns([1, 1, 8])
    c1.download_button("PNG", sheet.png, f"{stem}.png", "image/png", key=f"{key}_png", on_click="ignore",
                       icon=":material/download:", help="This figure as a picture, for a slide")
    c2.download_button("SVG", sheet.svg, f"{stem}.svg", "image/svg+xml", key=f"{key}_svg", on_click="ignore",
                       icon=":material/download:", help="This figure as a vector file (its text stays editable)")


def map_rows_ui(explainer: str, name: str, maps: list[np.ndarray], p: Panels, opacity: float, description: str) -> None:
    """One explainer map for the query and every compared image, on a scale shared by the row, and what its
    faithfulness tests say of the query's map."""
    qmap = maps[0]
    if qmap.ndim == 2:
        maps, qmap = [m[None] for m in maps], qmap[None]
    st.markdown(f"**{name}** — {description} ({len(qmap)} channel{'s' if len(qmap) > 1 else ''}, "
                f"{qmap.shape[1]}×{qmap.shape[2]} positions)")
    channels = list(range(qmap.shape[0]))
    focus = logic.most_concentrated_channel(qmap) if len(channels) > 1 else 0
    if len(channels) > 4:
        # many channels (e.g. CSA's base maps): one at a time, first the query's most concentrated one
        pick = st.selectbox(f"{name} channel", ["sum of all"] + channels, index=1 + focus, key=f"attention_ch_{name}",
                            help="First shown: the channel whose mass is most compact on the query (smallest spread "
                                 "around its centre), usually the one on the object.")
        channels = [pick]
    for ch in channels:
        shown = [m.sum(0) if ch == "sum of all" else m[ch] for m in maps]
        scale = max(float(np.max(m)) for m in shown) or None  # a common scale keeps panels comparable
        label = f"{name}[{ch}]" if qmap.shape[0] > 1 else name
        panels = [figures.overlay(img, m, opacity, scale=scale) for img, m in zip(p.images, shown)]
        captions = [f"{label} · {c}" for c in p.captions]
        image_row(panels, captions)
        colour_bar(0.0, scale or 0.0)
        download_ui(slides.Sheet(panels, captions, f"{label}: {description}", (0.0, scale or 0.0, False), PER_ROW),
                    f"{explainer}_{label}_{p.query.caption}", f"attention_dl_{explainer}_{name}_{ch}")
        single = ch == "sum of all" or qmap.shape[0] == 1   # the table scores a channel sum as the channel mean
        p.note(f"{explainer}/{name}" if single else f"{explainer}/{name}[{ch}]", shown[0], label=f"{label} of the query")
    if qmap.shape[0] > 1:
        all_channels_ui(explainer, name, qmap, p.images[0], opacity, focus, p.query.caption)


def all_channels_ui(explainer: str, name: str, qmap: np.ndarray, image: np.ndarray, opacity: float, focus: int,
                    query: str) -> None:
    """Every channel of the query's map at once (small multiples), each with its index and its share of the
    map's mass; each panel on its own scale, so a weak channel still shows where it looks."""
    if not st.toggle(f"All {len(qmap)} channels of the query's {name}", key=f"attention_grid_{name}"):
        return
    shares = logic.channel_shares(qmap)
    panels = [figures.overlay(image, m, opacity) for m in qmap]
    captions = [f"{name}[{k}] · share {100 * share:.3g}%" + (" ★" if k == focus else "")
                for k, share in enumerate(shares)]
    for start in range(0, len(panels), PER_GRID_ROW):
        cols = st.columns(PER_GRID_ROW)
        for col, img, cap in zip(cols, panels[start:start + PER_GRID_ROW], captions[start:start + PER_GRID_ROW]):
            col.image(figures.enlarge(img, 96), caption=cap, width="stretch")
    st.caption(f"Each panel on its own scale (dark: its least, bright: its most); the share is the channel's part of "
               f"the query's whole {name}, equal when every channel is normalised alike. ★: the channel shown first.")
    download_ui(slides.Sheet(panels, captions, f"{name}: every channel · query {query}", None, PER_GRID_ROW),
                f"{explainer}_{name}_all_channels_{query}", f"attention_dl_grid_{explainer}_{name}")


def extras_ui(name: str, values: list[np.ndarray], p: Panels, description: str, key: str) -> None:
    """A non-spatial output (e.g. a histogram over prototypes) as grouped bars: the query and its top-1."""
    labels = [p.captions[0].split(" · ")[0]] + [p.captions[1].split(" · ")[0]]
    st.markdown(f"**{name}** — {description} ({len(values[0])} entries)")
    st.plotly_chart(figures.extra_bars(name, dict(zip(labels, values[:2]))), key=key, width="stretch")


def learned_maps_ui(model, p: Panels, opacity: float) -> None:
    """Explainers that need nothing but an image: each one's maps and extras, for every compared image."""
    st.subheader("Where the model pooled")
    shown = False
    for explainer in explainers("maps", model):
        outs = [explanations.explain(p.run, p.query.pixels, explainer=explainer.name)]
        outs += [explanations.explain_item(p.run, i, explainer=explainer.name) for i in p.ids]
        for name in outs[0].maps:
            map_rows_ui(explainer.name, name, [o.maps[name] for o in outs], p, opacity, outs[0].describe(name))
        for name in outs[0].extras:
            extras_ui(name, [o.extras[name] for o in outs], p, outs[0].describe(name),
                      key=f"attention_extra_{explainer.name}_{name}")
        shown |= bool(outs[0].maps or outs[0].extras)
    if not shown:
        st.info(no_learned_maps(model))


def no_learned_maps(model) -> str:
    """Why a model shows no learned maps: a researcher's own network returns embeddings only; a MetricLens head
    without maps pools every position alike."""
    from core.models.user_model import UserModel
    if isinstance(model, UserModel):
        return (f"Your own network returns embeddings only, no attention maps of its own. The attributions below "
                f"show what moved each similarity: Grad-CAM reads its feature layer `{model.feature_layer}`, "
                f"Occlusion hides one cell of that layer's grid at a time, Integrated Gradients works on the pixels.")
    return ("This model exposes no attention maps: its head pools every position alike (e.g. global average "
            "pooling). The attribution below still shows what moved each similarity.")


def position_maps_ui(model, p: Panels, opacity: float) -> None:
    """Explainers whose maps depend on a position of the query (e.g. what one pixel attends to)."""
    for explainer in explainers("position", model):
        st.subheader(f"What one position attends to: {explainer.title}")
        st.caption(explainer.description)
        _, height, width = p.query.pixels.shape
        c1, c2 = st.columns(2)
        row = ui.int_slider(c1, "Position row (pixels)", 0, height - 1, height // 2, key=f"attention_row_{explainer.name}")
        col = ui.int_slider(c2, "Position column (pixels)", 0, width - 1, width // 2, key=f"attention_col_{explainer.name}")
        out = explanations.explain(p.run, p.query.pixels, explainer=explainer.name, row=row, col=col)
        for name, maps in out.maps.items():
            maps = maps if maps.ndim == 3 else maps[None]
            grid_h, grid_w = maps.shape[1:]
            cell = (row * grid_h // height, col * grid_w // width)
            panels = [figures.mark_cell(figures.enlarge(figures.overlay(p.images[0], m, opacity), 160), *cell,
                                        grid_h, grid_w) for m in maps]
            captions = [f"{name}[{g}] · position ({row}, {col})" for g in range(len(maps))]
            image_row(panels, captions)
            st.caption(out.describe(name))
            download_ui(slides.Sheet(panels, captions, f"{name}: query {p.query.caption}", None, PER_ROW),
                        f"{explainer.name}_{name}_{row}_{col}", f"attention_dl_{explainer.name}_{name}")


def group_terms_ui(p: Panels) -> None:
    st.subheader("Which group made them similar")
    groups = p.art.groups
    terms = {p.caption(i): logic.group_terms(p.query.embedding, p.art.embeddings[i], groups) for i in p.ids}
    if len(groups) == 1:
        st.caption("One group: the whole cosine similarity is a single term. "
                   + ", ".join(f"{lbl.split(' · ')[0]}: {t[0]:.3f}" for lbl, t in terms.items()))
    else:
        st.plotly_chart(figures.group_terms(terms), key="attention_group_terms", width="stretch")
        st.caption("Each bar is q_g·r_g over one group's slice of the embedding; a neighbour's bars sum to its cosine.")


def attribution_ui(model, p: Panels, opacity: float) -> None:
    """Attribution explainers (one picked) of the similarity both ways, plus every contrast explainer."""
    st.subheader("What moved the similarity (Captum)")
    available = {e.name: e for e in explainers("attribution", model)}
    if not available:
        return
    a1, a2 = st.columns([1, 2])
    method = a1.radio("Method", list(available), key="attention_method",
                      format_func=lambda name: available[name].title)
    a1.caption(available[method].description)
    focus = st.session_state.get("attention_neighbour")
    target = a2.selectbox("Similarity to", p.ids, index=p.ids.index(focus) if focus in p.ids else 0,
                          key="attention_target", format_func=p.caption)
    art, query = p.art, p.query
    to_target = explanations.explain(p.run, query.pixels, art.embeddings[target], explainer=method).maps["attribution"]
    from_target = explanations.explain(p.run, dataset.model_input(p.run, target), query.embedding,
                                       explainer=method).maps["attribution"]
    target_image = p.images[1 + p.ids.index(target)]
    maps = [(p.images[0], to_target, "query → similarity to the target"),
            (target_image, from_target, "target → similarity to the query")]
    notes = [lambda: p.note(f"{method}/attribution", to_target, reference=target, label="query → target"),
             lambda: p.note(None, from_target, query=target, reference=None, label="target → query")]
    extra_panels = []
    if p.true_match is not None and target != p.true_match and query.item is not None:
        for contrast in explainers("contrast", model):
            out = explanations.explain(p.run, query.pixels, art.embeddings[target], explainer=contrast.name,
                                       true_match=art.embeddings[p.true_match], attribution=method,
                                       to_reference=to_target)  # drawn above: Captum runs once less
            maps.append((p.images[0], out.maps["difference"], f"why #{target} rather than the true match #{p.true_match}"))
            notes.append(lambda out=out, name=contrast.name: p.note(
                f"{name}/difference", out.maps["difference"], reference=target, true_match=p.true_match,
                contrast=True, label=f"why #{target} rather than #{p.true_match}"))
        true_sim = float(art.embeddings[p.true_match] @ query.embedding)
        extra_panels = [(p.images[1 + p.ids.index(p.true_match)],
                         f"true match {ui.item_caption(art, p.true_match, true_sim)}")]
    bound = max(float(np.abs(m).max()) for _, m, _ in maps) or None     # one scale for every panel
    shown = ([figures.overlay(img, m, opacity, signed=True, scale=bound) for img, m, _ in maps]
             + [img for img, _ in extra_panels])
    captions = [c for *_, c in maps] + [c for _, c in extra_panels]
    image_row(shown, captions)
    colour_bar(0.0, bound or 0.0, signed=True)
    download_ui(slides.Sheet(shown, captions, f"{available[method].title}: query {query.caption} and #{target}",
                             (0.0, bound or 0.0, True), PER_ROW), f"{method}_{query.caption}_{target}",
                f"attention_dl_{method}")
    footer = "Red pushed the similarity up, blue pulled it down (a diverging scale centred on 0)."
    if len(maps) > 2:  # describe the difference panel only when it is drawn
        footer += (" The third panel is the query's attribution towards the chosen image minus towards its nearest "
                   "true match: red regions drew the query to the chosen image more than to its true match.")
    elif query.item is not None and target == p.true_match:
        footer += " The chosen image is the query's nearest true match, so there is no 'rather than the true match' panel."
    st.caption(footer)
    for note in notes:
        note()


def main() -> None:
    st.title("Attention")
    run = ui.require_run()
    model, _, art = ui.load_or_stop(run)
    k, opacity = controls_ui(art)
    query = ui.current_query(run, art)
    if query is None:
        st.stop()
    panels = compared_images(run, art, query, k)
    if panels is None:
        st.stop()
    image_row(panels.images, panels.captions)
    panels.table = faithfulness.table_ui(run)
    panels.test = faithfulness.testing()
    learned_maps_ui(model, panels, opacity)
    position_maps_ui(model, panels, opacity)
    group_terms_ui(panels)
    attribution_ui(model, panels, opacity)
    counterfactual.rerank_ui(run, model, art, query, k, "attention")


main()
