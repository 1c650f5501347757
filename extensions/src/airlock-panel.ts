/**
 * The Export requests panel (sidebar): the researcher's airlock requests in this session's project
 * (files are named as paths of this session, so requests of other projects are not its business),
 * through this server's relay (airlock-api.ts).
 *
 * - my requests, newest first, with their state, refreshed every 5 s while the panel is visible
 *   (the open request too while it waits on the checkers);
 * - "New request" (title, justification); "Request export" in the file browser adds files to a
 *   draft (airlock-picker.ts);
 * - one request's details, checks, submission, comments and downloads (airlock-details.ts).
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { airlockApi, IAirlockRequest, IAirlockSummary, problemLines } from './airlock-api';
import { AirlockDetails } from './airlock-details';
import { sizeOf, stateBadge, STATE_LABEL } from './airlock-format';
import { button, el } from './dom';
import { errorText } from './http';
import { Poller } from './poller';

/** States in which the checkers may still change the request: keep the open one fresh. */
const WAITING = ['submitted', 'in_review', 'approved'];

export class AirlockPanel extends Widget {
  constructor() {
    super();
    this.id = 'vre-airlock';
    this.addClass('vre-Airlock');
    this.title.caption = 'Export requests (airlock)';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Export requests');

    const head = el('div', 'vre-Airlock-head');
    head.appendChild(el('h2', 'vre-Airlock-title', 'Export requests'));
    const tools = el('div', 'vre-Airlock-tools');
    this._newToggle = button('New…', 'New export request', () => this.toggleForm(), { labelled: true });
    this._newToggle.setAttribute('aria-expanded', 'false');
    tools.appendChild(this._newToggle);
    tools.appendChild(button('⟳', 'Refresh the export requests', () => this._poller.now(), { labelled: true }));
    head.appendChild(tools);
    this.node.appendChild(head);

    this._form = this._buildForm();
    this.node.appendChild(this._form);

    this._status = el('div', 'vre-Airlock-status');
    this._status.setAttribute('role', 'status');
    this._status.setAttribute('aria-live', 'polite');
    this.node.appendChild(this._status);

    this._list = el('ul', 'vre-AirlockList');
    this._list.setAttribute('aria-label', 'My export requests, newest first');
    this.node.appendChild(this._list);

    this._details = new AirlockDetails({
      changed: (req, message) => {
        this._replace(req);
        if (message) {
          this.setStatus(message);
        }
      },
      close: () => this.select(null)
    });
    this.node.appendChild(this._details.node);
  }

  /** The requests listed last (newest first). */
  get requests(): IAirlockSummary[] {
    return this._requests;
  }

  /** Requests of mine in this project still open to changes (for "Request export"), listed now. */
  async editable(): Promise<IAirlockSummary[]> {
    const all = await airlockApi.list(await this._project);
    return all.filter(r => r.actions.includes('add_files'));
  }

  /** Open request `id` (null: close it). */
  select(id: number | null): void {
    this._selected = id;
    this._markSelected();
    this.node.classList.toggle('vre-mod-details', id !== null);
    if (id === null) {
      this._details.show(null);
    } else {
      void this._details.load(id);
    }
  }

  /** Show `req` as it now is (after a change made elsewhere, e.g. "Request export"). */
  showRequest(req: IAirlockRequest, message?: string): void {
    this._replace(req);
    this._selected = req.id;
    this._markSelected();
    this.node.classList.add('vre-mod-details');
    this._details.show(req);
    if (message) {
      this.setStatus(message);
    }
  }

  setStatus(text: string, error = false): void {
    this._status.textContent = text;
    this._status.classList.toggle('vre-mod-error', error);
    this._status.hidden = !text;
  }

  toggleForm(open?: boolean): void {
    const show = open ?? this._form.hidden;
    this._form.hidden = !show;
    this._newToggle.setAttribute('aria-expanded', String(show));
    this._newToggle.classList.toggle('vre-mod-on', show);
    if (show) {
      (this._form.querySelector('input') as HTMLInputElement).focus();
    }
  }

