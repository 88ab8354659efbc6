// Entry point of the kerastrace TensorBoard dashboard. TensorBoard loads this ES
// module in the plugin's iframe and calls render().

import {api, clear, el, message, showError} from './common.js';

const VIEWS = [
  {id: 'attention', kind: 'attention', title: 'Attention', module: './attention.js',
    hint: 'Log attention with kerastrace.tensorboard.AttentionMonitor (every epoch) or ' +
      'write_attention_data(logdir, kerastrace.attention.collect(model, x), tokens).'},
  {id: 'attribution', kind: 'attribution', title: 'Attributions', module: './attribution.js',
    hint: 'Log attributions with AttributionMonitor, write_attribution_data(logdir, ' +
      '{method: scores}, tokens, words=...) or write_explanations(logdir, explain_text(...)).'},
  {id: 'generation', kind: 'generation', title: 'Generation', module: './generation.js',
    hint: 'Log a generation trace with GenerationTrace.to_tensorboard(logdir) or ' +
      'write_generation_data(logdir, trace).'},
  {id: 'profile', kind: 'profile', title: 'Profile', module: './profile.js',
    hint: 'Log a profile with ModelProfile.to_tensorboard(logdir) or ' +
      'write_profile_data(logdir, profile_model(model, ...)).'},
  {id: 'gradients', kind: 'gradient_flow', title: 'Gradient flow', module: './gradients.js',
    hint: 'Log gradient norms with kerastrace.tensorboard.GradientFlow(logdir, (x, y)) ' +
      'or write_gradient_flow_data(logdir, norms, step).'},
];

function loadStyle() {
  if (document.getElementById('kt-style')) return;
  document.head.appendChild(el('link', {id: 'kt-style', rel: 'stylesheet',
    href: new URL('./style.css', import.meta.url).href}));
  document.head.appendChild(el('meta', {name: 'viewport', content: 'width=device-width'}));
  document.title = 'kerastrace';
}

export async function render() {
  loadStyle();
  const app = el('div', {id: 'kt-app', class: 'kt-app'});
  document.body.appendChild(app);
  const tabs = el('nav', {class: 'kt-tabs', role: 'tablist', id: 'kt-tabs'});
  const reload = el('button', {type: 'button', class: 'kt-reload', id: 'kt-reload',
    title: 'Read the log directory again'}, 'Reload');
  const header = el('header', {class: 'kt-header'},
      el('span', {class: 'kt-brand'}, 'kerastrace'), tabs, reload);
  const main = el('main', {class: 'kt-main', id: 'kt-main'});
  app.append(header, main);

  let index = null;
  let current = null;

  async function show(view) {
    current = view;
    for (const t of tabs.querySelectorAll('.kt-tab')) {
      t.setAttribute('aria-selected', String(t.dataset.view === view.id));
    }
    clear(main);
    const pane = el('section', {id: `kt-view-${view.id}`, class: 'kt-view', role: 'tabpanel',
      'data-kind': view.kind});
    main.appendChild(pane);
    const series = index.series.filter((s) => s.kind === view.kind);
    if (!series.length) {
      pane.appendChild(message(`No ${view.title.toLowerCase()} data in this log directory. ` +
          view.hint, 'empty'));
      return;
    }
    try {
      const mod = await import(view.module);
      await mod.mount(pane, index);
    } catch (err) {
      showError(pane, err);
    }
  }

  async function load() {
    try {
      index = await api('index');
    } catch (err) {
      showError(main, err);
      return;
    }
    clear(tabs);
    for (const view of VIEWS) {
      const n = index.series.filter((s) => s.kind === view.kind).length;
      const tab = el('button', {type: 'button', role: 'tab', class: 'kt-tab',
        id: `kt-tab-${view.id}`, 'data-view': view.id, 'data-count': n,
        title: n ? `${n} record(s)` : 'nothing logged yet'}, view.title);
      if (!n) tab.classList.add('kt-tab-empty');
      tab.addEventListener('click', () => show(view));
      tabs.appendChild(tab);
    }
    const wanted = new URLSearchParams(window.location.search).get('view');
    const first = VIEWS.find((v) => v.id === wanted) ||
        (current && VIEWS.find((v) => v.id === current.id)) ||
        VIEWS.find((v) => index.series.some((s) => s.kind === v.kind)) || VIEWS[0];
    if (!index.series.length) {
      clear(main);
      main.appendChild(message('No kerastrace data in this log directory yet. ' +
          'Log some with the monitors of kerastrace.tensorboard or its write_*_data ' +
          'functions, then press Reload.', 'empty'));
      return;
    }
    await show(first);
  }

  reload.addEventListener('click', () => load());
  await load();
}
