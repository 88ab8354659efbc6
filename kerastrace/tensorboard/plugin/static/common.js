// Shared helpers of the kerastrace dashboard: data access, DOM building, colours, charts.
// Plain ES module, no dependencies, no network beyond the plugin's own routes.

// In a page written by kerastrace.tensorboard.dashboard_html the plugin's answers are
// inlined (window.KT_DATA) and the modules load from blob: URLs (no base URL to resolve).
const INLINED = globalThis.KT_DATA || null;
const BASE = INLINED ? null : new URL('../', import.meta.url);  // /data/plugin/kerastrace/

/** GET a plugin route as JSON; throws an Error with the server's message. */
export async function api(route, params = {}) {
  if (INLINED) return inlined(route, params);
  const url = new URL(route, BASE);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
  }
  const resp = await fetch(url, {credentials: 'same-origin'});
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  if (!resp.ok) {
    const msg = body && body.error ? body.error : `${resp.status} ${resp.statusText}`;
    throw new Error(`${route}: ${msg}`);
  }
  return body;
}

/** The inlined answer to `route` with `params` (keys as dashboard_html writes them). */
function inlined(route, params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => [String(k), String(v)])
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : (a[1] < b[1] ? -1 : 1)));
  const key = JSON.stringify([route, entries]);
  if (!Object.prototype.hasOwnProperty.call(INLINED, key)) {
    throw new Error(`${route}: not saved in this page`);
  }
  const body = INLINED[key];
  if (body && body.__error__) throw new Error(body.__error__);
  return JSON.parse(JSON.stringify(body));  // a copy: views may change what they get
}

/** Create an element: el('div', {class: 'x', onclick: f}, child, 'text', ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Create an SVG element. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      node.addEventListener(k.slice(2), v);
    } else if (k === 'style' && typeof v === 'object') {
      Object.assign(node.style, v);
    } else if (k === 'text') {
      node.textContent = v;
    } else {
      node.setAttribute(k, v === true ? '' : String(v));
    }
  }
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(typeof c === 'string' || typeof c === 'number' ?
        document.createTextNode(String(c)) : c);
  }
}

/** Remove every child of `node`. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** A labelled <select>; `options` are [value, label] pairs or plain values. */
export function select(id, label, options, value, onChange) {
  const sel = el('select', {id, class: 'kt-select'});
  for (const opt of options) {
    const [v, text] = Array.isArray(opt) ? opt : [opt, String(opt)];
    const o = el('option', {value: String(v)}, String(text));
    if (String(v) === String(value)) o.selected = true;
    sel.appendChild(o);
  }
  sel.addEventListener('change', () => onChange(sel.value));
  return el('label', {class: 'kt-field'}, el('span', {class: 'kt-label'}, label), sel);
}

/** A message box (kind: 'info', 'empty' or 'error'). */
export function message(text, kind = 'info') {
  return el('div', {class: `kt-message kt-${kind}`, role: kind === 'error' ? 'alert' : 'note'},
      text);
}

/** Show `err` inside `container` (never as an uncaught error). */
export function showError(container, err) {
  clear(container);
  container.appendChild(message(String(err && err.message ? err.message : err), 'error'));
}

/** Format a number compactly: 1234567 -> "1.23M". */
export function human(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return 'n/a';
  const a = Math.abs(x);
  for (const [s, v] of [['T', 1e12], ['G', 1e9], ['M', 1e6], ['K', 1e3]]) {
    if (a >= v) return (x / v).toPrecision(digits) + s;
  }
  return Number.isInteger(x) ? String(x) : x.toPrecision(digits);
}

