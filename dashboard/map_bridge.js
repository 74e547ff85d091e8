// The item maps' browser side (Explore, Compare), loaded by dashboard/ui.map_bridge through st.html (once per tab).
// The maps are plotly graphs drawn by dashboard/map_component.js (webgl_map.item_map), which passes plotly_selected on as
// the map's selection. In lasso or box mode a click on a point selects nothing (clickmode 'event', as Streamlit's
// chart forced it). This passes the clicked point on as a one-point selection,
// and a double-click on to the Clear button (a kept selection is not the chart's own value, which Streamlit's
// double-click would reset). It also shows a hovered point's thumbnail (a cell of a JPEG sheet of 10×10 items
// served from static/thumbs/, its folder in the trace's meta) and turns j/k or →/← into the Next/Previous buttons
// (on pages without them, the steps of the "Query item" box: ui.query_picker loads this script too).
// Explore's clicked item (a star) and its nearest neighbours (rings) are drawn here, above the plot, from the page's
// .metriclens-focus element: the figure stays the same, so a click costs no new WebGL plot (explore.figure_selection).
(function () {
  const win = window.parent && window.parent.document ? window.parent : window;
  if (win.__metriclensClickBridge) return;
  win.__metriclensClickBridge = true;
  const doc = win.document;
  const point = (p) => ({curveNumber: p.curveNumber, pointNumber: p.pointNumber, pointIndex: p.pointIndex,
                         x: p.x, y: p.y, customdata: p.customdata});
  const button = (label) => Array.from(doc.querySelectorAll("button")).find(b => b.innerText.trim() === label);
  const tip = doc.createElement("div");
  tip.id = "metriclens-thumb";
  tip.style.cssText = "position:fixed;display:none;pointer-events:none;z-index:1000;width:96px;height:96px;" +
    "border:2px solid #888;border-radius:4px;background-color:#808080;background-size:960px 960px;";
  doc.body.appendChild(tip);
  // the thumbnail belongs to the element hovered (a map or a ring): it goes when the pointer leaves that element or
  // the element leaves the page (a lasso ends with no plotly_unhover, and a page switch removes the map under it)
  const hideThumb = function () { tip.style.display = "none"; tip.owner = null; };
  doc.addEventListener("mousemove", function (e) { if (tip.owner && !tip.owner.contains(e.target)) hideThumb(); }, true);
  // A sheet hovered before the background job has written it fails to load, and the browser keeps that failure
  // for the page's life (Streamlit never reloads the document): so each sheet is loaded here first, and a failed
  // one is asked for again under a new URL a few seconds later, until it arrives.
  const sheets = {};
  const sheetSource = function (url) {
    let sheet = sheets[url];
    const now = Date.now();
    if (!sheet || (!sheet.ok && !sheet.loading && now - sheet.tried > 3000)) {
      sheet = sheets[url] = {src: sheet ? url + "?retry=" + now : url, ok: false, loading: true, tried: now};
      const probe = new win.Image();
      probe.onload = function () {
        sheet.ok = true; sheet.loading = false;
        if (tip.sheet === url) tip.style.backgroundImage = "url('" + sheet.src + "')";
      };
      probe.onerror = function () { sheet.loading = false; };
      probe.src = sheet.src;
    }
    return sheet.src;
  };
  const showThumb = function (base, id, e, owner) {
    tip.owner = owner;
    const cell = id % 100;
    tip.sheet = base + Math.floor(id / 100) + ".jpg";
    tip.style.backgroundImage = "url('" + sheetSource(tip.sheet) + "')";
    tip.style.backgroundPosition = (-96 * (cell % 10)) + "px " + (-96 * Math.floor(cell / 10)) + "px";
    tip.style.left = Math.min((e.clientX || 0) + 16, win.innerWidth - 110) + "px";
    tip.style.top = Math.max((e.clientY || 0) - 112, 4) + "px";
    tip.style.display = "block";
  };
  const SVG = "http://www.w3.org/2000/svg";
  const svgEl = function (name, attrs) {
    const el = doc.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    return el;
  };
  // the page's background (Streamlit's light or dark theme): the star's edge and the label's halo, which
  // separate them from the points below, take it (a white halo glared on a dark page)
  const pageBackground = function () {
    const app = doc.querySelector("[data-testid=stApp]");
    const colour = app ? getComputedStyle(app).backgroundColor : "";
    return colour && colour !== "rgba(0, 0, 0, 0)" && colour !== "transparent" ? colour : "#ffffff";
  };
  // the star and rings over the first item map, in its axes' pixels (again after every zoom, pan or redraw)
  const drawFocus = function () {
    const gd = Array.from(doc.querySelectorAll(".js-plotly-plot")).find(g => g.layout && g.layout.meta === "metriclens-map");
    const holder = doc.querySelector(".metriclens-focus");
    const box = gd && gd.querySelector(".svg-container");
    if (!box || !gd._fullLayout || !gd._fullLayout.xaxis) return;
    const text = holder ? holder.getAttribute("data-focus") || "{}" : "{}";
    let layer = box.querySelector("#metriclens-focus-layer");
    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
    const halo = pageBackground();
    const where = text + "|" + xa.range + "|" + ya.range + "|" + xa._length + "|" + ya._length + "|" + xa._offset + "|" + halo;
    if (layer && layer.__where === where) return;
    if (layer) layer.remove();
    const focus = JSON.parse(text);
    if (!focus.ids || !focus.ids.length) return;
    layer = svgEl("svg", {id: "metriclens-focus-layer", width: box.clientWidth, height: box.clientHeight,
                          "data-item": focus.item, "data-ids": JSON.stringify(focus.ids.filter(i => i !== focus.item)),
                          "data-name": focus.name});
    layer.__where = where;
    layer.style.cssText = "position:absolute;left:0;top:0;pointer-events:none;overflow:hidden;";
    const clip = svgEl("clipPath", {id: "metriclens-focus-clip"});
    clip.appendChild(svgEl("rect", {x: xa._offset, y: ya._offset, width: xa._length, height: ya._length}));
    layer.appendChild(clip);
    const marks = svgEl("g", {"clip-path": "url(#metriclens-focus-clip)"});
    layer.appendChild(marks);
    focus.ids.forEach(function (id, k) {
      const x = xa._offset + xa.l2p(focus.x[k]), y = ya._offset + ya.l2p(focus.y[k]);
      const mark = id === focus.item
        ? svgEl("path", {d: "M0,-11L2.6,-3.6L10.5,-3.4L4.2,1.4L6.5,8.9L0,4.4L-6.5,8.9L-4.2,1.4L-10.5,-3.4L-2.6,-3.6Z",
                         transform: "translate(" + x + "," + y + ")", fill: focus.colour, stroke: halo,
                         "stroke-width": 1.5, "data-id": id})
        : svgEl("circle", {cx: x, cy: y, r: 7.5, fill: "none", stroke: focus.colour, "stroke-width": 2.5, "data-id": id});
      // the ring's stroke takes the pointer (its centre leaves the point below to plotly): hover shows the
      // item's thumbnail, a click moves to it, also where the sampled map does not draw that item
      mark.style.pointerEvents = "visibleStroke";
      mark.style.cursor = "pointer";
      const title = svgEl("title", {});
      title.textContent = focus.text[k];
      mark.appendChild(title);
      mark.addEventListener("mouseenter", function (e) { if (focus.thumbs) showThumb(focus.thumbs, id, e, mark); });
      mark.addEventListener("mouseleave", hideThumb);
      mark.addEventListener("click", function () {
        gd.emit("plotly_selected", {points: [{curveNumber: 0, pointNumber: 0, pointIndex: 0, x: focus.x[k],
                                              y: focus.y[k], customdata: id}], selections: []});
      });
      marks.appendChild(mark);
    });
    const label = svgEl("text", {x: xa._offset + 6, y: ya._offset + 16, "font-size": 12, fill: focus.colour,
                                 stroke: halo, "stroke-width": 3, "paint-order": "stroke"});
    label.textContent = "★ " + focus.text[focus.ids.indexOf(focus.item)] + "   ◯ " + focus.name;
    if (focus.ids.indexOf(focus.item) < 0) label.textContent = "◯ " + focus.name;
    layer.appendChild(label);
    box.appendChild(layer);
  };
  let queued = false;
  new win.MutationObserver(function () {  // a rerun changed the page: redraw the marks on the next frame if needed
    if (queued) return;
    queued = true;
    win.requestAnimationFrame(function () { queued = false; drawFocus(); });
  }).observe(doc.body, {childList: true, subtree: true, attributes: true, attributeFilter: ["data-focus"]});
  win.setInterval(function () {
    doc.querySelectorAll(".js-plotly-plot").forEach(function (gd) {
      if (gd.__metriclensClick || !gd.layout || gd.layout.meta !== "metriclens-map" || !gd.on) return;
      gd.__metriclensClick = true;
      gd.on("plotly_click", function (ev) {
        if (!ev || !ev.points || !ev.points.length) return;
        if (String((gd._fullLayout || {}).clickmode || "").indexOf("select") >= 0) return;  // selects by itself
        gd.emit("plotly_selected", {points: [point(ev.points[0])], selections: []});
      });
      gd.on("plotly_deselect", function () {  // a double-click in lasso/box mode
        // the page's own Clear button when it is there (the kept selection is not the chart's value, and a
        // marker sent through a chart that was just redrawn could miss); else a "clear" marker, id -1
        const clear = button("Clear selection");
        if (clear) { clear.click(); return; }
        gd.emit("plotly_selected", {points: [{curveNumber: -1, pointNumber: -1, pointIndex: -1, customdata: -1}],
                                    selections: []});
      });
      gd.on("plotly_hover", function (ev) {
        const p = ev && ev.points && ev.points[0];
        const base = p && p.data && p.data.meta;
        const id = p ? Number(Array.isArray(p.customdata) ? p.customdata[0] : p.customdata) : NaN;
        if (!base || !(id >= 0)) return;
        showThumb(base, id, ev.event || {}, gd);
      });
      gd.on("plotly_afterplot", drawFocus);   // zoom, pan, resize
      drawFocus();
      gd.on("plotly_unhover", hideThumb);
    });
    if (tip.owner && !tip.owner.isConnected) hideThumb();
  }, 400);
  doc.addEventListener("keydown", function (e) {
    const t = e.target || {};
    if (e.ctrlKey || e.metaKey || e.altKey || /INPUT|TEXTAREA|SELECT/.test(t.tagName || "") || t.isContentEditable
        || (t.getAttribute && t.getAttribute("role") === "slider")) return;
    const label = {j: "Next ›", ArrowRight: "Next ›", k: "‹ Previous", ArrowLeft: "‹ Previous"}[e.key];
    // Explore's buttons; elsewhere the step buttons of the page's "Query item" box (Retrieval, Attention, ...)
    const box = Array.from(doc.querySelectorAll("[data-testid=stNumberInput]"))
      .find(n => (n.innerText || "").trim().indexOf("Query item") === 0);
    const step = box && box.querySelector(label === "Next ›" ? "[data-testid=stNumberInputStepUp]"
                                                             : "[data-testid=stNumberInputStepDown]");
    const b = label && (button(label) || step);
    if (b && !b.disabled) { e.preventDefault(); b.click(); }
  });
})();
