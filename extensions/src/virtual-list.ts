/**
 * The dataset browser's lists: fixed-height rows, paged by the server (pages of 100, fetched on
 * demand), and only the visible rows in the DOM, so 100,000 series scroll like 100.
 */
import { IPage } from './api';
import { el } from './dom';
import { errorText } from './http';

const PAGE = 100;

export type Fetcher<T> = (offset: number, limit: number) => Promise<IPage<T>>;

/** A list of `total` fixed-height rows; only the visible ones are in the DOM. */
export class VirtualList<T> {
  readonly node: HTMLDivElement;

  constructor(
    private _rowHeight: number,
    private _render: (item: T | null, index: number) => HTMLElement,
    private _onTotal: (total: number | null, error: string | null) => void
  ) {
    this.node = el('div', 'vre-List');
    this.node.tabIndex = -1;
    this._spacer = el('div', 'vre-List-spacer');
    this.node.appendChild(this._spacer);
    this.node.addEventListener('scroll', () => this.update());
    this._resize = new ResizeObserver(() => this.update());
    this._resize.observe(this.node);
  }

  get total(): number | null {
    return this._total;
  }

  setSource(fetch: Fetcher<T>): void {
    this._fetch = fetch;
    this._gen++;
    this._pages.clear();
    this._pending.clear();
    this._total = null;
    this._error = null;
    this._clearRows();
    this.node.scrollTop = 0;
    this._spacer.style.height = '0px';
    this._onTotal(null, null);
    this._loadPage(0);
  }

  reload(): void {
    if (this._fetch) {
      this.setSource(this._fetch);
    }
  }

  dispose(): void {
    this._resize.disconnect();
  }

  /** Render the visible rows (coalesced to one per frame). */
  update(): void {
    if (this._raf) {
      return;
    }
    this._raf = requestAnimationFrame(() => {
      this._raf = 0;
      this._renderRows();
    });
  }

  private _loadPage(page: number): void {
    if (!this._fetch || this._pages.has(page) || this._pending.has(page)) {
      return;
    }
    const gen = this._gen;
    this._pending.add(page);
    this._fetch(page * PAGE, PAGE).then(
      result => {
        if (gen !== this._gen) {
          return;
        }
        this._pending.delete(page);
        this._pages.set(page, result.items);
        // bounded memory: keep the 60 most recently loaded pages
        if (this._pages.size > 60) {
          const first = this._pages.keys().next().value as number;
          this._pages.delete(first);
        }
        if (this._total !== result.total) {
          this._total = result.total;
          this._spacer.style.height = `${result.total * this._rowHeight}px`;
          this._onTotal(result.total, null);
        }
        this._renderRows();
      },
      e => {
        if (gen !== this._gen) {
          return;
        }
        this._pending.delete(page);
        this._error = errorText(e);
        this._onTotal(this._total, this._error);
      }
    );
  }

  private _clearRows(): void {
    for (const r of this._rows.values()) {
      r.el.remove();
    }
    this._rows.clear();
  }

  private _renderRows(): void {
    const total = this._total;
    if (total === null) {
      return;
    }
    const h = this._rowHeight;
    const top = this.node.scrollTop;
    const first = Math.max(0, Math.floor(top / h) - 4);
    const last = Math.min(total - 1, Math.ceil((top + this.node.clientHeight) / h) + 4);
    for (let p = Math.floor(first / PAGE); p <= Math.floor(last / PAGE); p++) {
      this._loadPage(p);
    }
    for (const [i, r] of this._rows) {
      const loaded = this._pages.get(Math.floor(i / PAGE))?.[i % PAGE] ?? null;
      if (i < first || i > last || r.item !== loaded) {
        r.el.remove();
        this._rows.delete(i);
      }
    }
    for (let i = first; i <= last; i++) {
      if (this._rows.has(i)) {
        continue;
      }
      const item = this._pages.get(Math.floor(i / PAGE))?.[i % PAGE] ?? null;
      const row = this._render(item, i);
      row.style.top = `${i * h}px`;
      row.style.height = `${h}px`;
      row.dataset.index = String(i);
      this.node.appendChild(row);
      this._rows.set(i, { el: row, item });
    }
  }

  private _spacer: HTMLDivElement;
  private _fetch: Fetcher<T> | null = null;
  private _pages = new Map<number, T[]>();
  private _pending = new Set<number>();
  private _rows = new Map<number, { el: HTMLElement; item: T | null }>();
  private _total: number | null = null;
  private _error: string | null = null;
  private _gen = 0;
  private _raf = 0;
  private _resize: ResizeObserver;
}