/** Bytes as KiB/MiB/GiB. */
export function bytes(x) {
  if (x === null || x === undefined) return 'n/a';
  for (const [s, v] of [['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]]) {
    if (x >= v) return (x / v).toFixed(2) + ' ' + s;
  }
  return `${Math.round(x)} B`;
}

/** A score with 3 significant digits and its sign. */
export function signed(x) {
  if (x === null || x === undefined) return 'n/a';
  const s = Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(3) : x.toExponential(2);
  return x > 0 ? '+' + s : s;
}

// ------------------------------------------------------------------ colours

function mix(a, b, t) {
  return [0, 1, 2].map((i) => Math.round(a[i] + (b[i] - a[i]) * t));
}

function luminance([r, g, b]) {
  const f = (c) => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
}

/** Text colour that reads on an [r, g, b] background. */
export function textOn(rgb) {
  // Black or white, whichever contrasts more (WCAG ratio (L1 + 0.05) / (L2 + 0.05)):
  // black wins above L = sqrt(1.05 * 0.05) - 0.05 ~ 0.179.
  const l = luminance(rgb);
  return (l + 0.05) / 0.05 >= 1.05 / (l + 0.05) ? '#000' : '#fff';
}

const RED = [178, 24, 43];
const BLUE = [33, 102, 172];
const WHITE = [247, 247, 247];

/** Diverging colour for t in [-1, 1]: blue (negative), white (0), red (positive). */
export function diverging(t) {
  const x = Math.max(-1, Math.min(1, Number.isFinite(t) ? t : 0));
  const rgb = x >= 0 ? mix(WHITE, RED, x) : mix(WHITE, BLUE, -x);
  return {rgb, bg: `rgb(${rgb.join(',')})`, fg: textOn(rgb)};
}

// viridis, sampled at 9 stops
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];

/** Sequential colour (viridis) for t in [0, 1]. */
export function sequential(t) {
  const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const rgb = mix(VIRIDIS[i], VIRIDIS[i + 1], x - i);
  return {rgb, bg: `rgb(${rgb.join(',')})`, fg: textOn(rgb)};
}

/** Light-to-dark single hue (for token highlights): t in [0, 1]. */
export function warm(t) {
  const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0));
  const rgb = mix([255, 255, 255], [217, 95, 2], x);
  return {rgb, bg: `rgb(${rgb.join(',')})`, fg: textOn(rgb)};
}

/** Categorical colours (one per head / layer). */
export const CATEGORICAL = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
  '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

export function category(i) {
  const base = CATEGORICAL[i % CATEGORICAL.length];
  return base;
}

/** A horizontal colour legend: `colorOf(t)` over [lo, hi] with labels. */
export function legend(id, colorOf, lo, hi, loLabel, hiLabel, caption) {
  const stops = [];
  for (let i = 0; i <= 10; i++) {
    const t = lo + (hi - lo) * i / 10;
    stops.push(`${colorOf(t).bg} ${i * 10}%`);
  }
  return el('div', {id, class: 'kt-legend'},
      caption ? el('div', {class: 'kt-legend-caption'}, caption) : null,
      el('div', {class: 'kt-legend-row'},
          el('span', {class: 'kt-legend-label'}, loLabel),
          el('span', {class: 'kt-legend-bar',
            style: {background: `linear-gradient(to right, ${stops.join(', ')})`}}),
          el('span', {class: 'kt-legend-label'}, hiLabel)));
}

// ------------------------------------------------------------------ tooltip

let tip = null;

/** Show a tooltip near the mouse event `ev`. */
export function showTip(ev, text) {
  if (!tip) {
    tip = el('div', {class: 'kt-tip', role: 'tooltip'});
    document.body.appendChild(tip);
  }
  tip.textContent = text;
  tip.style.display = 'block';
  const x = ev.clientX + 14;
  const y = ev.clientY + 14;
  tip.style.left = Math.min(x, window.innerWidth - tip.offsetWidth - 8) + 'px';
  tip.style.top = Math.min(y, window.innerHeight - tip.offsetHeight - 8) + 'px';
}

export function hideTip() {
  if (tip) tip.style.display = 'none';
}

// ------------------------------------------------------------------ heatmap

/**
 * Draw matrix `m` (rows x cols) on a canvas of about `size` pixels, coloured by
 * `colorOf(value / max)`. Returns the canvas.
 */
export function heatmap(m, size, colorOf = sequential, attrs = {}) {
  const rows = m.length;
  const cols = rows ? m[0].length : 0;
  const cell = Math.max(1, Math.floor(size / Math.max(rows, cols, 1)));
  const canvas = el('canvas', {width: cols * cell, height: rows * cell, ...attrs});
  const ctx = canvas.getContext('2d');
  let max = 0;
  for (const row of m) for (const x of row) if (x > max) max = x;
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      ctx.fillStyle = colorOf(max > 0 ? m[i][j] / max : 0).bg;
      ctx.fillRect(j * cell, i * cell, cell, cell);
    }
  }
  canvas.dataset.cell = String(cell);
  return canvas;
}

// ------------------------------------------------------------------ line chart

/**
 * An SVG line chart. `series`: [{name, color, points: [[x, y]], cls}]; options:
 * {width, height, logY, xLabel, yLabel, hlines: [{y, label, cls}], id}.
 */
