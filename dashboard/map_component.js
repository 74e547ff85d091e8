// The item map's own renderer (dashboard/webgl_map.item_map, an st.components.v2 component in the main document).
// Streamlit's chart element loads its 4.7 MB plotly.js chunk only when the first chart arrives and spends 1-2.5 s
// compiling it before the map can be drawn; plotly's partial WebGL bundle (static/vendor/plotly-gl2d, 1.6 MB, with
// scattergl) is a third of that and starts loading with the page (map_loader.js, run by ui.PRELOAD_MAP_CODE too).
// A lasso, box or point selection goes back as the component's "selection" state, shaped like st.plotly_chart's
// selection value (logic.selected_ids reads both), with a sequence number so the same gesture twice is two events.
// The plot is an ordinary plotly graph div (.js-plotly-plot, layout.meta "metriclens-map"): map_bridge.js gives it
// click-to-select, double-click-to-clear, hover thumbnails and the star and rings, as it did Streamlit's chart.

// Streamlit's colours for the figure (its chart applied its own theme): the page's text colour, no backgrounds
const themed = function (layout, doc) {
  const app = doc.querySelector("[data-testid=stApp]") || doc.body;
  const text = getComputedStyle(app).color || "#31333f";
  const faint = text.replace(/^rgb\((.*)\)$/, "rgba($1, 0.15)");
  const axis = {gridcolor: faint, zerolinecolor: faint, linecolor: faint};
  delete layout.template;   // plotly.py's default template: white backgrounds and dark text
  return Object.assign(layout, {
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", autosize: true,
    font: Object.assign({family: getComputedStyle(app).fontFamily, color: text}, layout.font || {}),
    xaxis: Object.assign({}, axis, layout.xaxis || {}), yaxis: Object.assign({}, axis, layout.yaxis || {}),
  });
};

const point = function (p) {
  return {curve_number: p.curveNumber, point_number: p.pointNumber, point_index: p.pointIndex, x: p.x, y: p.y,
          customdata: p.customdata};
};

export default function (component) {
  const {data, parentElement, setStateValue} = component;
  const win = window, doc = document;
  let gd = parentElement.querySelector(".metriclens-map-plot");
  if (!gd) {
    gd = doc.createElement("div");
    gd.className = "metriclens-map-plot";
    parentElement.appendChild(gd);
  }
  let seq = gd.__metriclensSeq || 0;
  const send = function (selection) {
    gd.__metriclensSeq = seq = seq + 1;
    setStateValue("selection", Object.assign({seq: Date.now() + "." + seq}, selection));
  };
  if (gd.__metriclensFigure === data.figure) return;   // a rerun with the same figure: the plot stays as it is
  const figure = JSON.parse(data.figure);
  loadMapBundle(win, data.bundle).then(function (Plotly) {
    gd.__metriclensFigure = data.figure;
    // a new figure keeps the zoom (uirevision) but not the user's lasso or box: the figure's own selectedpoints
    // show the selection now (a kept outline would select its points again and take the next click)
    const layout = themed(figure.layout, doc);
    layout.selectionrevision = gd.__metriclensFigures = (gd.__metriclensFigures || 0) + 1;
    gd.__metriclensDrawing = true;
    return Plotly.react(gd, figure.data, layout, data.config || {});
  }).then(function () {
    gd.__metriclensDrawing = false;
    if (gd.__metriclensWired) return;
    gd.__metriclensWired = true;
    // the server waits for this before its work after paint (explore.prefetch), which would otherwise take the
    // CPU (and the GIL its web server needs) while this browser fetches, compiles and draws
    setStateValue("drawn", true);
    // the page's width changes without a window resize too (the sidebar opened or closed)
    new win.ResizeObserver(function () { if (gd.isConnected && gd._fullLayout) win.Plotly.Plots.resize(gd); })
      .observe(parentElement);
    gd.on("plotly_selected", function (ev) {
      // a click in lasso mode fires plotly_selected with nothing (map_bridge.js sends the clicked point instead);
      // so does a new figure dropping the user's lasso (no gesture: no points, no shape)
      if (!ev || !ev.points || gd.__metriclensDrawing) return;
      if (!ev.points.length && !ev.range && !ev.lassoPoints) return;
      const selection = {points: ev.points.map(point), point_indices: ev.points.map(p => p.pointIndex),
                         box: [], lasso: []};
      if (ev.range && ev.range.x) selection.box.push({x: ev.range.x, y: ev.range.y});
      if (ev.lassoPoints && ev.lassoPoints.x) selection.lasso.push({x: ev.lassoPoints.x, y: ev.lassoPoints.y});
      send(selection);
    });
  }).catch(function (err) {
    parentElement.textContent = "The map could not be drawn (" + err.message + "); reload the page.";
  });
  // called when the element leaves the page (not on a rerun): free the plot's WebGL context
  return function () { if (win.Plotly) win.Plotly.purge(gd); };
}
