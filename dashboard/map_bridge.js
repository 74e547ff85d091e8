// The item maps' browser side (Explore, Compare), loaded by dashboard/ui.map_bridge through st.html (once per tab).
// Streamlit's chart forces clickmode='event' while the drag mode is lasso or box, so a click on a point selects
// nothing and its plotly_click reaches no handler. This passes the clicked point on as a one-point selection,
// and a double-click on to the Clear button (a kept selection is not the chart's own value, which Streamlit's
// double-click would reset). It also shows a hovered point's thumbnail (a cell of a JPEG sheet of 10×10 items
// served from static/thumbs/, its folder in the trace's meta) and turns j/k or →/← into the Next/Previous buttons.
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
        const cell = id % 100;
        tip.style.backgroundImage = "url('" + base + Math.floor(id / 100) + ".jpg')";
        tip.style.backgroundPosition = (-96 * (cell % 10)) + "px " + (-96 * Math.floor(cell / 10)) + "px";
        const e = ev.event || {};
        tip.style.left = Math.min((e.clientX || 0) + 16, win.innerWidth - 110) + "px";
        tip.style.top = Math.max((e.clientY || 0) - 112, 4) + "px";
        tip.style.display = "block";
      });
      gd.on("plotly_unhover", function () { tip.style.display = "none"; });
    });
  }, 400);
  doc.addEventListener("keydown", function (e) {
    const t = e.target || {};
    if (e.ctrlKey || e.metaKey || e.altKey || /INPUT|TEXTAREA|SELECT/.test(t.tagName || "") || t.isContentEditable
        || (t.getAttribute && t.getAttribute("role") === "slider")) return;
    const label = {j: "Next ›", ArrowRight: "Next ›", k: "‹ Previous", ArrowLeft: "‹ Previous"}[e.key];
    const b = label && button(label);
    if (b) { e.preventDefault(); b.click(); }
  });
})();
