"""Attention: every map the model exposes, for the query and its neighbours; the similarity split
into per-group terms; Captum attribution of the similarity and "why this neighbour, not the true match"."""
from __future__ import annotations

import numpy as np
import streamlit as st

from core.attribution import METHODS
from dashboard import figures, logic, state, ui

st.title("Attention")
run = ui.require_run()
model, cfg, art = ui.load_or_stop(run)
table = state.retrieval(run)

c1, c2, c3 = st.columns([2, 1, 1])
with c1:
    if st.session_state.get(state.UPLOAD):
        st.caption("Query: the uploaded image (pick a test item on the Retrieval page to leave upload mode).")
    else:
        ui.query_picker(art, "attention")
k = ui.int_slider(c2, "Neighbours", 1, 8, 4, key="attention_k")
opacity = c3.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="attention_opacity")

query = ui.current_query(run, art)
if query is None:
    st.stop()
if query.item is not None:
    ids, sims = table.neighbours[query.item, :k], table.similarities[query.item, :k]
    true_match = logic.nearest_true_match(table, art.embeddings, art.labels, query.item)
else:
    ids, sims = logic.search(art.embeddings, query.embedding, k)
    true_match = None

# the neighbour chosen elsewhere ("Explain →") is always shown, even beyond k
focus = st.session_state.get("attention_neighbour")
if focus is not None and focus not in ids.tolist() and 0 <= focus < len(art.labels) and focus != query.item:
    ids = np.append(ids, focus)
    sims = np.append(sims, float(art.embeddings[focus] @ query.embedding))
extra_true = true_match is not None and true_match not in ids.tolist()
columns_ids = ids.tolist() + ([true_match] if extra_true else [])
images = ui.images_or_error(run, columns_ids)
if images is None:
    st.stop()
query_image = logic.to_uint8(query.pixels)
query_out = state.explain_input(run, query.pixels, state.weights_stamp(run))
others = [state.explain_item(run, i) for i in columns_ids]


def caption(i: int, pos: int) -> str:
    sim = float(art.embeddings[i] @ query.embedding)
    tag = "true match " if extra_true and pos == len(columns_ids) - 1 else ""
    return tag + ui.item_caption(art, i, sim, None if query.label is None else bool(art.labels[i] == query.label))


PER_ROW = 5  # every panel the same size, and wide enough that a caption breaks between words, not inside them


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


all_images = [query_image] + images
all_captions = [f"query {query.caption}"] + [caption(i, p) for p, i in enumerate(columns_ids)]
image_row(all_images, all_captions)

# ---- learned maps (read in a plain forward; not Captum) ---------------------------------------------
st.subheader("Where the model pooled")
if not query_out["maps"]:
    st.info("This model exposes no attention maps: its head pools every position alike (e.g. global average "
            "pooling). The Captum attribution below still shows what moved each similarity.")
for name, qmap in query_out["maps"].items():
    st.markdown(ui.describe_map(name, qmap))
    channels = list(range(qmap.shape[0]))
    if len(channels) > 4:
        # many channels (e.g. prototypes): one at a time, the query's strongest first
        strongest = int(qmap.reshape(len(channels), -1).sum(1).argmax())
        pick = st.selectbox(f"{name} channel", ["sum of all"] + channels, index=1 + strongest, key=f"attention_ch_{name}")
        channels = [pick]
    for ch in channels:
        def select(m):
            return m.sum(0) if ch == "sum of all" else m[ch]
        maps = [select(qmap)] + [select(o["maps"][name]) for o in others]
        # a common scale across the row keeps panels comparable
        scale = max(float(np.max(m)) for m in maps) or None
        label = f"{name}[{ch}]" if qmap.shape[0] > 1 else name
        image_row([figures.overlay(img, m, opacity, scale=scale) for img, m in zip(all_images, maps)],
                  [f"{label} · {c}" for c in all_captions])
        colour_bar(0.0, scale or 0.0)

# ---- similarity split into per-group terms -------------------------------------------------------
st.subheader("Which group made them similar")
groups = art.groups
terms = {caption(i, p): logic.group_terms(query.embedding, art.embeddings[i], groups) for p, i in enumerate(columns_ids)}
if len(groups) == 1:
    st.caption("One group: the whole cosine similarity is a single term. "
               + ", ".join(f"{lbl.split(' · ')[0]}: {t[0]:.3f}" for lbl, t in terms.items()))
else:
    st.plotly_chart(figures.group_terms(terms), key="attention_group_terms", width="stretch")
    st.caption("Each bar is q_g·r_g over one group's slice of the embedding; a neighbour's bars sum to its cosine.")

# ---- Captum attribution ---------------------------------------------------------------------------
st.subheader("What moved the similarity (Captum)")
a1, a2 = st.columns([1, 2])
method = a1.radio("Method", list(METHODS), key="attention_method", format_func={"gradcam": "Grad-CAM", "integrated_gradients": "Integrated Gradients"}.get)
a1.caption(METHODS[method])
default = columns_ids.index(focus) if focus in columns_ids else 0
target = a2.selectbox("Similarity to", columns_ids, index=default, key="attention_target",
                      format_func=lambda i: caption(i, columns_ids.index(i)))
stamp = state.weights_stamp(run)
target_pixels = state.model_input(run, target)
to_target = state.attribution(run, query.pixels, art.embeddings[target], method, stamp)
from_target = state.attribution(run, target_pixels, query.embedding, method, stamp)
bound = max(float(np.abs(to_target).max()), float(np.abs(from_target).max())) or None
target_image = images[columns_ids.index(target)]
panels = [figures.overlay(query_image, to_target, opacity, signed=True, scale=bound),
          figures.overlay(target_image, from_target, opacity, signed=True, scale=bound)]
caps = ["query → similarity to the target", "target → similarity to the query"]
if true_match is not None and target != true_match and query.item is not None:
    to_true = state.attribution(run, query.pixels, art.embeddings[true_match], method, stamp)
    diff = to_target - to_true
    bound = max(bound or 0.0, float(np.abs(diff).max())) or None   # one scale for all three panels
    panels = [figures.overlay(query_image, to_target, opacity, signed=True, scale=bound),
              figures.overlay(target_image, from_target, opacity, signed=True, scale=bound),
              figures.overlay(query_image, diff, opacity, signed=True, scale=bound)]
    caps.append(f"why #{target} rather than the true match #{true_match}")
    panels.append(images[columns_ids.index(true_match)])
    caps.append(f"true match {ui.item_caption(art, true_match, float(art.embeddings[true_match] @ query.embedding))}")
image_row(panels, caps)
colour_bar(0.0, bound or 0.0, signed=True)
footer = "Red pushed the similarity up, blue pulled it down (a diverging scale centred on 0)."
if len(panels) > 2:  # describe the difference panel only when it is drawn
    footer += (" The third panel is the query's attribution towards the chosen image minus towards its nearest true "
               "match: red regions drew the query to the chosen image more than to its true match.")
elif query.item is not None and target == true_match:
    footer += " The chosen image is the query's nearest true match, so there is no 'rather than the true match' panel."
st.caption(footer)
