// Attention view: bertviz-style head view (lines) and heatmap of one layer, the
// layer x head overview, attention rollout and head statistics over the steps.

import {api, category, clear, el, heatmap, hideTip, legend, lineChart, message, segmented,
  select, sequential, seriesPicker, showError, showTip, svg, warm} from './common.js';

const ROW = 22;

export async function mount(pane, index) {
  const st = {sel: null, rec: null, layer: 0, heads: new Set(), mode: 'lines', query: null,
    hover: null, cache: new Map(), stat: 'entropy'};
  const body = el('div', {class: 'kt-body'});
  const picker = seriesPicker('kt-att', index, 'attention', (sel) => {
    st.sel = sel;
    load().catch((e) => showError(body, e));
  }, {onError: (e) => showError(body, e)});
  pane.append(picker, body);

  async function weights(layer) {
    const {run, tag, step} = st.sel;
    const key = `${run}|${tag}|${step}|${layer}`;
    if (!st.cache.has(key)) {
      st.cache.set(key, api('attention_weights', {run, tag, step, layer}));
    }
    return (await st.cache.get(key)).weights;
  }

  async function load() {
    const {run, tag, step} = st.sel;
    st.rec = await api('record', {run, tag, step});
    st.layer = Math.min(st.layer, st.rec.layers.length - 1);
    st.heads = new Set([...Array(st.rec.layers[st.layer].heads).keys()]);
    st.query = null;
    st.hover = null;
    await draw();
  }

  // ------------------------------------------------------------ layout
  async function draw() {
    clear(body);
    const rec = st.rec;
    const layer = rec.layers[st.layer];
    const controls = el('div', {class: 'kt-controls'},
        select('kt-att-layer', 'Layer', rec.layers.map((l, i) => [i, l.name]), st.layer, (v) => {
          st.layer = Number(v);
          st.heads = new Set([...Array(rec.layers[st.layer].heads).keys()]);
          draw().catch((e) => showError(body, e));
        }),
        headToggles(layer.heads),
        segmented('kt-att-mode', 'Show', [['lines', 'Lines'], ['heatmap', 'Heatmap']], st.mode,
            (v) => {
              st.mode = v;
              drawMain().catch((e) => showError(body, e));
            }));
    const info = el('p', {class: 'kt-info', id: 'kt-att-info'},
        `Example ${rec.example}, ${rec.tokens.length} tokens, step ${rec.step}. `,
        rec.causal ? 'Causal attention (each token sees only earlier ones). ' : '',
        'Hover a token on the left to see where it attends; click it to keep the selection. ' +
        'Line opacity and the highlight on the right show the attention weight.');
    const mainBox = el('div', {class: 'kt-att-main', id: 'kt-att-main'});
    const grid = el('section', {class: 'kt-section', id: 'kt-att-overview'},
        el('h3', {}, 'Layer × head overview'),
        el('p', {class: 'kt-info'}, 'Each cell is one head (rows: queries, columns: keys). ' +
          'Click a head to show it above.'),
        el('div', {id: 'kt-att-grid', class: 'kt-grid'}, message('Loading…')));
    const roll = el('section', {class: 'kt-section', id: 'kt-att-rollout'},
        el('h3', {}, 'Attention rollout'));
    const stats = el('section', {class: 'kt-section', id: 'kt-att-stats'},
        el('h3', {}, 'Head statistics over the steps'));
    body.append(controls, info, mainBox, grid, roll, stats);
    await drawMain();
    drawGrid(grid.querySelector('#kt-att-grid')).catch((e) => showError(grid, e));
    drawRollout(roll);
    drawStats(stats).catch((e) => showError(stats, e));
  }

  function headToggles(n) {
    const box = el('div', {class: 'kt-heads', id: 'kt-att-heads', role: 'group',
      'aria-label': 'heads'});
    const all = el('button', {type: 'button', class: 'kt-seg', id: 'kt-att-all-heads'}, 'All');
    all.addEventListener('click', () => {
      st.heads = new Set([...Array(n).keys()]);
      for (const c of box.querySelectorAll('input')) c.checked = true;
      drawMain().catch((e) => showError(body, e));
    });
    box.appendChild(all);
    for (let h = 0; h < n; h++) {
      const input = el('input', {type: 'checkbox', class: 'kt-head-toggle', 'data-head': h});
      input.checked = st.heads.has(h);
      input.addEventListener('change', () => {
        if (input.checked) st.heads.add(h);
        else st.heads.delete(h);
        drawMain().catch((e) => showError(body, e));
      });
      box.appendChild(el('label', {class: 'kt-head', style: {borderColor: category(h)}},
          input, el('span', {class: 'kt-swatch', style: {background: category(h)}}), `head ${h}`));
    }
    return el('div', {class: 'kt-field'}, el('span', {class: 'kt-label'}, 'Heads'), box);
  }

  // ------------------------------------------------------------ head view / heatmap
  function selectedHeads() {
    return [...st.heads].sort((a, b) => a - b);
  }

  function meanRow(w, i, heads) {
    const k = w[0][0].length;
    const out = new Array(k).fill(0);
    if (!heads.length) return out;
    for (const h of heads) for (let j = 0; j < k; j++) out[j] += w[h][i][j];
    return out.map((x) => x / heads.length);
  }

  function tokensOf(layer, axis) {
    const n = axis === 'q' ? layer.query_len : layer.key_len;
    return n === st.rec.tokens.length ? st.rec.tokens : [...Array(n).keys()].map(String);
  }

  async function drawMain() {
    const box = body.querySelector('#kt-att-main');
    if (!box) return;
    const layer = st.rec.layers[st.layer];
    const w = await weights(st.layer);
    clear(box);
    const detail = el('aside', {class: 'kt-detail', id: 'kt-att-detail'});
    const view = st.mode === 'lines' ? headView(w, layer, detail) : heatmapView(w, layer, detail);
    box.append(view, detail);
  }

  function headView(w, layer, detail) {
    const qt = tokensOf(layer, 'q');
    const kt = tokensOf(layer, 'k');
    const special = st.rec.special || [];
    const width = 520;
    const lx = 200;
    const rx = 320;
    const n = Math.max(qt.length, kt.length);
    const root = svg('svg', {id: 'kt-att-lines', class: 'kt-headview', width,
      height: n * ROW + 24, viewBox: `0 0 ${width} ${n * ROW + 24}`});
    root.appendChild(svg('text', {x: lx - 6, y: 12, 'text-anchor': 'end', class: 'kt-col-title'},
        'query (from)'));
    root.appendChild(svg('text', {x: rx + 6, y: 12, class: 'kt-col-title'}, 'key (to)'));
    const lines = svg('g', {class: 'kt-links'});
    root.appendChild(lines);
    const y = (i) => 24 + i * ROW + ROW / 2;
    const qs = qt.map((t, i) => {
      const g = svg('g', {class: 'kt-q kt-token' + (special[i] ? ' kt-special' : ''),
        'data-index': i, tabindex: 0, role: 'button', 'aria-label': `query ${t}`});
      g.append(svg('rect', {x: 4, y: y(i) - ROW / 2 + 1, width: lx - 8, height: ROW - 2, rx: 3}),
          svg('text', {x: lx - 8, y: y(i) + 4, 'text-anchor': 'end'}, clip(t)));
      g.addEventListener('mouseenter', () => {
        st.hover = i;
        focus();
      });
      g.addEventListener('mouseleave', () => {
        st.hover = null;
        focus();
      });
      g.addEventListener('click', () => {
        st.query = st.query === i ? null : i;
        focus();
      });
      g.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') {
          ev.preventDefault();
          st.query = st.query === i ? null : i;
          focus();
        }
      });
      root.appendChild(g);
      return g;
    });
    const ks = kt.map((t, j) => {
      const g = svg('g', {class: 'kt-k kt-token' + (special[j] ? ' kt-special' : ''),
        'data-index': j, 'data-weight': ''});
      g.append(svg('rect', {x: rx + 2, y: y(j) - ROW / 2 + 1, width: width - rx - 6,
        height: ROW - 2, rx: 3}),
      svg('text', {x: rx + 8, y: y(j) + 4}, clip(t)));
      root.appendChild(g);
      return g;
    });

    function focus() {
      const i = st.hover !== null ? st.hover : st.query;
      const heads = selectedHeads();
      clear(lines);
      for (const g of qs) {
        g.classList.toggle('kt-focus', Number(g.dataset.index) === i);
        g.classList.toggle('kt-locked', Number(g.dataset.index) === st.query);
      }
      if (i === null || i === undefined) {
        for (const g of ks) {
          g.dataset.weight = '';
          g.classList.remove('kt-target');
          g.querySelector('rect').style.fill = '';
          g.querySelector('text').style.fill = '';
        }
        // all queries, faint (bertviz's overview)
        for (const h of heads) {
          for (let a = 0; a < qt.length; a++) {
            for (let b = 0; b < kt.length; b++) {
              const x = w[h][a][b];
              if (x < 0.05) continue;
              lines.appendChild(svg('line', {x1: lx, y1: y(a), x2: rx, y2: y(b),
                stroke: category(h), 'stroke-opacity': (0.35 * x).toFixed(3),
                class: 'kt-link'}));
            }
          }
        }
        renderDetail(detail, null, null, qt, kt);
        return;
      }
      const row = meanRow(w, i, heads);
      const max = Math.max(...row, 1e-12);
      for (const h of heads) {
        for (let b = 0; b < kt.length; b++) {
          const x = w[h][i][b];
          if (x < 0.005) continue;
          lines.appendChild(svg('line', {x1: lx, y1: y(i), x2: rx, y2: y(b), stroke: category(h),
            'stroke-opacity': Math.min(1, 0.15 + 0.85 * x / max).toFixed(3),
            'stroke-width': (1 + 3 * x).toFixed(2), class: 'kt-link kt-link-focus'}));
        }
      }
      for (const g of ks) {
        const j = Number(g.dataset.index);
        const c = warm(row[j] / max);
        g.dataset.weight = row[j].toFixed(4);
        g.classList.toggle('kt-target', row[j] >= 0.5 * max && row[j] > 0);
        g.querySelector('rect').style.fill = c.bg;
        g.querySelector('text').style.fill = c.fg;
      }
      renderDetail(detail, i, row, qt, kt);
    }
    focus();
    const wrap = el('div', {class: 'kt-scroll'}, root);
    return wrap;
  }

  function heatmapView(w, layer, detail) {
    const qt = tokensOf(layer, 'q');
    const kt = tokensOf(layer, 'k');
    const heads = selectedHeads();
    const m = qt.map((_, i) => meanRow(w, i, heads));
    const cell = Math.max(8, Math.min(28, Math.floor(560 / Math.max(qt.length, kt.length))));
    const left = 110;
    const top = 90;
    const canvas = el('canvas', {id: 'kt-att-heatmap', class: 'kt-heatmap',
      width: left + kt.length * cell + 4, height: top + qt.length * cell + 4});
    const ctx = canvas.getContext('2d');
    let max = 0;
    for (const r of m) for (const x of r) max = Math.max(max, x);

    function paint() {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.font = '11px sans-serif';
      ctx.fillStyle = '#333';
      ctx.textAlign = 'right';
      qt.forEach((t, i) => ctx.fillText(clip(t, 14), left - 4, top + i * cell + cell / 2 + 4));
      ctx.save();
      kt.forEach((t, j) => {
        ctx.save();
        ctx.translate(left + j * cell + cell / 2 + 4, top - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.textAlign = 'left';
        ctx.fillText(clip(t, 12), 0, 0);
        ctx.restore();
      });
      ctx.restore();
      for (let i = 0; i < qt.length; i++) {
        for (let j = 0; j < kt.length; j++) {
          ctx.fillStyle = sequential(max > 0 ? m[i][j] / max : 0).bg;
          ctx.fillRect(left + j * cell, top + i * cell, cell, cell);
        }
      }
      if (st.query !== null && st.query < qt.length) {
        ctx.strokeStyle = '#d62728';
        ctx.lineWidth = 2;
        ctx.strokeRect(left - 1, top + st.query * cell - 1, kt.length * cell + 2, cell + 2);
      }
    }

    function at(ev) {
      const r = canvas.getBoundingClientRect();
      const x = (ev.clientX - r.left) * canvas.width / r.width - left;
      const yy = (ev.clientY - r.top) * canvas.height / r.height - top;
      const i = Math.floor(yy / cell);
      const j = Math.floor(x / cell);
      return i >= 0 && j >= 0 && i < qt.length && j < kt.length ? [i, j] : null;
    }
    canvas.addEventListener('mousemove', (ev) => {
      const p = at(ev);
      if (!p) return hideTip();
      showTip(ev, `${qt[p[0]]} → ${kt[p[1]]}: ${m[p[0]][p[1]].toFixed(4)}`);
    });
    canvas.addEventListener('mouseleave', hideTip);
    canvas.addEventListener('click', (ev) => {
      const p = at(ev);
      if (!p) return;
      st.query = st.query === p[0] ? null : p[0];
      paint();
      renderDetail(detail, st.query, st.query === null ? null : m[st.query], qt, kt);
    });
    paint();
    renderDetail(detail, st.query, st.query === null ? null : m[st.query], qt, kt);
    return el('div', {class: 'kt-scroll'}, canvas,
        legend('kt-att-legend', sequential, 0, 1, '0', max.toFixed(3),
            `mean attention weight over ${heads.length} head(s)`));
  }

  function renderDetail(detail, i, row, qt, kt) {
    clear(detail);
    const heads = selectedHeads();
    if (i === null || i === undefined || !row) {
      detail.append(el('h4', {}, 'No token selected'),
          el('p', {class: 'kt-info'}, `Layer ${st.rec.layers[st.layer].name}, ` +
            `head(s) ${heads.join(', ') || 'none'}. Hover or click a query token.`));
      return;
    }
    const order = row.map((x, j) => [x, j]).sort((a, b) => b[0] - a[0]).slice(0, 10);
    const max = Math.max(order[0] ? order[0][0] : 0, 1e-12);
    detail.append(el('h4', {id: 'kt-att-focus'}, `“${qt[i]}” attends to`),
        el('p', {class: 'kt-info'}, `position ${i}, mean over head(s) ${heads.join(', ')}`),
        el('table', {class: 'kt-toplist', id: 'kt-att-targets'},
            el('tbody', {}, order.map(([x, j]) => el('tr', {'data-index': j},
                el('td', {class: 'kt-tok'}, kt[j]),
                el('td', {class: 'kt-barcell'}, el('div', {class: 'kt-bar',
                  style: {width: `${(100 * x / max).toFixed(1)}%`}})),
                el('td', {class: 'kt-num'}, x.toFixed(3)))))));
  }

  // ------------------------------------------------------------ overview grid
  async function drawGrid(box) {
    const rec = st.rec;
    const all = await Promise.all(rec.layers.map((_, li) => weights(li)));
    clear(box);
    const maxHeads = Math.max(...rec.layers.map((l) => l.heads));
    const n = rec.tokens.length;
    const size = Math.max(48, Math.min(96, 4 * n));
    const table = el('table', {class: 'kt-thumbs'});
    const head = el('tr', {}, el('th', {}, ''));
    for (let h = 0; h < maxHeads; h++) head.appendChild(el('th', {}, `head ${h}`));
    table.appendChild(el('thead', {}, head));
    const tbody = el('tbody', {});
    rec.layers.forEach((layer, li) => {
      const tr = el('tr', {}, el('th', {class: 'kt-layer-name', title: layer.name},
          clip(layer.name, 28)));
      for (let h = 0; h < maxHeads; h++) {
        if (h >= layer.heads) {
          tr.appendChild(el('td', {}));
          continue;
        }
        const stat = rec.stats && rec.stats.entropy && rec.stats.entropy[li] ?
          `, entropy ${Number(rec.stats.entropy[li][h]).toFixed(2)}` : '';
        const c = heatmap(all[li][h], size, sequential, {class: 'kt-thumb', 'data-layer': li,
          'data-head': h, title: `${layer.name}, head ${h}${stat}`, role: 'button',
          tabindex: 0});
        if (li === st.layer && st.heads.has(h)) c.classList.add('kt-thumb-selected');
        const pick = () => {
          st.layer = li;
          st.heads = new Set([h]);
          draw().catch((e) => showError(body, e));
        };
        c.addEventListener('click', pick);
        c.addEventListener('keydown', (ev) => {
          if (ev.key === 'Enter') pick();
        });
        tr.appendChild(el('td', {}, c));
      }
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    box.appendChild(el('div', {class: 'kt-scroll'}, table));
  }

  // ------------------------------------------------------------ rollout
  function drawRollout(section) {
    const rec = st.rec;
    if (!rec.rollout) {
      section.appendChild(message('Rollout needs self-attention layers over one token ' +
          'sequence; this record has none.', 'empty'));
      return;
    }
    const toks = rec.tokens;
    let q = rec.causal ? toks.length - 1 : 0;
    const text = el('div', {class: 'kt-sentence', id: 'kt-att-rollout-text'});
    const caption = el('p', {class: 'kt-info'});

    function paint() {
      clear(text);
      const row = rec.rollout[q];
      const max = Math.max(...row, 1e-12);
      caption.textContent = `How much of each input token reaches position ${q} ` +
        `(“${toks[q]}”) through all layers (Abnar & Zuidema, 2020). Click a token to ` +
        'show its row.';
      toks.forEach((t, j) => {
        const c = warm(row[j] / max);
        const span = el('span', {class: 'kt-chip' + (j === q ? ' kt-chip-query' : ''),
          'data-index': j, 'data-score': row[j].toFixed(4), title: `${row[j].toFixed(4)}`,
          style: {background: c.bg, color: c.fg}}, t);
        span.addEventListener('click', () => {
          q = j;
          paint();
        });
        text.appendChild(span);
      });
    }
    paint();
    section.append(caption, text,
        legend('kt-rollout-legend', warm, 0, 1, '0', 'row max', 'share of the input token'),
        el('div', {class: 'kt-scroll'}, heatmap(rec.rollout, 320, sequential,
            {id: 'kt-att-rollout-map', class: 'kt-heatmap', title: 'rollout (rows: positions, ' +
              'columns: input tokens)'})));
  }

  // ------------------------------------------------------------ statistics
  async function drawStats(section) {
    const {run, tag} = st.sel;
    const data = await api('head_statistics', {run, tag});
    const stats = Object.keys(data.stats);
    const box = el('div', {id: 'kt-att-stats-chart'});
    if (!stats.length) {
      section.appendChild(message('No head statistics logged.', 'empty'));
      return;
    }
    if (!stats.includes(st.stat)) st.stat = stats[0];
    const labels = {entropy: 'entropy (nats)', distance: 'mean attention distance (tokens)',
      special_share: 'share of attention on special tokens'};

    function paint() {
      clear(box);
      const name = st.rec.layers[st.layer].name;
      const li = data.layers.indexOf(name);
      if (li < 0) {
        box.appendChild(message(`No statistics for layer ${name}.`, 'empty'));
        return;
      }
      const rows = data.stats[st.stat][li] || [];
      const series = rows.map((points, h) => ({name: `head ${h}`, color: category(h), points,
        tip: `head ${h}: ${points.length ? points[points.length - 1][1].toFixed(3) : 'n/a'} ` +
          'at the last step'}));
      box.appendChild(lineChart(series, {xLabel: 'step', yLabel: labels[st.stat] || st.stat,
        id: 'kt-att-stats-svg', label: `${st.stat} per head of ${name}`}));
      box.appendChild(el('div', {class: 'kt-keys'}, series.map((s) => el('span', {class: 'kt-key'},
          el('span', {class: 'kt-swatch', style: {background: s.color}}), s.name))));
    }
    section.append(el('div', {class: 'kt-controls'},
        select('kt-att-stat', 'Statistic', stats.map((s) => [s, labels[s] || s]), st.stat, (v) => {
          st.stat = v;
          paint();
        })),
    el('p', {class: 'kt-info'}, `Layer ${st.rec.layers[st.layer].name}; from the ` +
          (data.source === 'scalars' ? 'scalar summaries of every logged step.' :
            'logged attention records.')), box);
    paint();
  }
}

function clip(t, n = 24) {
  const s = String(t);
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}
