// Generation view: generated tokens coloured by a step score; click one to colour
// the tokens it came from by their source scores.

import {api, clear, diverging, el, legend, message, segmented, select, sequential,
  seriesPicker, showError, signed} from './common.js';

const SCORES = {
  probability: {label: 'Probability', lo: 0, hi: 1, invert: false},
  entropy: {label: 'Entropy', lo: 0, hi: null, invert: true},
  rank: {label: 'Rank', lo: 0, hi: null, invert: true},
};

export async function mount(pane, index) {
  const st = {rec: null, example: 0, by: 'probability', k: null};
  const body = el('div', {class: 'kt-body'});
  const picker = seriesPicker('kt-gen', index, 'generation', (sel) => {
    api('record', sel).then((rec) => {
      st.rec = rec;
      st.example = Math.min(st.example, Math.max(rec.examples.length - 1, 0));
      st.k = null;
      draw();
    }).catch((e) => showError(body, e));
  }, {onError: (e) => showError(body, e)});
  pane.append(picker, body);

  function draw() {
    clear(body);
    const rec = st.rec;
    if (!rec.examples.length) {
      body.appendChild(message('This record holds no examples.', 'empty'));
      return;
    }
    const ex = rec.examples[st.example];
    const steps = ex.steps || {};
    const options = Object.keys(SCORES).filter((k) => Array.isArray(steps[k]));
    if (!options.includes(st.by)) st.by = options[0];
    const controls = el('div', {class: 'kt-controls'},
        select('kt-gen-example', 'Example', rec.examples.map((e, i) => [i,
          `${i}: ${(e.prompt || e.tokens.slice(0, e.prompt_len).join(' ')).slice(0, 48)}`]),
        st.example, (v) => {
          st.example = Number(v);
          st.k = null;
          draw();
        }),
        options.length ? segmented('kt-gen-by', 'Colour generated tokens by',
            options.map((k) => [k, SCORES[k].label]), st.by, (v) => {
              st.by = v;
              draw();
            }) : null);
    const info = el('p', {class: 'kt-info'},
        `Method ${rec.method}, attributed score: ${rec.score}, ` +
        `${rec.forced ? 'forced continuation' : rec.sampling} · step ${rec.step}. ` +
        'Click a generated token to colour the tokens it came from (red: supported it, ' +
        'blue: spoke against it).');
    const text = el('div', {class: 'kt-sentence', id: 'kt-gen-text'});
    const detail = el('aside', {class: 'kt-detail', id: 'kt-gen-detail'});
    const spec = SCORES[st.by];
    const values = st.by ? steps[st.by].map(Number) : [];
    const hi = spec && spec.hi !== null ? spec.hi : Math.max(...values, 1e-12);
    const colorOf = (x) => {
      const t = (x - (spec ? spec.lo : 0)) / Math.max(hi - (spec ? spec.lo : 0), 1e-12);
      return sequential(spec && spec.invert ? 1 - t : t);
    };
    const spans = ex.tokens.map((t, j) => {
      const gen = j >= ex.prompt_len;
      const k = j - ex.prompt_len;
      const attrs = {class: 'kt-chip ' + (gen ? 'kt-gen' : 'kt-prompt'), 'data-pos': j};
      if (gen) {
        attrs['data-step'] = k;
        attrs.role = 'button';
        attrs.tabindex = 0;
        if (st.by && values[k] !== undefined) {
          const c = colorOf(values[k]);
          attrs.style = {background: c.bg, color: c.fg};
          attrs.title = `${SCORES[st.by].label.toLowerCase()} ${values[k].toFixed(3)}`;
        }
      }
      const span = el('span', attrs, t);
      if (gen) {
        const pick = () => {
          st.k = st.k === k ? null : k;
          showSources();
        };
        span.addEventListener('click', pick);
        span.addEventListener('keydown', (ev) => {
          if (ev.key === 'Enter') pick();
        });
      }
      text.appendChild(span);
      text.appendChild(document.createTextNode(' '));
      return span;
    });

    function showSources() {
      clear(detail);
      for (const s of spans) {
        s.classList.remove('kt-selected');
        if (s.classList.contains('kt-prompt') || s.dataset.step !== undefined) {
          if (s.classList.contains('kt-prompt')) {
            s.style.background = '';
            s.style.color = '';
          }
          s.classList.remove('kt-source');
          delete s.dataset.score;
        }
      }
      if (st.k === null || !ex.sources[st.k]) {
        detail.append(el('h4', {}, 'No generated token selected'),
            el('p', {class: 'kt-info'}, 'Click a generated token (shaded) to see its sources.'));
        return;
      }
      const row = ex.sources[st.k];
      const upto = ex.prompt_len + st.k;
      const vmax = Math.max(...row.slice(0, upto).map(Math.abs), 1e-12);
      spans[upto].classList.add('kt-selected');
      for (let j = 0; j < upto; j++) {
        const s = spans[j];
        s.dataset.score = row[j].toFixed(5);
        s.classList.add('kt-source');
        if (s.classList.contains('kt-prompt')) {
          const c = diverging(row[j] / vmax);
          s.style.background = c.bg;
          s.style.color = c.fg;
        }
      }
      const order = row.slice(0, upto).map((x, j) => [x, j])
          .sort((a, b) => Math.abs(b[0]) - Math.abs(a[0])).slice(0, 6);
      const alt = steps.top_token_strings && steps.top_token_strings[st.k] ?
        steps.top_token_strings[st.k].map((t, i) => `${t} (${Number(
            steps.top_probabilities[st.k][i]).toFixed(3)})`).join(', ') : 'n/a';
      const num = (name, digits = 3) => steps[name] && steps[name][st.k] !== undefined ?
        Number(steps[name][st.k]).toFixed(digits) : 'n/a';
      detail.append(el('h4', {id: 'kt-gen-focus'}, `Step ${st.k}: “${ex.tokens[upto]}”`),
          el('p', {}, `probability ${num('probability')}, rank ${num('rank', 0)}, ` +
            `entropy ${num('entropy', 2)} nats`),
          el('p', {}, el('b', {}, 'Most likely: '), alt),
          el('table', {class: 'kt-toplist', id: 'kt-gen-sources'},
              el('thead', {}, el('tr', {}, el('th', {}, 'source'), el('th', {}, 'pos'),
                  el('th', {}, 'score'))),
              el('tbody', {}, order.map(([x, j]) => el('tr', {},
                  el('td', {class: 'kt-tok'}, ex.tokens[j]), el('td', {class: 'kt-num'}, j),
                  el('td', {class: 'kt-num', style: {color: x >= 0 ? '#b2182b' : '#2166ac'}},
                      signed(x)))))),
          legend('kt-gen-source-legend', diverging, -1, 1, signed(-vmax), signed(vmax),
              'source score of each earlier token'));
    }
    showSources();
    body.append(controls, info,
        el('div', {class: 'kt-att-main'}, el('div', {class: 'kt-gen-left'}, text,
            st.by ? legend('kt-gen-legend', (t) => sequential(spec.invert ? 1 - t : t), 0, 1,
                String(spec.lo), spec.hi !== null ? String(spec.hi) : hi.toFixed(2),
                `generated tokens: ${SCORES[st.by].label.toLowerCase()}` +
                (spec.invert ? ' (bright = low)' : ' (bright = high)')) : null),
        detail));
  }
}
