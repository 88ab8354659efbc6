// Attribution view: the sentence coloured by score (words when logged, tokens
// otherwise), the method switchable, the prediction, a legend and the top units.

import {api, clear, diverging, el, legend, message, segmented, select, seriesPicker,
  showError, signed} from './common.js';

export async function mount(pane, index) {
  const st = {rec: null, example: 0, method: null, unit: 'words'};
  const body = el('div', {class: 'kt-body'});
  const picker = seriesPicker('kt-attr', index, 'attribution', (sel) => {
    api('record', sel).then((rec) => {
      st.rec = rec;
      st.example = Math.min(st.example, rec.examples.length - 1);
      if (!rec.methods.includes(st.method)) st.method = rec.methods[0];
      draw();
    }).catch((e) => showError(body, e));
  }, {onError: (e) => showError(body, e)});
  pane.append(picker, body);

  function className(c) {
    if (c === null || c === undefined) return 'n/a';
    const names = st.rec.class_names;
    return names && names[c] !== undefined ? `${names[c]} (class ${c})` : `class ${c}`;
  }

  function units(ex) {
    const words = st.unit === 'words' && ex.words && ex.word_scores &&
      ex.word_scores[st.method];
    if (words) {
      return {kind: 'words', items: ex.words.map((w, i) => ({text: w.word, start: w.start,
        end: w.end, score: ex.word_scores[st.method][i], special: false,
        unknown: Boolean(ex.unknown_words && ex.unknown_words[i])}))};
    }
    return {kind: 'tokens', items: ex.tokens.map((t, i) => ({text: t,
      score: ex.scores[st.method][i], special: ex.special[i]}))};
  }

  function draw() {
    clear(body);
    const rec = st.rec;
    if (!rec.examples.length) {
      body.appendChild(message('This record holds no examples.', 'empty'));
      return;
    }
    const ex = rec.examples[st.example];
    const hasWords = Boolean(ex.words);
    if (!hasWords) st.unit = 'tokens';
    const controls = el('div', {class: 'kt-controls'},
        select('kt-attr-example', 'Example', rec.examples.map((e, i) => [i,
          `${i}: ${(e.text || e.tokens.join(' ')).slice(0, 48)}`]), st.example, (v) => {
          st.example = Number(v);
          st.unit = 'words';
          draw();
        }),
        segmented('kt-attr-method', 'Method', rec.methods, st.method, (v) => {
          st.method = v;
          draw();
        }),
        segmented('kt-attr-unit', 'Show', hasWords ? [['words', 'Words'], ['tokens', 'Tokens']] :
          [['tokens', 'Tokens']], st.unit, (v) => {
          st.unit = v;
          draw();
        }));
    const {kind, items} = units(ex);
    const ranked = items.filter((u) => !u.special && Number.isFinite(u.score));
    const vmax = Math.max(...ranked.map((u) => Math.abs(u.score)), 1e-12);
    const head = el('div', {class: 'kt-summary', id: 'kt-attr-summary'},
        el('div', {}, el('b', {}, ex.text !== null && ex.text !== undefined ? 'Text: ' :
          'Tokens: '), el('span', {id: 'kt-attr-sentence'},
            ex.text !== null && ex.text !== undefined ? ex.text : ex.tokens.join(' '))),
        el('div', {id: 'kt-attr-prediction'}, el('b', {}, 'Prediction: '),
            ex.predicted === null ? 'not logged' :
              `${className(ex.predicted)}, probability ${ex.probability.toFixed(3)}`),
        el('div', {}, el('b', {}, 'Explained: '), className(ex.target),
            ex.label !== null && ex.label !== undefined ? [el('b', {}, ' · Label: '),
              className(ex.label)] : null),
        el('div', {}, el('b', {}, 'Method: '), el('span', {id: 'kt-attr-method-name'}, st.method),
            ` · ${kind === 'words' ? 'scores summed over each word\'s pieces' :
              'token (word-piece) scores'} · step ${rec.step}`));
    const text = el('div', {class: 'kt-sentence kt-attr-text', id: 'kt-attr-text',
      'data-unit': kind, 'data-method': st.method});
    let cursor = 0;
    for (const u of items) {
      if (kind === 'words' && ex.text && u.start > cursor) {
        text.appendChild(document.createTextNode(ex.text.slice(cursor, u.start)));
      }
      const c = diverging(u.special ? 0 : u.score / vmax);
      text.appendChild(el('span', {class: 'kt-chip kt-unit' + (u.special ? ' kt-special' : '') +
        (u.unknown ? ' kt-unknown' : ''),
        'data-score': Number.isFinite(u.score) ? u.score.toFixed(6) : '',
        title: `${u.text}: ${signed(u.score)}${u.special ? ' (special token, not ranked)' : ''}` +
          (u.unknown ? ' (unknown to the model: read as [UNK])' : ''),
        style: u.special ? {} : {background: c.bg, color: c.fg}}, u.text));
      if (kind === 'words' && ex.text) cursor = u.end;
      else text.appendChild(document.createTextNode(' '));
    }
    if (kind === 'words' && ex.text && cursor < ex.text.length) {
      text.appendChild(document.createTextNode(ex.text.slice(cursor)));
    }
    const top = ranked.slice().sort((a, b) => Math.abs(b.score) - Math.abs(a.score)).slice(0, 8);
    const table = el('table', {class: 'kt-toplist', id: 'kt-attr-top'},
        el('thead', {}, el('tr', {}, el('th', {}, 'rank'), el('th', {}, kind === 'words' ?
          'word' : 'token'), el('th', {}, 'score'), el('th', {}, ''))),
        el('tbody', {}, top.map((u, r) => {
          const c = diverging(u.score / vmax);
          return el('tr', {}, el('td', {class: 'kt-num'}, r + 1), el('td', {class: 'kt-tok'},
              u.text), el('td', {class: 'kt-num'}, signed(u.score)),
          el('td', {class: 'kt-barcell'}, el('div', {class: 'kt-bar',
            style: {width: `${(100 * Math.abs(u.score) / vmax).toFixed(1)}%`,
              background: c.bg}})));
        })));
    body.append(controls, head, text,
        legend('kt-attr-legend', diverging, -1, 1, signed(-vmax), signed(vmax),
            'red: supports the explained class · blue: speaks against it · ' +
            'grey: special tokens (not ranked)'),
        el('h3', {}, `Top ${kind}`), table);
  }
}
