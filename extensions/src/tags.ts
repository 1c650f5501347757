/**
 * The viewer's tag panel: the DICOM elements of the instance behind the current native slice
 * (`<source>/tags?slice=i`), filtered on the client by name, keyword, tag, VR or value.
 */
import { ITags, Source, sourceUrl } from './api';
import { el } from './dom';
import { errorText, getJSON } from './http';

/** The searchable tag list of the instance behind the current native slice. */
export class TagPanel {
  readonly node: HTMLDivElement;

  constructor(private _source: Source) {
    this.node = el('div', 'vre-Tags');
    const head = el('div', 'vre-Tags-head');
    this._search = el('input', 'vre-tags-search vre-select');
    this._search.type = 'search';
    this._search.placeholder = 'Filter tags (name, keyword, tag, value)';
    this._search.addEventListener('input', () => this._render());
    this._search.addEventListener('keydown', e => e.stopPropagation());
    head.appendChild(this._search);
    this._info = el('div', 'vre-Tags-info');
    head.appendChild(this._info);
    this.node.appendChild(head);
    this._list = el('div', 'vre-Tags-list');
    this.node.appendChild(this._list);
  }

  /** Load the tags of native slice `slice` (debounced while scrolling). */
  load(slice: number): void {
    if (this._timer) {
      clearTimeout(this._timer);
    }
    this._timer = window.setTimeout(() => this._load(slice), this._tags ? 200 : 0);
  }

  private async _load(slice: number): Promise<void> {
    this._timer = 0;
    if (this._loaded === slice) {
      return;
    }
    const ticket = ++this._ticket;
    this._info.textContent = 'Loading tags…';
    try {
      const tags = await getJSON<ITags>(sourceUrl(this._source, ['tags'], { slice }));
      if (ticket !== this._ticket) {
        return;
      }
      this._tags = tags;
      this._loaded = slice;
      this._render();
    } catch (e) {
      if (ticket === this._ticket) {
        this._tags = null;
        this._loaded = -1;
        this._list.textContent = '';
        this._info.textContent = '';
        this._list.appendChild(el('div', 'vre-error-text', `Cannot read the tags: ${errorText(e)}`));
      }
    }
  }

  private _render(): void {
    const tags = this._tags;
    this._list.textContent = '';
    if (!tags) {
      return;
    }
    const terms = this._search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const table = el('table', 'vre-tags-table');
    const body = el('tbody');
    let shown = 0;
    for (const t of tags.elements) {
      const tag = `(${t.tag.slice(0, 4)},${t.tag.slice(4)})`;
      const hay = `${tag} ${t.tag} ${t.keyword} ${t.name} ${t.vr} ${t.value}`.toLowerCase();
      if (terms.length && !terms.every(term => hay.includes(term))) {
        continue;
      }
      shown++;
      const tr = el('tr');
      tr.dataset.keyword = t.keyword;
      const tdTag = el('td', 'vre-tag-id', tag);
      const tdName = el('td', 'vre-tag-name', t.name || t.keyword);
      tdName.style.paddingLeft = `${4 + 12 * t.depth}px`;
      tdName.title = t.keyword;
      const tdVr = el('td', 'vre-tag-vr', t.vr);
      const tdValue = el('td', 'vre-tag-value', t.value);
      tdValue.title = t.value;
      tr.append(tdTag, tdName, tdVr, tdValue);
      body.appendChild(tr);
    }
    table.appendChild(body);
    this._list.appendChild(table);
    const slice = this._loaded + 1;
    this._info.textContent =
      `Slice ${slice}: ${shown} of ${tags.count} element(s)` + (tags.truncated ? ' (list truncated by the server)' : '');
  }

  private _search: HTMLInputElement;
  private _info: HTMLDivElement;
  private _list: HTMLDivElement;
  private _tags: ITags | null = null;
  private _loaded = -1;
  private _ticket = 0;
  private _timer = 0;
}
