// Gradient-flow view: per-layer gradient norms over the steps (log scale), with
// vanishing and exploding layers marked.

import {api, clear, el, lineChart, message, select, seriesPicker, showError} from './common.js';

const STATUS = {ok: 'ok', vanishing: 'vanishing', exploding: 'exploding'};

function layerColor(i, n) {
  // spread hues over the layers in model order (input side blue, output side red)
  const t = n > 1 ? i / (n - 1) : 0;
  return `hsl(${Math.round(220 - 220 * t)}, 65%, 45%)`;
}

export async function mount(pane, index) {
  const st = {data: null, focus: null, show: 'all'};
  const body = el('div', {class: 'kt-body'});
  const picker = seriesPicker('kt-grad', index, 'gradient_flow', (sel) => {
    api('gradient_flow', {run: sel.run, tag: sel.tag}).then((data) => {
      st.data = data;
      st.focus = null;
      draw();
    }).catch((e) => showError(body, e));
  }, {noStep: true, onError: (e) => showError(body, e)});
  pane.append(picker, body);

  function fmt(x) {
    return x === null || x === undefined ? 'not finite' : x.toExponential(2);
  }

  function draw() {
    clear(body);
    const d = st.data;
    if (!d.layers.length) {
      body.appendChild(message('No gradient norms in this record.', 'empty'));
      return;
    }
    const counts = {vanishing: 0, exploding: 0};
    for (const l of d.layers) if (counts[d.status[l]] !== undefined) counts[d.status[l]]++;
    const last = d.steps[d.steps.length - 1];
    const summary = el('div', {class: 'kt-summary', id: 'kt-grad-summary'},
        el('div', {}, `${d.layers.length} layers, ${d.steps.length} step(s); at the last step ` +
          `(${last}): `, el('span', {class: 'kt-badge kt-status-vanishing'},
            `${counts.vanishing} vanishing`), ' ',
        el('span', {class: 'kt-badge kt-status-exploding'}, `${counts.exploding} exploding`)),
        el('div', {class: 'kt-info'}, `Vanishing: norm below ${d.vanish_threshold}; exploding: ` +
          `above ${d.explode_threshold} or not finite. Norms are the L2 norm of the gradient ` +
          'of the loss over the weights each layer owns, on a fixed probe batch.'));
    const shown = d.layers.filter((l) => st.show === 'all' || d.status[l] !== 'ok' ||
        d.flagged[l].length);
    const controls = el('div', {class: 'kt-controls'},
        select('kt-grad-show', 'Layers', [['all', 'all layers'],
          ['flagged', 'flagged at some step']], st.show, (v) => {
          st.show = v;
          draw();
        }));
    const series = shown.map((l) => {
      const i = d.layers.indexOf(l);
      const pts = d.series[l];
      const marks = d.flagged[l].map(([s, status]) => {
        const p = pts.find((q) => q[0] === s);
        return [s, p ? p[1] : null, status];
      });
      return {name: l, color: layerColor(i, d.layers.length), points: pts, marks,
        cls: st.focus === null ? '' : (st.focus === l ? 'kt-hot' : 'kt-dim'),
        tip: `${l}: ${fmt(pts.length ? pts[pts.length - 1][1] : null)} at the last step`};
    });
    const chart = lineChart(series, {logY: true, xLabel: 'step (epoch)',
      yLabel: 'gradient norm (log)', id: 'kt-grad-chart', width: 760, height: 320,
      fitHlines: false,
      label: 'gradient norm per layer over the steps',
      hlines: [{y: d.vanish_threshold, label: 'vanishing', cls: 'kt-hline-vanishing'},
        {y: d.explode_threshold, label: 'exploding', cls: 'kt-hline-exploding'}]});
    const rows = shown.map((l) => {
      const pts = d.series[l].map((p) => p[1]);
      const finite = pts.filter((x) => x !== null);
      const status = d.status[l];
      const first = d.flagged[l].length ? d.flagged[l][0][0] : '';
      const tr = el('tr', {class: 'kt-grad-row' + (st.focus === l ? ' kt-hot' : ''),
        'data-layer': l, 'data-status': status},
      el('td', {class: 'kt-tok'}, el('span', {class: 'kt-swatch',
        style: {background: layerColor(d.layers.indexOf(l), d.layers.length)}}), l),
      el('td', {class: 'kt-num'}, fmt(pts[pts.length - 1])),
      el('td', {class: 'kt-num'}, finite.length ? fmt(Math.min(...finite)) : 'n/a'),
      el('td', {class: 'kt-num'}, finite.length ? fmt(Math.max(...finite)) : 'n/a'),
      el('td', {}, el('span', {class: `kt-badge kt-status-${status}`}, STATUS[status])),
      el('td', {class: 'kt-num'}, String(first)));
      tr.addEventListener('click', () => {
        st.focus = st.focus === l ? null : l;
        draw();
      });
      return tr;
    });
    body.append(summary, controls, el('div', {class: 'kt-scroll'}, chart),
        el('p', {class: 'kt-info'}, 'Circles mark flagged steps (blue: vanishing, red: ' +
          'exploding); the dashed threshold lines show when they fall inside the plotted ' +
          'range. Click a row to highlight its line.'),
        el('div', {class: 'kt-scroll'}, el('table', {class: 'kt-table', id: 'kt-grad-table'},
            el('thead', {}, el('tr', {}, el('th', {}, 'layer'), el('th', {}, 'last norm'),
                el('th', {}, 'min'), el('th', {}, 'max'), el('th', {}, 'status'),
                el('th', {}, 'first flagged step'))),
            el('tbody', {}, rows))));
  }
}
