// memory_report_page.h — the HTML page of the memory report, as one string.
//
// Self-contained on purpose: a report is copied off clusters and opened from disk, often with
// no network, so there is no external script, style or font; charts are SVG drawn by the
// inline script from the report JSON, which write_memory_report substitutes for @REPORT_DATA@.
// The page proves it rendered without showing it to the reader: <body data-render> turns from
// "pending" to "ok" only when every chart was drawn without an exception, and to "error" on
// the first error (window.onerror, console.error, unhandled promise rejections), which is
// listed in #errors. tests/launch/memory_checks.py (check html) reads both, and the drawn
// charts and table, from the DOM of headless Chromium.
#pragma once

namespace shardtrain::launch {

inline constexpr const char* kMemoryReportPage = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>shardtrain memory report</title>
<style>
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 18px 24px;
         color: #222; background: #fff; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 22px 0 6px; }
  #summary { color: #444; margin: 0 0 6px; }
  #errors { color: #b00; white-space: pre-wrap; margin: 0; }
  .legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
  .legend i { display: inline-block; width: 11px; height: 11px; margin-right: 4px;
              vertical-align: -1px; }
  svg text { font: 11px system-ui, sans-serif; fill: #333; }
  table { border-collapse: collapse; font-size: 13px; }
  th, td { padding: 3px 10px; text-align: right; border-bottom: 1px solid #e4e4e4; }
  th:first-child, td:first-child { text-align: left; }
  td.bad { color: #b00; }
  .note { color: #666; font-size: 12px; max-width: 1100px; }
</style>
</head>
<body data-render="pending">
<h1>shardtrain memory report</h1>
<p id="summary"></p>
<pre id="errors"></pre>
<script>
// Installed before anything else runs, so even a broken page reports why.
window.__reportErrors = [];
function __reportError(text) {
  window.__reportErrors.push(text);
  var e = document.getElementById("errors");
  if (e) e.textContent = "page errors:\n" + window.__reportErrors.join("\n");
  document.body.setAttribute("data-render", "error");
}
window.onerror = function (msg, src, line, col) {
  __reportError(msg + " (line " + line + ":" + col + ")");
};
window.addEventListener("unhandledrejection", function (ev) {
  __reportError("unhandled rejection: " + ev.reason);
});
(function () {
  var original = console.error;
  console.error = function () {
    __reportError("console.error: " + Array.prototype.join.call(arguments, " "));
    if (original) original.apply(console, arguments);
  };
})();
</script>

<h2>Timeline by category</h2>
<div>rank <select id="rank"></select> <span id="rankinfo" class="note"></span></div>
<div id="legend" class="legend"></div>
<svg id="timeline" width="1150" height="400" role="img" aria-label="memory timeline"></svg>
<p class="note">Stacked bytes held by category after every allocation and release (the
timeline is reduced to a few thousand points per rank, always keeping the highest one of
each time slice). The strip on top shows the training phases; dashed lines mark the rank's
measured peak and memplan's predicted peak.</p>

<h2>Peak per rank</h2>
<svg id="ranks" width="1150" height="80" role="img" aria-label="peak per rank"></svg>
<p class="note">Each bar is the rank's peak total, split into the categories held at that
moment.</p>

<h2>Predicted (memplan) vs measured</h2>
<table id="cmp"></table>
<svg id="cmpbars" width="1150" height="80" role="img" aria-label="predicted vs measured"></svg>
<p class="note">Per category: memplan's predicted peak for this config and world, and the
highest peak measured on any rank. The total row compares the peak of the sum.</p>
<h2>Largest allocations (rank <span id="tagrank">0</span>)</h2>
<table id="tags"></table>

<script type="application/json" id="report-data">@REPORT_DATA@</script>
<script>
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var CATS = ["params", "master_params", "grads", "optimizer_state", "activations",
              "comm_buffers", "workspace"];
  var COLORS = { params: "#4e79a7", master_params: "#f28e2b", grads: "#e15759",
                 optimizer_state: "#76b7b2", activations: "#59a14f", comm_buffers: "#edc948",
                 workspace: "#b07aa1" };
  var PHASE_COLORS = { init: "#d9d4d0", forward_backward: "#a0cbe8", optimizer: "#ffbe7d",
                       eval: "#8cd17d" };
  var report = JSON.parse(document.getElementById("report-data").textContent);

  function fmtBytes(b) {
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], v = Math.abs(b), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (b < 0 ? "-" : "") + (i === 0 ? String(v) : v.toFixed(2)) + " " + units[i];
  }
  function svgEl(parent, tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }
  function htmlEl(parent, tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    parent.appendChild(e);
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function phaseColor(name) { return PHASE_COLORS[name] || "#d4a6c8"; }

  // ---- Summary line ------------------------------------------------------------------------
  var lay = report.predicted.layout;
  var r0 = report.ranks[0];
  var steps = 0;
  var fbId = r0.phases.indexOf("forward_backward");
  r0.phase_marks.forEach(function (m) { if (m[1] === fbId) steps++; });
  document.getElementById("summary").textContent =
      report.world + " ranks = dp " + lay.dp + " x tp " + lay.tp + ", ZeRO stage " +
      lay.zero_stage + ", " + lay.compute + " compute, micro-batch " + lay.micro_batch + " x " +
      lay.seq_len + " tokens; " + steps + " steps recorded; " +
      report.predicted.num_params.toLocaleString("en-US") + " parameters.";

  // ---- Legend --------------------------------------------------------------------------------
  var legend = document.getElementById("legend");
  CATS.forEach(function (c) {
    var s = htmlEl(legend, "span");
    var i = htmlEl(s, "i");
    i.style.background = COLORS[c];
    s.appendChild(document.createTextNode(c));
  });
  r0.phases.forEach(function (p) {
    var s = htmlEl(legend, "span");
    var i = htmlEl(s, "i");
    i.style.background = phaseColor(p);
    s.appendChild(document.createTextNode("phase: " + p));
  });

  // ---- Timeline of one rank --------------------------------------------------------------------
  function drawTimeline(rank) {
    var r = report.ranks[rank];
    var svg = document.getElementById("timeline");
    clear(svg);
    var W = +svg.getAttribute("width"), Hh = +svg.getAttribute("height");
    var left = 84, right = 16, top = 28, bottom = 34;
    var pw = W - left - right, ph = Hh - top - bottom;
    var tl = r.timeline, n = tl.t_ms.length;
    document.getElementById("rankinfo").textContent =
        "peak " + fmtBytes(r.peak_total) + ", " + r.num_allocations + " allocations, " +
        r.num_events + " events recorded" + (r.phase_marks_truncated ? " (phase marks truncated)" : "");
    if (n === 0) {
      svgEl(svg, "text", { x: left, y: top + 20 }, "no timeline recorded on this rank");
      return;
    }
    var t0 = tl.t_ms[0], t1 = tl.t_ms[n - 1];
    r.phase_marks.forEach(function (m) { t1 = Math.max(t1, m[0]); });
    if (t1 <= t0) t1 = t0 + 1;
    var predicted = report.predicted.rank_bytes.total;
    var ymax = Math.max(predicted, r.peak_total, 1) * 1.06;
    function X(t) { return left + (t - t0) / (t1 - t0) * pw; }
    function Y(b) { return top + ph - b / ymax * ph; }

    // Axes and grid.
    // Byte ticks at a round step in the axis' unit (1, 2 or 5 x 10^k KiB, MiB, ...).
    var unit = 1;
    while (unit * 1024 <= ymax && unit < Math.pow(1024, 4)) unit *= 1024;
    var rawB = ymax / unit / 5, pB = Math.pow(10, Math.floor(Math.log10(rawB))), mB = rawB / pB;
    var stepB = (mB < 1.5 ? 1 : mB < 3.5 ? 2 : mB < 7.5 ? 5 : 10) * pB * unit;
    for (var b = 0; b <= ymax; b += stepB) {
      var y = Y(b);
      svgEl(svg, "line", { x1: left, x2: left + pw, y1: y, y2: y, stroke: "#eee" });
      svgEl(svg, "text", { x: left - 6, y: y + 4, "text-anchor": "end" }, fmtBytes(Math.round(b)));
    }
    // Time ticks at a round step (1, 2 or 5 x 10^k ms), labelled in ms below 1 s steps.
    var raw = (t1 - t0) / 8, p10 = Math.pow(10, Math.floor(Math.log10(raw))), m = raw / p10;
    var step = (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p10;
    var digits = Math.max(0, -Math.floor(Math.log10(step < 1000 ? step : step / 1000)));
    for (var t = Math.ceil(t0 / step) * step; t <= t1 + 1e-9; t += step) {
      var x = X(t);
      svgEl(svg, "line", { x1: x, x2: x, y1: top + ph, y2: top + ph + 4, stroke: "#999" });
      svgEl(svg, "text", { x: x, y: top + ph + 17, "text-anchor": "middle" },
            step < 1000 ? t.toFixed(digits) + " ms" : (t / 1000).toFixed(digits) + " s");
    }

    // Phase strip.
    var marks = r.phase_marks;
    for (var j = 0; j < marks.length; j++) {
      var xa = X(marks[j][0]), xb = X(j + 1 < marks.length ? marks[j + 1][0] : t1);
      var name = r.phases[marks[j][1]] || "?";
      var rect = svgEl(svg, "rect", { x: xa, y: 6, width: Math.max(0.5, xb - xa), height: 14,
                                      fill: phaseColor(name) });
      svgEl(rect, "title", {}, name);
    }
    if (marks.length === 0 || marks[0][0] > t0) {  // before the first mark: init
      svgEl(svg, "rect", { x: left, y: 6, width: Math.max(0.5, (marks.length ? X(marks[0][0]) : left + pw) - left),
                           height: 14, fill: phaseColor("init") });
    }

    // Stacked step areas, bottom category first.
    var cum = new Array(n).fill(0);
    CATS.forEach(function (c, ci) {
      var lower = cum.slice(), upper = new Array(n);
      for (var i = 0; i < n; i++) upper[i] = lower[i] + tl.bytes[i][ci];
      cum = upper;
      var any = false;
      for (var i2 = 0; i2 < n; i2++) if (tl.bytes[i2][ci] !== 0) { any = true; break; }
      if (!any) return;
      var pts = [];
      for (var i3 = 0; i3 < n; i3++) {
        var xe = X(i3 + 1 < n ? tl.t_ms[i3 + 1] : t1);
        pts.push(X(tl.t_ms[i3]).toFixed(1) + "," + Y(upper[i3]).toFixed(1));
        pts.push(xe.toFixed(1) + "," + Y(upper[i3]).toFixed(1));
      }
      for (var i4 = n - 1; i4 >= 0; i4--) {
        var xe2 = X(i4 + 1 < n ? tl.t_ms[i4 + 1] : t1);
        pts.push(xe2.toFixed(1) + "," + Y(lower[i4]).toFixed(1));
        pts.push(X(tl.t_ms[i4]).toFixed(1) + "," + Y(lower[i4]).toFixed(1));
      }
      var poly = svgEl(svg, "polygon", { points: pts.join(" "), fill: COLORS[c],
                                         "fill-opacity": 0.85, stroke: "none" });
      svgEl(poly, "title", {}, c + " (peak " + fmtBytes(r.peak[c]) + ")");
    });

    // Peak lines.
    function hline(b, color, label, dy) {
      var y = Y(b);
      svgEl(svg, "line", { x1: left, x2: left + pw, y1: y, y2: y, stroke: color,
                           "stroke-dasharray": "5,4", "stroke-width": 1.2 });
      svgEl(svg, "text", { x: left + pw - 4, y: y + dy, "text-anchor": "end", fill: color },
            label + " " + fmtBytes(b));
    }
    var close = Math.abs(Y(predicted) - Y(r.peak_total)) < 14;
    hline(r.peak_total, "#b00", "measured peak", -4);
    hline(predicted, "#333", "memplan peak", close ? 13 : -4);
    svgEl(svg, "line", { x1: left, x2: left, y1: top, y2: top + ph, stroke: "#999" });
    svgEl(svg, "line", { x1: left, x2: left + pw, y1: top + ph, y2: top + ph, stroke: "#999" });

    // Largest allocations of this rank.
    document.getElementById("tagrank").textContent = String(rank);
    var tags = document.getElementById("tags");
    clear(tags);
    var hr = htmlEl(tags, "tr");
    ["tag", "category", "peak"].forEach(function (h) { htmlEl(hr, "th", h); });
    r.top_tags.forEach(function (t) {
      var tr = htmlEl(tags, "tr");
      htmlEl(tr, "td", t.tag);
      htmlEl(tr, "td", t.category);
      htmlEl(tr, "td", fmtBytes(t.peak));
    });
  }

  var sel = document.getElementById("rank");
  report.ranks.forEach(function (r, i) {
    var o = document.createElement("option");
    o.value = String(i);
    o.textContent = "rank " + r.rank;
    sel.appendChild(o);
  });
  sel.addEventListener("change", function () { drawTimeline(+sel.value); });
  drawTimeline(0);

  // ---- Peak per rank: stacked bars of the categories at each rank's peak --------------------
  (function () {
    var svg = document.getElementById("ranks");
    var rowH = 22, left = 84, right = 110, top = 8;
    var W = +svg.getAttribute("width"), pw = W - left - right;
    svg.setAttribute("height", String(top + rowH * report.ranks.length + 24));
    var max = 1;
    report.ranks.forEach(function (r) { max = Math.max(max, r.peak_total); });
    report.ranks.forEach(function (r, i) {
      var y = top + i * rowH, x = left;
      svgEl(svg, "text", { x: left - 8, y: y + 14, "text-anchor": "end" }, "rank " + r.rank);
      CATS.forEach(function (c) {
        var w = r.at_peak[c] / max * pw;
        if (w <= 0) return;
        var rect = svgEl(svg, "rect", { x: x, y: y + 2, width: w, height: rowH - 6, fill: COLORS[c] });
        svgEl(rect, "title", {}, c + ": " + fmtBytes(r.at_peak[c]) + " at the peak (own peak " +
              fmtBytes(r.peak[c]) + ")");
        x += w;
      });
      svgEl(svg, "text", { x: x + 6, y: y + 14 }, fmtBytes(r.peak_total));
    });
  })();

  // ---- Predicted vs measured -------------------------------------------------------------------
  (function () {
    var cmp = report.comparison;
    var table = document.getElementById("cmp");
    var hr = htmlEl(table, "tr");
    ["category", "predicted", "measured (max over ranks)", "difference", "relative"].forEach(
        function (h) { htmlEl(hr, "th", h); });
    var rows = CATS.concat(["total"]);
    rows.forEach(function (c) {
      var v = cmp[c], tr = htmlEl(table, "tr");
      htmlEl(tr, "td", c);
      htmlEl(tr, "td", fmtBytes(v.predicted));
      htmlEl(tr, "td", fmtBytes(v.measured));
      htmlEl(tr, "td", (v.difference > 0 ? "+" : "") + fmtBytes(v.difference),
             v.difference !== 0 ? "bad" : undefined);
      htmlEl(tr, "td", v.predicted ? (100 * v.relative).toFixed(2) + " %" : "-");
    });
    var svg = document.getElementById("cmpbars");
    var rowH = 30, left = 120, right = 150, top = 6;
    var W = +svg.getAttribute("width"), pw = W - left - right;
    svg.setAttribute("height", String(top + rowH * rows.length + 8));
    var max = 1;
    rows.forEach(function (c) { max = Math.max(max, cmp[c].predicted, cmp[c].measured); });
    rows.forEach(function (c, i) {
      var y = top + i * rowH, v = cmp[c], color = COLORS[c] || "#555";
      svgEl(svg, "text", { x: left - 8, y: y + 16, "text-anchor": "end" }, c);
      var wp = v.predicted / max * pw, wm = v.measured / max * pw;
      svgEl(svg, "rect", { x: left, y: y + 2, width: Math.max(wp, 0), height: 11, fill: color,
                           "fill-opacity": 0.35, stroke: color });
      svgEl(svg, "rect", { x: left, y: y + 14, width: Math.max(wm, 0), height: 11, fill: color });
      svgEl(svg, "text", { x: left + Math.max(wp, wm) + 6, y: y + 12 },
            "predicted " + fmtBytes(v.predicted));
      svgEl(svg, "text", { x: left + Math.max(wp, wm) + 6, y: y + 25 },
            "measured " + fmtBytes(v.measured));
    });
  })();

  if (window.__reportErrors.length === 0) {
    document.body.setAttribute("data-render", "ok");
  }
})();
</script>
</body>
</html>
)PAGE";

}  // namespace shardtrain::launch