export function lineChart(series, opts = {}) {
  const W = opts.width || 640;
  const H = opts.height || 260;
  const m = {l: 64, r: 16, t: 12, b: 40};
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null &&
      Number.isFinite(p[1]) && (!opts.logY || p[1] > 0)));
  const ys = pts.map((p) => p[1]).concat(opts.fitHlines === false ? [] :
      (opts.hlines || []).map((h) => h.y));
  const xs = pts.map((p) => p[0]);
  let x0 = Math.min(...xs);
  let x1 = Math.max(...xs);
  if (!Number.isFinite(x0)) {
    x0 = 0;
    x1 = 1;
  }
  if (x0 === x1) {
    x0 -= 0.5;
    x1 += 0.5;
  }
  const tr = opts.logY ? (y) => Math.log10(y) : (y) => y;
  const tys = ys.filter((y) => !opts.logY || y > 0).map(tr);
  let y0 = Math.min(...tys);
  let y1 = Math.max(...tys);
  if (!Number.isFinite(y0)) {
    y0 = 0;
    y1 = 1;
  }
  if (y0 === y1) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const pad = opts.logY ? Math.max(0.15, (y1 - y0) * 0.06) : (y1 - y0) * 0.06;
  y0 -= pad;
  y1 += pad;
  const sx = (x) => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
  const sy = (y) => H - m.b - (tr(y) - y0) / (y1 - y0) * (H - m.t - m.b);
  const root = svg('svg', {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: 'kt-chart',
    id: opts.id, role: 'img', 'aria-label': opts.label || 'chart'});
  // axes and ticks
  const axis = svg('g', {class: 'kt-axis'});
  axis.appendChild(svg('line', {x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b}));
  axis.appendChild(svg('line', {x1: m.l, y1: m.t, x2: m.l, y2: H - m.b}));
  const xticks = niceTicks(x0, x1, 6).filter((x) => Number.isInteger(x) || x1 - x0 > 10);
  for (const x of xticks) {
    axis.appendChild(svg('line', {x1: sx(x), y1: H - m.b, x2: sx(x), y2: H - m.b + 4}));
    axis.appendChild(svg('text', {x: sx(x), y: H - m.b + 16, 'text-anchor': 'middle'},
        String(x)));
  }
  const yticks = opts.logY ? logTicks(y0, y1) : niceTicks(y0, y1, 5);
  const ystep = yticks.length > 1 ? yticks[1] - yticks[0] : 1;
  const digits = Math.max(0, Math.min(8, -Math.floor(Math.log10(ystep))));
  for (const t of yticks) {
    const y = opts.logY ? 10 ** t : t;
    axis.appendChild(svg('line', {x1: m.l - 4, y1: sy(y), x2: W - m.r, y2: sy(y),
      class: 'kt-grid'}));
    axis.appendChild(svg('text', {x: m.l - 6, y: sy(y) + 4, 'text-anchor': 'end'},
        opts.logY ? y.toExponential(0) : (Math.abs(y) >= 1e4 ? human(y, 3) :
          y.toFixed(digits))));
  }
  if (opts.xLabel) {
    axis.appendChild(svg('text', {x: (m.l + W - m.r) / 2, y: H - 6, 'text-anchor': 'middle',
      class: 'kt-axis-label'}, opts.xLabel));
  }
  if (opts.yLabel) {
    axis.appendChild(svg('text', {x: 12, y: (m.t + H - m.b) / 2, 'text-anchor': 'middle',
      transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`, class: 'kt-axis-label'}, opts.yLabel));
  }
  root.appendChild(axis);
  for (const h of opts.hlines || []) {
    if (opts.logY && h.y <= 0) continue;
    const y = sy(h.y);
    if (y < m.t || y > H - m.b) continue;
    root.appendChild(svg('line', {x1: m.l, x2: W - m.r, y1: y, y2: y, class: `kt-hline ${h.cls || ''}`}));
    root.appendChild(svg('text', {x: W - m.r - 4, y: y - 4, 'text-anchor': 'end',
      class: `kt-hline-label ${h.cls || ''}`}, h.label));
  }
  for (const s of series) {
    const g = svg('g', {class: `kt-series ${s.cls || ''}`, 'data-name': s.name});
    const good = s.points.filter((p) => p[1] !== null && Number.isFinite(p[1]) &&
        (!opts.logY || p[1] > 0));
    if (good.length > 1) {
      const d = good.map((p, i) => `${i ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
      g.appendChild(svg('path', {d: d.join(''), stroke: s.color, class: 'kt-line'}));
    }
    for (const p of good) {
      g.appendChild(svg('circle', {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color,
        class: 'kt-point'}));
    }
    for (const f of s.marks || []) {
      // flagged points; a missing (non-finite) value is drawn at the top edge
      const y = f[1] === null || !Number.isFinite(f[1]) || (opts.logY && f[1] <= 0) ?
        (f[2] === 'vanishing' ? H - m.b : m.t) : sy(f[1]);
      g.appendChild(svg('circle', {cx: sx(f[0]), cy: y, r: 5,
        class: `kt-flag kt-flag-${f[2]}`, 'data-step': f[0]}));
    }
    g.addEventListener('mousemove', (ev) => showTip(ev, s.tip || s.name));
    g.addEventListener('mouseleave', hideTip);
    root.appendChild(g);
  }
  return root;
}

/** log10 tick positions between a and b (log10 units): decades, or 1-2-5 within few decades. */
function logTicks(a, b) {
  const out = [];
  const mult = b - a < 2.5 ? [1, 2, 5] : [1];
  const step = b - a > 12 ? Math.ceil((b - a) / 8) : 1;
  for (let k = Math.floor(a); k <= Math.ceil(b); k += step) {
    for (const m of mult) {
      const t = k + Math.log10(m);
      if (t >= a && t <= b) out.push(t);
    }
  }
  return out;
}

/** About `n` round tick values between a and b. */
export function niceTicks(a, b, n) {
  const span = b - a;
  if (!(span > 0)) return [a];
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => span / s <= n) || 10 * mag;
  const out = [];
  for (let x = Math.ceil(a / step) * step; x <= b + 1e-9; x += step) {
    out.push(Math.abs(x) < 1e-12 ? 0 : Number(x.toPrecision(10)));
  }
  return out;
}

/** A segmented button group; returns the group element. */
export function segmented(id, label, options, value, onChange) {
  const group = el('div', {id, class: 'kt-segmented', role: 'group', 'aria-label': label});
  for (const opt of options) {
    const [v, text] = Array.isArray(opt) ? opt : [opt, String(opt)];
    const b = el('button', {type: 'button', class: 'kt-seg', 'data-value': v,
      'aria-pressed': String(String(v) === String(value))}, text);
    b.addEventListener('click', () => {
      for (const o of group.querySelectorAll('.kt-seg')) {
        o.setAttribute('aria-pressed', String(o === b));
      }
      onChange(v);
    });
    group.appendChild(b);
  }
  return el('div', {class: 'kt-field'}, el('span', {class: 'kt-label'}, label), group);
}

/** Series of `kind` in the index, grouped as {run: [series]}. */
export function byRun(index, kind) {
  const out = {};
  for (const s of index.series.filter((x) => x.kind === kind)) {
    (out[s.run] = out[s.run] || []).push(s);
  }
  return out;
}

/**
 * Run / record / step pickers for a view. Calls `onPick({run, tag, step})` at once
 * and on every change. Returns the controls element.
 */
export function seriesPicker(prefix, index, kind, onPick, opts = {}) {
  const runs = byRun(index, kind);
  const names = Object.keys(runs);
  const state = {run: names[0], tag: runs[names[0]][0].tag, step: null};
  const box = el('div', {class: 'kt-controls', id: `${prefix}-picker`});
  const stepBox = el('span', {class: 'kt-stepbox'});

  async function loadSteps() {
    clear(stepBox);
    if (opts.noStep) {
      onPick({...state});
      return;
    }
    const steps = await api('steps', {run: state.run, tag: state.tag});
    state.step = steps.length ? steps[steps.length - 1].step : null;
    stepBox.appendChild(select(`${prefix}-step`, 'Step', steps.map((s) => s.step), state.step,
        (v) => {
          state.step = Number(v);
          onPick({...state});
        }));
    onPick({...state});
  }

  function tagSelect() {
    return select(`${prefix}-tag`, 'Record', runs[state.run].map((s) => [s.tag, s.name]),
        state.tag, (v) => {
          state.tag = v;
          loadSteps().catch((e) => opts.onError && opts.onError(e));
        });
  }

  let tagBox = el('span', {}, tagSelect());
  box.appendChild(select(`${prefix}-run`, 'Run', names, state.run, (v) => {
    state.run = v;
    state.tag = runs[v][0].tag;
    const fresh = el('span', {}, tagSelect());
    tagBox.replaceWith(fresh);
    tagBox = fresh;
    loadSteps().catch((e) => opts.onError && opts.onError(e));
  }));
  box.appendChild(tagBox);
  box.appendChild(stepBox);
  loadSteps().catch((e) => opts.onError && opts.onError(e));
  return box;
}
