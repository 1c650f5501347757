/**
 * The Datasets panel's "Not granted" section: the catalogue records (metadata only, never files) of
 * the datasets this session's project does not have, filtered by modality, body part, condition and
 * tier, from the hub's catalogue through this server's relay (`vre/api/catalogue`). Each links to
 * the hub's catalogue page, where access is asked for (the hub's login and XSRF apply there).
 */
import { ICatalogue, ICatalogueRecord } from './api';
import { el } from './dom';
import { apiUrl, errorText, getJSON, serviceUrl } from './http';

const FILTERS: [string, string][] = [
  ['modality', 'All modalities'],
  ['body_part', 'All body parts'],
  ['condition', 'All conditions'],
  ['tier', 'All tiers']
];

/** What the project's state of a dataset reads as in the list (`not granted` has no badge). */
const STATE_TEXT: { [state: string]: string } = {
  requested: 'access requested',
  'batch-only': 'batch-only'
};

export class NotGrantedSection {
  readonly node: HTMLDetailsElement;

  constructor() {
    const n = (this.node = el('details', 'vre-Others'));
    this._summary = el('summary', 'vre-Others-summary', 'Not granted');
    this._summary.title = "Other datasets of this environment: their catalogue records, and where to ask for access";
    n.appendChild(this._summary);
    const filters = el('div', 'vre-Others-filters');
    for (const [name, all] of FILTERS) {
      const sel = el('select', `vre-select vre-others-${name.replace('_', '')}`);
      sel.title = all.replace('All ', 'Filter by ');
      sel.dataset.filter = name;
      sel.appendChild(Object.assign(el('option', '', all), { value: '' }));
      sel.addEventListener('change', () => void this.load());
      this._selects[name] = sel;
      filters.appendChild(sel);
    }
    n.appendChild(filters);
    this._list = el('div', 'vre-Others-list');
    n.appendChild(this._list);
    const all = el('a', 'vre-Browser-catalogue', 'Browse the whole catalogue, follow your requests');
    all.href = serviceUrl('catalogue');
    all.target = '_blank';
    all.rel = 'noopener';
    n.appendChild(all);
    n.addEventListener('toggle', () => {
      if (n.open && !this._loaded) {
        void this.load();
      }
    });
  }

  /** (Re)load the records with the chosen filters (only once the section was opened). */
  async load(): Promise<void> {
    if (!this.node.open) {
      return;
    }
    this._loaded = true;
    const query: { [k: string]: string } = {};
    for (const [name, sel] of Object.entries(this._selects)) {
      query[name] = sel.value;
    }
    const n = ++this._generation;
    this._list.setAttribute('aria-busy', 'true');
    try {
      if (this._project === null) {
        this._project = (await getJSON<{ project: string }>(apiUrl([]))).project || '';
      }
      const answer = await getJSON<ICatalogue>(apiUrl(['catalogue'], query));
      if (n === this._generation) {
        this._render(answer);
      }
    } catch (e) {
      if (n === this._generation) {
        this._list.textContent = '';
        this._list.appendChild(el('div', 'vre-Others-message vre-mod-error', `Cannot list the catalogue: ${errorText(e)}`));
      }
    } finally {
      if (n === this._generation) {
        this._list.removeAttribute('aria-busy');
      }
    }
  }

  private _render(answer: ICatalogue): void {
    for (const [name, sel] of Object.entries(this._selects)) {
      const keep = sel.value;
      while (sel.options.length > 1) {
        sel.remove(1);
      }
      for (const v of answer.facets[name] || []) {
        sel.appendChild(Object.assign(el('option', '', v), { value: v }));
      }
      sel.value = keep;
    }
    const project = this._project || '';
    const others = answer.datasets.filter(d => {
      const state = d.access[project] || 'not granted';
      return state === 'not granted' || state === 'requested';
    });
    const filtered = Object.values(this._selects).some(s => s.value);
    this._summary.textContent = `Not granted${filtered ? '' : ` (${others.length})`}`;
    this._list.textContent = '';
    this._list.dataset.count = String(others.length);
    if (!others.length) {
      this._list.appendChild(
        el(
          'div',
          'vre-Others-message',
          filtered ? 'No other dataset matches these filters.' : 'This project has every dataset of the catalogue.'
        )
      );
      return;
    }
    for (const d of others) {
      this._list.appendChild(this._row(d, d.access[project] || 'not granted'));
    }
  }

  private _row(d: ICatalogueRecord, state: string): HTMLElement {
    const row = el('div', 'vre-Others-row');
    row.dataset.slug = d.slug;
    row.dataset.access = state;
    const title = el('div', 'vre-Others-title', String(d.title || d.slug));
    if (STATE_TEXT[state]) {
      title.appendChild(el('span', 'vre-badge vre-Others-state', STATE_TEXT[state]));
    }
    row.appendChild(title);
    const facts = [
      d.condition,
      (d.modalities || []).join(', '),
      (d.body_parts || []).join(', '),
      d.interoperability_tier !== undefined && d.interoperability_tier !== null ? `Tier ${d.interoperability_tier}` : '',
      d.num_subjects !== undefined ? `${d.num_subjects} subjects` : ''
    ].filter(Boolean);
    row.appendChild(el('div', 'vre-Others-sub', facts.join(' · ')));
    if (d.description) {
      row.appendChild(el('div', 'vre-Others-desc', String(d.description)));
    }
    const ask = el('a', 'vre-Others-request', state === 'requested' ? 'See the request' : 'Request access');
    ask.href = `${serviceUrl('catalogue')}#dataset-${encodeURIComponent(d.slug)}`;
    ask.target = '_blank';
    ask.rel = 'noopener';
    ask.title = "Opens the hub's catalogue page for this dataset (a new tab)";
    row.appendChild(ask);
    return row;
  }

  private _summary: HTMLElement;
  private _list: HTMLDivElement;
  private _selects: { [name: string]: HTMLSelectElement } = {};
  private _project: string | null = null;
  private _loaded = false;
  private _generation = 0;
}
