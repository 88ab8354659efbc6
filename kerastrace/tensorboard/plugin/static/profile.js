// Profile view: the per-layer table of a kerastrace profile, sortable by
// params / FLOPs / time / memory, collapsible by depth, with bars.

import {api, bytes, clear, el, human, segmented, select, seriesPicker,
  showError} from './common.js';

const COLUMNS = [
  {key: 'params', label: 'Params', total: 'params', self: 'self_params', fmt: human},
  {key: 'flops', label: 'FLOPs', total: 'flops', self: 'self_flops', fmt: human},
  {key: 'time', label: 'Time (ms)', total: 'time_ms', self: 'self_time_ms',
    fmt: (x) => x === null || x === undefined ? 'n/a' : x.toFixed(3)},
  {key: 'memory', label: 'Output memory', total: 'output_bytes', self: 'output_bytes', fmt: bytes},
];

function parentOf(row) {
  if (row.depth <= 0) return null;
  if (row.depth === 1) return '';
  const i = row.path.lastIndexOf('/');
  return i < 0 ? '' : row.path.slice(0, i);
}

export async function mount(pane, index) {
  const st = {rec: null, sort: 'order', desc: true, values: 'total', expanded: null};
  const body = el('div', {class: 'kt-body'});
  const picker = seriesPicker('kt-prof', index, 'profile', (sel) => {
    api('record', sel).then((rec) => {
      st.rec = rec;
      st.expanded = new Set(rec.layers.filter((r) => r.depth < 1).map((r) => r.path));
      draw();
    }).catch((e) => showError(body, e));
  }, {onError: (e) => showError(body, e)});
  pane.append(picker, body);

  function tree() {
    const rows = st.rec.layers;
    const byPath = new Map(rows.map((r) => [r.path, r]));
    const kids = new Map(rows.map((r) => [r.path, []]));
    const roots = [];
    for (const r of rows) {
      const p = parentOf(r);
      if (p === null || !kids.has(p) || p === r.path) roots.push(r);
      else kids.get(p).push(r);
    }
    return {byPath, kids, roots};
  }

  function value(row, col) {
    const v = row[st.values === 'self' ? col.self : col.total];
    return v === undefined ? null : v;
  }

  function sorted(list) {
    if (st.sort === 'order') return list;
    const out = list.slice();
    if (st.sort === 'name') {
      out.sort((a, b) => (a.name || a.path).localeCompare(b.name || b.path) * (st.desc ? -1 : 1));
      return out;
    }
    const col = COLUMNS.find((c) => c.key === st.sort);
    out.sort((a, b) => {
      const x = value(a, col);
      const y = value(b, col);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return st.desc ? y - x : x - y;
    });
    return out;
  }

  function draw() {
    clear(body);
    const rec = st.rec;
    const {kids, roots} = tree();
    const maxDepth = Math.max(...rec.layers.map((r) => r.depth));
    const root = rec.layers.find((r) => r.depth === 0) || rec.layers[0];
    const scale = {};
    for (const c of COLUMNS) {
      const vals = rec.layers.map((r) => value(r, c)).filter((x) => x !== null);
      scale[c.key] = c.key === 'memory' || st.values === 'self' ?
        Math.max(...vals, 1e-12) : Math.max(value(root, c) || 0, ...vals, 1e-12);
    }
    const summary = el('div', {class: 'kt-summary', id: 'kt-prof-summary'},
        el('div', {}, el('b', {}, rec.model_name), ` · batch size ${rec.batch_size} · inputs ` +
          `${rec.input_shapes_text || ''} · step ${rec.step}`),
        el('div', {}, `${human(rec.total_params)} parameters (${bytes(rec.param_bytes)}), ` +
          `${human(rec.total_flops)} FLOPs = 2 × ${human(rec.total_macs)} MACs + element-wise ` +
          `${human(rec.total_elementwise_flops)}, activations ${bytes(rec.activation_bytes)}`),
        el('div', {}, rec.time_available ?
          `traced op time per step ${Number(rec.total_time_ms).toFixed(3)} ms ` +
          `(${(100 * (rec.assigned_time_share || 0)).toFixed(1)}% assigned to layers)` +
          (rec.step_time_ms ? `, step wall time ${Number(rec.step_time_ms).toFixed(3)} ms` : '') :
          `measured time unavailable: ${rec.time_note || 'not traced'}`),
        el('div', {}, `peak device memory: ${rec.peak_memory_bytes === null ||
          rec.peak_memory_bytes === undefined ? 'n/a' : bytes(rec.peak_memory_bytes)}` +
          (rec.memory_note ? ` (${rec.memory_note})` : '')),
        rec.trace_dir ? el('div', {}, 'The op trace of these steps is in TensorBoard\'s ' +
          'Profile tab (trace viewer, op profile, memory profile).') : null);
    const depthOpts = [...Array(maxDepth + 1).keys()].slice(1).map((d) => [d, `${d}`]);
    const controls = el('div', {class: 'kt-controls'},
        select('kt-prof-depth', 'Expand to depth', [...depthOpts, ['all', 'all']],
            currentDepth(maxDepth), (v) => {
              const d = v === 'all' ? Infinity : Number(v);
              st.expanded = new Set(rec.layers.filter((r) => r.depth < d).map((r) => r.path));
              draw();
            }),
        segmented('kt-prof-values', 'Values', [['total', 'Total (with sublayers)'],
          ['self', 'Self (own ops)']], st.values, (v) => {
          st.values = v;
          draw();
        }),
        el('button', {type: 'button', class: 'kt-seg', id: 'kt-prof-order',
          onclick: () => {
            st.sort = 'order';
            draw();
          }}, 'Model order'));
    const header = el('tr', {},
        th('name', 'Layer'), el('th', {}, 'Class'), el('th', {}, 'Output shape'),
        COLUMNS.map((c) => th(c.key, c.label)));
    const tbody = el('tbody', {});
    const walk = (list) => {
      for (const r of sorted(list)) {
        const children = kids.get(r.path) || [];
        const open = st.expanded.has(r.path);
        const toggle = children.length ? el('button', {type: 'button', class: 'kt-toggle',
          'aria-expanded': String(open), 'aria-label': open ? 'collapse' : 'expand',
          onclick: () => {
            if (open) st.expanded.delete(r.path);
            else st.expanded.add(r.path);
            draw();
          }}, open ? '▾' : '▸') : el('span', {class: 'kt-toggle-space'});
        const label = r.path ? (st.sort === 'order' ? r.name || r.path : r.path) : r.name;
        const tr = el('tr', {class: 'kt-prof-row', 'data-path': r.path, 'data-depth': r.depth},
            el('td', {class: 'kt-prof-name', title: r.path || r.name},
                el('span', {style: {paddingLeft: `${r.depth * 16}px`}}), toggle, label,
                r.uncounted_ops ? el('span', {class: 'kt-mark',
                  title: 'some ops have no FLOP count: a lower bound'}, '*') : null),
            el('td', {class: 'kt-class'}, r.class_name || ''),
            el('td', {class: 'kt-shape'}, r.output_shape_text || ''),
            COLUMNS.map((c) => {
              const x = value(r, c);
              const pct = x === null ? 0 : Math.max(0, Math.min(100, 100 * x / scale[c.key]));
              return el('td', {class: 'kt-num kt-barcell', 'data-key': c.key,
                'data-value': x === null ? '' : x},
              el('div', {class: `kt-bar kt-bar-${c.key}`, style: {width: `${pct.toFixed(1)}%`}}),
              el('span', {class: 'kt-barlabel'}, c.fmt(x)));
            }));
        tbody.appendChild(tr);
        if (open) walk(children);
      }
    };
    walk(roots);
    const foot = el('p', {class: 'kt-info'},
        `Unassigned (ops outside every layer): ${human(rec.unassigned_flops)} FLOPs` +
        (rec.unassigned_time_ms !== null && rec.unassigned_time_ms !== undefined ?
          `, ${Number(rec.unassigned_time_ms).toFixed(3)} ms` : '') +
        '. Bars: share of the model total (memory: of the largest layer output). ' +
        (rec.flops_convention || ''));
    body.append(summary, controls,
        el('div', {class: 'kt-scroll'}, el('table', {class: 'kt-table', id: 'kt-prof-table'},
            el('thead', {}, header), tbody)), foot);
  }

  function currentDepth(maxDepth) {
    let d = 0;
    while (d <= maxDepth && st.rec.layers.filter((r) => r.depth === d)
        .every((r) => st.expanded.has(r.path))) d++;
    return d > maxDepth ? 'all' : Math.max(1, d);
  }

  function th(key, label) {
    const active = st.sort === key;
    const arrow = active ? (st.desc ? ' ▼' : ' ▲') : '';
    return el('th', {class: 'kt-sortable' + (active ? ' kt-sorted' : ''), 'data-key': key,
      'aria-sort': active ? (st.desc ? 'descending' : 'ascending') : 'none'},
    el('button', {type: 'button', class: 'kt-sort', onclick: () => {
      if (st.sort === key) st.desc = !st.desc;
      else {
        st.sort = key;
        st.desc = key !== 'name';
      }
      draw();
    }}, label + arrow));
  }
}
