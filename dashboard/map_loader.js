// Loads plotly's partial WebGL bundle once per window; returns a promise of Plotly. `url` is ui.MAP_BUNDLE (the one
// spelling). One file, used twice: first thing on a page with a map (ui.PRELOAD_MAP_CODE, so the bundle loads
// while the server computes the map) and as the start of the map component's script (ui._MAP_JS).
function loadMapBundle(win, url) {
  if (!win.__metriclensPlotly) {
    win.__metriclensPlotly = new Promise(function (resolve, reject) {
      if (win.Plotly) { resolve(win.Plotly); return; }
      const script = win.document.createElement("script");
      script.src = new URL(url, win.document.baseURI).href;
      script.onload = function () { resolve(win.Plotly); };
      script.onerror = function () { win.__metriclensPlotly = null; reject(new Error("plotly bundle not loaded")); };
      win.document.head.appendChild(script);
    });
  }
  return win.__metriclensPlotly;
}
