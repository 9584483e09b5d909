// Small time-series charts drawn as SVG by hand: a few lines over the last minutes,
// the y axis from 0 to a rounded maximum, a legend with each line's latest value. About
// a hundred lines instead of a charting library: the console draws four charts of at
// most 300 points, and this keeps the pages free of a build step and of third-party code.

const NS = "http://www.w3.org/2000/svg";
const W = 320;
const H = 120;
const PAD = { left: 34, right: 6, top: 8, bottom: 18 };

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A "nice" upper bound for the axis: 1, 2 or 5 times a power of ten. */
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

/** Numbers as people read them: 1.2k, 15, 0.35, 3.4 ms. */
export function formatValue(value, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  let text;
  const abs = Math.abs(value);
  if (abs >= 1e6) text = (value / 1e6).toFixed(abs >= 1e7 ? 0 : 1) + "M";
  else if (abs >= 1e3) text = (value / 1e3).toFixed(abs >= 1e4 ? 0 : 1) + "k";
  else if (abs >= 10 || Number.isInteger(value)) text = String(Math.round(value));
  else if (abs >= 1) text = value.toFixed(1);
  else text = value.toFixed(2);
  return unit ? `${text} ${unit}` : text;
}

/**
 * Draw `series` ([{name, values, color}]) against times `t` (unix seconds) into `box`.
 * Missing values (null) leave a gap. Replaces whatever the box held.
 */
export function lineChart(box, t, series, { unit = "", title = "" } = {}) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart-svg" });
  root.append(svg("title", {}, title));
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const top = niceMax(Math.max(0, ...all));
  for (const f of [0, 0.5, 1]) {
    const y = y0 - (y0 - y1) * f;
    root.append(svg("line", { x1: x0, x2: x1, y1: y, y2: y, class: "grid" }));
    root.append(svg("text", { x: x0 - 4, y: y + 3, class: "axis", "text-anchor": "end" }, formatValue(top * f)));
  }
  const start = t.length ? t[0] : 0;
  const end = t.length ? t[t.length - 1] : 1;
  const span = Math.max(1, end - start);
  const minutes = Math.round(span / 60);
  root.append(svg("text", { x: x0, y: H - 4, class: "axis" }, minutes ? `−${minutes} min` : `−${Math.round(span)} s`));
  root.append(svg("text", { x: x1, y: H - 4, class: "axis", "text-anchor": "end" }, "now"));
  for (const s of series) {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      const x = x0 + ((t[i] - start) / span) * (x1 - x0);
      const y = y0 - (Math.min(v, top) / top) * (y0 - y1);
      d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
      pen = true;
    });
    if (d) root.append(svg("path", { d, class: "line", stroke: s.color }));
  }
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const s of series) {
    const last = [...s.values].reverse().find((v) => v !== null && v !== undefined);
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = s.color;
    item.append(swatch, `${s.name} `);
    const value = document.createElement("b");
    value.textContent = formatValue(last ?? null, unit);
    item.append(value);
    legend.append(item);
  }
  box.replaceChildren(root, legend);
  if (!t.length) {
    const empty = document.createElement("p");
    empty.className = "muted chart-empty";
    empty.textContent = "Collecting: the first points appear within a few seconds.";
    box.append(empty);
  }
}