  dispose(): void {
    this._poller.stop();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._poller.start();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this._poller.start();
    }
  }

  protected onBeforeHide(msg: Message): void {
    super.onBeforeHide(msg);
    this._poller.stop();
  }

  protected onBeforeDetach(msg: Message): void {
    this._poller.stop();
    super.onBeforeDetach(msg);
  }

  private _buildForm(): HTMLFormElement {
    const form = el('form', 'vre-AirlockForm');
    form.hidden = true;
    form.setAttribute('aria-label', 'New export request');
    const field = (id: string, label: string, input: HTMLInputElement | HTMLTextAreaElement) => {
      const wrap = el('div', 'vre-AirlockField');
      const l = el('label', undefined, label);
      input.id = id;
      l.htmlFor = id;
      wrap.appendChild(l);
      wrap.appendChild(input);
      form.appendChild(wrap);
      return input;
    };
    const title = field('vre-airlock-new-title', 'Title', el('input'));
    title.placeholder = 'e.g. Lesion detection results for the paper';
    const just = field('vre-airlock-new-just', 'Justification', el('textarea')) as HTMLTextAreaElement;
    just.rows = 2;
    just.placeholder = 'Why these results may leave, for whom';
    const error = el('div', 'vre-AirlockError');
    error.setAttribute('role', 'alert');
    error.hidden = true;
    form.appendChild(error);
    const actions = el('div', 'vre-AirlockActions');
    const create = el('button', 'vre-btn', 'Create request');
    create.type = 'submit';
    actions.appendChild(create);
    actions.appendChild(button('Cancel', 'Close the form', () => this.toggleForm(false)));
    form.appendChild(actions);
    form.addEventListener('keydown', e => {
      if (e.key === 'Escape') {
        this.toggleForm(false);
      }
    });
    form.addEventListener('submit', async e => {
      e.preventDefault();
      create.disabled = true;
      try {
        const req = await airlockApi.create(title.value.trim(), just.value.trim());
        title.value = '';
        just.value = '';
        error.hidden = true;
        this.toggleForm(false);
        this.showRequest(req, `Request #${req.id} created: add files to it.`);
      } catch (err) {
        error.textContent = [errorText(err), ...problemLines(err)].join('\n');
        error.hidden = false;
      } finally {
        create.disabled = false;
      }
    });
    return form;
  }

  private async _refresh(): Promise<void> {
    let requests: IAirlockSummary[];
    try {
      requests = await airlockApi.list(await this._project);
    } catch (e) {
      this.setStatus(`Cannot list the export requests: ${errorText(e)}`, true);
      return;
    }
    if (this.isDisposed) {
      return;
    }
    const open = this._details.request;
    const summary = open && requests.find(r => r.id === open.id);
    if (open && summary && WAITING.includes(open.state) && summary.updated_at !== open.updated_at) {
      void this._details.load(open.id);
    }
    // say when the checkers moved a request on (the list may be all the user looks at)
    const before = new Map(this._requests.map(r => [r.id, r.state]));
    const moved = requests.find(r => before.has(r.id) && before.get(r.id) !== r.state);
    if (moved) {
      this.setStatus(`Request #${moved.id} is now ${STATE_LABEL[moved.state] || moved.state}.`);
    }
    this._requests = requests;
    this._render();
    if (!requests.length && !this._status.classList.contains('vre-mod-error')) {
      this.setStatus('No export requests yet. “New…”, or right-click a file or folder → “Request export”.');
    } else if (this._status.classList.contains('vre-mod-error')) {
      this.setStatus('');
    }
  }

  private _replace(req: IAirlockRequest): void {
    const i = this._requests.findIndex(r => r.id === req.id);
    if (i >= 0) {
      this._requests[i] = req;
    } else {
      this._requests = [req, ...this._requests];
    }
    this._render();
  }

  private _render(): void {
    this._list.textContent = '';
    for (const r of this._requests) {
      const li = el('li', 'vre-AirlockRow');
      li.dataset.requestId = String(r.id);
      li.dataset.state = r.state;
      const b = el('button', 'vre-AirlockRow-button');
      b.type = 'button';
      b.setAttribute('aria-label', `Request ${r.id}: ${r.title || 'untitled'}, ${STATE_LABEL[r.state] || r.state}`);
      const top = el('span', 'vre-AirlockRow-top');
      top.appendChild(stateBadge(r.state));
      top.appendChild(el('span', 'vre-AirlockRow-id', `#${r.id}`));
      top.appendChild(el('span', 'vre-AirlockRow-name', r.title || '(untitled)'));
      b.appendChild(top);
      const held = r.withheld_files ? ` (${r.withheld_files} held, withheld until review)` : '';
      b.appendChild(el('span', 'vre-AirlockRow-meta', `${r.file_count} file${r.file_count === 1 ? '' : 's'}${held} · ${sizeOf(r.total_size)}`));
      b.addEventListener('click', () => this.select(this._selected === r.id ? null : r.id));
      li.appendChild(b);
      this._list.appendChild(li);
    }
    this._markSelected();
  }

  private _markSelected(): void {
    for (const li of Array.from(this._list.children) as HTMLElement[]) {
      const on = Number(li.dataset.requestId) === this._selected;
      li.classList.toggle('vre-mod-selected', on);
      li.querySelector('button')?.setAttribute('aria-pressed', String(on));
    }
  }

  private _newToggle: HTMLButtonElement;
  private _form: HTMLFormElement;
  private _status: HTMLDivElement;
  private _list: HTMLUListElement;
  private _details: AirlockDetails;
  private _requests: IAirlockSummary[] = [];
  private _selected: number | null = null;
  private _poller = new Poller(() => this._refresh(), 5000);
  private _project = airlockApi.project().catch(() => null);
}
