/**
 * The Jobs panel (sidebar): the project's batch queue, through this server's own relay
 * (`<base_url>vre/api/jobs...`, extensions/vre_session/jobs/handlers.py -> the hub's queue).
 *
 * - the project's jobs, newest first, refreshed every 2 s while the panel is visible
 *   (state, queue place, progress of running notebooks, duration, resource use, reason);
 * - a job's details: live log (polled by byte offset), output files (open in Lab), Cancel, Re-run;
 * - a submit form (notebook or script of the workspace, parameters, resources); the hub's
 *   refusals are shown as they come (they say what to fix).
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { button as domButton, el } from './dom';
import { apiUrl, callJSON, errorText } from './http';

/** The Lab's root (the file browser's paths are relative to it). */
export const HOME = '/home/jovyan';

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'timed_out';
const FINAL: JobState[] = ['succeeded', 'failed', 'cancelled', 'timed_out'];

export interface IJob {
  id: number;
  name: string;
  project: string;
  user: string;
  kind: 'notebook' | 'script' | 'function' | 'cluster';
  target: string;
  params: { [key: string]: unknown } | null;
  profile: string | null;
  cpu: number;
  mem_mb: number;
  gpus: number;
  max_runtime: number;
  state: JobState;
  reason: string;
  exit_code: number | null;
  attempts: number;
  cancel_requested: boolean;
  devices: string;
  usage: { wall_s?: number; cpu_s?: number; max_rss_mb?: number } | null;
  rerun_of: number | null;
  position: number | null;
  outdir: string;
  submitted_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface IJobDetail extends IJob {
  progress: { done: number; total: number } | null;
  outputs: { path: string; size: number }[];
}

export interface ISubmission {
  kind: 'notebook' | 'script';
  target: string;
  params: { [key: string]: unknown };
  cpu?: number;
  mem_mb?: number;
  gpus?: number;
  max_runtime?: number;
  name?: string;
}

export interface IJobsPanelOptions {
  /** Open a file in Lab; `path` is relative to the Lab's root. */
  openFile(path: string): void;
}

// --- the relay's REST API ---------------------------------------------------------------------

/** A 404 without the API's JSON: this server has no jobs routes. */
const NO_QUEUE = {
  notAvailable:
    'The batch queue is not available in this session (the vre_session server extension has no jobs API).'
};

/** Failures are `ApiError`s (http.ts) whose `message` is the server's own text (show it as is). */
function call<T>(
  method: 'GET' | 'POST',
  parts: string[],
  query?: { [key: string]: string | number | null },
  body?: unknown,
  signal?: AbortSignal
): Promise<T> {
  return callJSON<T>(method, apiUrl(parts, query), body, signal, NO_QUEUE);
}

export const jobsApi = {
  /** This session's project (`GET vre/api/`), to list its jobs only. */
  project: () => call<{ project?: string | null }>('GET', []).then(r => r.project || null),
  list: (project: string | null, signal?: AbortSignal) =>
    call<{ jobs: IJob[] }>('GET', ['jobs'], { project }, undefined, signal).then(r => r.jobs || []),
  get: (id: number, signal?: AbortSignal) =>
    call<IJobDetail>('GET', ['jobs', String(id)], undefined, undefined, signal),
  log: (id: number, offset: number, signal?: AbortSignal) =>
    call<{ text: string; offset: number; state: JobState }>('GET', ['jobs', String(id), 'log'], { offset }, undefined, signal),
  submit: (body: ISubmission) => call<IJob>('POST', ['jobs'], undefined, body),
  cancel: (id: number) => call<IJob>('POST', ['jobs', String(id), 'cancel'], undefined, {}),
  rerun: (id: number) => call<IJob>('POST', ['jobs', String(id), 'rerun'], undefined, {})
};

// --- helpers -----------------------------------------------------------------------------------

function button(label: string, title: string, onClick: () => void, cls = 'vre-btn'): HTMLButtonElement {
  return domButton(label, title, onClick, { cls, labelled: true });
}

export function isFinal(state: JobState): boolean {
  return FINAL.includes(state);
}

const STATE_LABEL: { [s in JobState]: string } = {
  queued: 'queued',
  running: 'running',
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'cancelled',
  timed_out: 'timed out'
};

/** "45 s", "3 min 07 s", "2 h 05 min". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  }
  const h = Math.floor(s / 3600);
  return `${h} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

function time(iso: string | null): number | null {
  if (!iso) {
    return null;
  }
  const t = Date.parse(iso);
  return Number.isFinite(t) ? t : null;
}

/** Run time (started..finished, or ..now), or the wait so far for a queued job. */
function jobDuration(job: IJob): string {
  const start = time(job.started_at);
  const end = time(job.finished_at);
  if (start !== null) {
    return duration(((end ?? Date.now()) - start) / 1000);
  }
  const submitted = time(job.submitted_at);
  if (job.state === 'queued' && submitted !== null) {
    return `waiting ${duration((Date.now() - submitted) / 1000)}`;
  }
  return '';
}

function usageText(job: IJob): string {
  const u = job.usage || {};
  const parts: string[] = [];
  if (typeof u.cpu_s === 'number') {
    parts.push(`CPU ${u.cpu_s < 10 ? u.cpu_s.toFixed(1) : Math.round(u.cpu_s)} s`);
  }
  if (typeof u.max_rss_mb === 'number') {
    parts.push(`peak ${Math.round(u.max_rss_mb)} MiB`);
  }
  if (typeof u.wall_s === 'number' && !job.started_at) {
    parts.push(`wall ${duration(u.wall_s)}`);
  }
  return parts.join(' · ');
}

function sizeText(n: number): string {
  if (n < 1024) {
    return `${n} B`;
  }
  if (n < 1024 * 1024) {
    return `${(n / 1024).toFixed(1)} KiB`;
  }
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A path inside the session (absolute, or ~/...) as the file browser names it (relative to the root). */
export function labPath(path: string): string | null {
  if (path.startsWith('~/')) {
    return path.slice(2);
  }
  if (path.startsWith(HOME + '/')) {
    return path.slice(HOME.length + 1);
  }
  return path.startsWith('/') ? null : path;
}

/** A path as typed in the form or given by the file browser (relative to the Lab root), as the hub takes it. */
export function queuePath(path: string): string {
  const p = path.trim();
  if (p.startsWith('/') || p.startsWith('~/')) {
    return p;
  }
  return `${HOME}/${p.replace(/^\.\//, '')}`;
}

function jobTitle(job: IJob): string {
  if (job.name) {
    return job.name;
  }
  if (job.kind === 'notebook' || job.kind === 'script') {
    return job.target.split('/').pop() || job.target;
  }
  return job.kind === 'cluster' ? 'Dask workers' : job.target || job.kind;
}

function badge(state: JobState): HTMLSpanElement {
  const b = el('span', `vre-JobBadge vre-JobBadge-${state}`, STATE_LABEL[state] || state);
  b.dataset.state = state;
  return b;
}

function progressBar(p: { done: number; total: number }): HTMLDivElement {
  const bar = el('div', 'vre-JobProgress');
  const total = Math.max(0, p.total || 0);
  const done = Math.min(total, Math.max(0, p.done || 0));
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', String(total));
  bar.setAttribute('aria-valuenow', String(done));
  bar.setAttribute('aria-valuetext', `${done} of ${total} cells`);
  bar.title = `${done} of ${total} cells done`;
  const fill = el('div', 'vre-JobProgress-fill');
  fill.style.width = `${total ? (100 * done) / total : 0}%`;
  bar.appendChild(fill);
  bar.appendChild(el('span', 'vre-JobProgress-text', `${done}/${total}`));
  return bar;
}

/** Calls `fn` every `ms` (after the previous call settled) while started. */
class Poller {
  constructor(
    private _fn: () => Promise<void>,
    private _ms: number
  ) {}

  get running(): boolean {
    return this._running;
  }

  start(): void {
    if (this._running) {
      return;
    }
    this._running = true;
    this._tick(0);
  }

  stop(): void {
    this._running = false;
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  /** Run now (and keep the rhythm from then on). */
  now(): void {
    if (this._running) {
      this._tick(0);
    }
  }

  private _tick(delay: number): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
    }
    this._timer = window.setTimeout(async () => {
      this._timer = null;
      if (!this._running) {
        return;
      }
      if (this._busy) {
        this._again = true;
        return;
      }
      this._busy = true;
      try {
        if (!document.hidden) {
          await this._fn();
        }
      } catch (e) {
        console.warn('VRE jobs:', e);
      } finally {
        this._busy = false;
      }
      if (this._running && this._timer === null) {
        this._tick(this._again ? 0 : this._ms);
        this._again = false;
      }
    }, delay);
  }

  private _running = false;
  private _busy = false;
  private _again = false;
  private _timer: number | null = null;
}

// --- the panel ---------------------------------------------------------------------------------

const LOG_LIMIT = 512 * 1024; // characters of log kept on screen (the tail)

export class JobsPanel extends Widget {
  constructor(options: IJobsPanelOptions) {
    super();
    this._options = options;
    this.id = 'vre-jobs';
    this.addClass('vre-Jobs');
    this.title.caption = 'Jobs (batch queue)';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Batch jobs');

    const head = el('div', 'vre-Jobs-head');
    head.appendChild(el('h2', 'vre-Jobs-title', 'Jobs'));
    const tools = el('div', 'vre-Jobs-tools');
    this._submitToggle = button('Submit…', 'Submit a notebook or script as a batch job', () => this.toggleForm());
    this._submitToggle.setAttribute('aria-expanded', 'false');
    this._submitToggle.classList.add('vre-Jobs-submitToggle');
    tools.appendChild(this._submitToggle);
    tools.appendChild(button('⟳', 'Refresh the job list', () => this._listPoller.now()));
    head.appendChild(tools);
    this.node.appendChild(head);

    this._form = this._buildForm();
    this.node.appendChild(this._form);

    this._status = el('div', 'vre-Jobs-status');
    this._status.setAttribute('role', 'status');
    this._status.setAttribute('aria-live', 'polite');
    this.node.appendChild(this._status);

    this._list = el('ul', 'vre-JobList');
    this._list.setAttribute('role', 'listbox');
    this._list.setAttribute('aria-label', 'Jobs of this project, newest first');
    this._list.addEventListener('keydown', e => this._onListKey(e));
    this.node.appendChild(this._list);

    this._details = el('section', 'vre-JobDetails');
    this._details.setAttribute('aria-label', 'Job details');
    this._details.hidden = true;
    this.node.appendChild(this._details);

    this._project = jobsApi.project().catch(() => null);
  }

  /** Open the submit form, with `path` (relative to the Lab root) as its target. */
  showForm(path?: string): void {
    this._form.hidden = false;
    this._submitToggle.setAttribute('aria-expanded', 'true');
    this._submitToggle.classList.add('vre-mod-on');
    if (path !== undefined) {
      this._fields.target.value = path;
      this._fields.params.value = '';
      this._fields.name.value = '';
      this._syncKind();
    }
    this._formError.hidden = true;
    this._formError.textContent = '';
    this._fields.target.focus();
  }

  toggleForm(): void {
    if (this._form.hidden) {
      this.showForm();
    } else {
      this._hideForm();
    }
  }

  /** Show one job's details (log, outputs, actions). */
  select(id: number | null): void {
    if (id === this._selected) {
      return;
    }
    this._selected = id;
    this._detailAbort?.abort();
    this._detailAbort = null;
    this._detail = null;
    this._detailFinalSeen = false;
    this._logOffset = 0;
    this._logDone = false;
    this._detailPoller.stop();
    for (const [jid, row] of this._rows) {
      row.setAttribute('aria-selected', String(jid === id));
      row.classList.toggle('vre-mod-selected', jid === id);
    }
    this._details.hidden = id === null;
    this.node.classList.toggle('vre-mod-details', id !== null);
    this._details.textContent = '';
    this._logResize?.disconnect();
    this._logResize = null;
    if (id === null) {
      return;
    }
    this._renderDetailsSkeleton(id);
    if (this.isVisible) {
      this._detailPoller.start();
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._listPoller.stop();
    this._detailPoller.stop();
    this._detailAbort?.abort();
    this._listAbort?.abort();
    this._logResize?.disconnect();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._resume();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this._resume();
    }
  }

  protected onBeforeHide(msg: Message): void {
    super.onBeforeHide(msg);
    this._pause();
  }

  protected onBeforeDetach(msg: Message): void {
    this._pause();
    super.onBeforeDetach(msg);
  }

  private _resume(): void {
    this._listPoller.start();
    if (this._selected !== null) {
      this._detailPoller.start();
    }
  }

  private _pause(): void {
    this._listPoller.stop();
    this._detailPoller.stop();
  }

  // --- list ----------------------------------------------------------------------------------

  private async _refreshList(): Promise<void> {
    this._listAbort?.abort();
    const abort = (this._listAbort = new AbortController());
    let jobs: IJob[];
    try {
      jobs = await jobsApi.list(await this._project, abort.signal);
    } catch (e) {
      if ((e as Error).name !== 'AbortError') {
        this._setStatus(`Cannot list the jobs: ${errorText(e)}`, true);
      }
      return;
    }
    // Progress of running notebooks is in the job's detail only.
    const running = jobs.filter(j => j.state === 'running' && j.kind === 'notebook').slice(0, 8);
    await Promise.all(
      running.map(j =>
        jobsApi.get(j.id, abort.signal).then(
          d => this._progress.set(j.id, d.progress),
          () => undefined
        )
      )
    );
    if (abort.signal.aborted || this.isDisposed) {
      return;
    }
    this._jobs = jobs;
    this._setStatus(jobs.length ? '' : 'No jobs yet. Submit a notebook or script with “Submit…”, or right-click a .ipynb/.py file → “Run as batch job”.');
    this._renderList();
  }

  private _renderList(): void {
    const seen = new Set<number>();
    this._jobs.forEach((job, i) => {
      seen.add(job.id);
      let row = this._rows.get(job.id);
      if (!row) {
        row = el('li', 'vre-JobRow');
        row.tabIndex = -1;
        row.setAttribute('role', 'option');
        row.dataset.jobId = String(job.id);
        row.id = `vre-job-row-${job.id}`;
        const id = job.id;
        row.addEventListener('click', () => {
          this.select(id);
          this._focusRow(id);
        });
        this._rows.set(job.id, row);
      }
      const signature = JSON.stringify([job, this._progress.get(job.id), jobDuration(job)]);
      if (row.dataset.sig !== signature) {
        row.dataset.sig = signature;
        this._fillRow(row, job);
      }
      row.setAttribute('aria-selected', String(job.id === this._selected));
      row.classList.toggle('vre-mod-selected', job.id === this._selected);
      const at = this._list.children[i];
      if (at !== row) {
        this._list.insertBefore(row, at || null);
      }
    });
    for (const [id, row] of this._rows) {
      if (!seen.has(id)) {
        row.remove();
        this._rows.delete(id);
      }
    }
    // One row is in the tab order: the selected one, else the first.
    const focusable = this._selected !== null && this._rows.has(this._selected) ? this._selected : this._jobs[0]?.id;
    for (const [id, row] of this._rows) {
      row.tabIndex = id === focusable ? 0 : -1;
    }
  }

  private _fillRow(row: HTMLLIElement, job: IJob): void {
    row.textContent = '';
    row.dataset.state = job.state;
    const top = el('div', 'vre-JobRow-top');
    top.appendChild(badge(job.state));
    top.appendChild(el('span', 'vre-JobRow-id', `#${job.id}`));
    const title = el('span', 'vre-JobRow-name', jobTitle(job));
    title.title = job.target;
    top.appendChild(title);
    row.appendChild(top);

    const meta = el('div', 'vre-JobRow-meta');
    const bits = [job.user, job.kind];
    if (job.state === 'queued' && job.position) {
      bits.push(`#${job.position} in queue`);
    }
    const d = jobDuration(job);
    if (d) {
      bits.push(d);
    }
    if (isFinal(job.state)) {
      const u = usageText(job);
      if (u) {
        bits.push(u);
      }
    }
    if (job.cancel_requested && !isFinal(job.state)) {
      bits.push('cancelling…');
    }
    meta.textContent = bits.join(' · ');
    row.appendChild(meta);

    const p = this._progress.get(job.id);
    if (job.state === 'running' && job.kind === 'notebook' && p) {
      row.appendChild(progressBar(p));
    }
    if (job.reason && ['failed', 'timed_out', 'cancelled'].includes(job.state)) {
      const reason = el('div', 'vre-JobRow-reason', job.reason);
      reason.title = job.reason;
      row.appendChild(reason);
    }
    row.setAttribute(
      'aria-label',
      `Job ${job.id} ${jobTitle(job)}, ${STATE_LABEL[job.state] || job.state}${
        job.state === 'queued' && job.position ? `, number ${job.position} in the queue` : ''
      }`
    );
  }

  private _focusRow(id: number): void {
    const row = this._rows.get(id);
    if (!row) {
      return;
    }
    for (const [jid, r] of this._rows) {
      r.tabIndex = jid === id ? 0 : -1;
    }
    row.focus();
  }

  private _onListKey(e: KeyboardEvent): void {
    const ids = this._jobs.map(j => j.id);
    const current = Number((document.activeElement as HTMLElement | null)?.dataset?.jobId);
    let i = ids.indexOf(current);
    switch (e.key) {
      case 'ArrowDown':
        i = Math.min(ids.length - 1, i + 1);
        break;
      case 'ArrowUp':
        i = Math.max(0, i - 1);
        break;
      case 'Home':
        i = 0;
        break;
      case 'End':
        i = ids.length - 1;
        break;
      case 'Enter':
      case ' ':
        if (i >= 0) {
          this.select(ids[i]);
        }
        e.preventDefault();
        return;
      case 'Escape':
        this.select(null);
        e.preventDefault();
        return;
      default:
        return;
    }
    e.preventDefault();
    if (i >= 0 && i < ids.length) {
      this._focusRow(ids[i]);
    }
  }

  private _setStatus(text: string, error = false): void {
    this._status.textContent = text;
    this._status.classList.toggle('vre-mod-error', error);
    this._status.hidden = !text;
  }

  // --- details -------------------------------------------------------------------------------

  private _renderDetailsSkeleton(id: number): void {
    const d = this._details;
    const head = el('div', 'vre-JobDetails-head');
    this._dTitle = el('h3', 'vre-JobDetails-title', `Job #${id}`);
    head.appendChild(this._dTitle);
    const actions = el('div', 'vre-JobDetails-actions');
    this._cancelBtn = button('Cancel', `Cancel job ${id}`, () => void this._act('cancel', id));
    this._cancelBtn.classList.add('vre-JobDetails-cancel');
    this._rerunBtn = button('Re-run', `Queue job ${id} again as a new job`, () => void this._act('rerun', id));
    this._rerunBtn.classList.add('vre-JobDetails-rerun');
    this._cancelBtn.disabled = true;
    this._rerunBtn.disabled = true;
    actions.appendChild(this._cancelBtn);
    actions.appendChild(this._rerunBtn);
    actions.appendChild(button('✕', 'Close the job details', () => this._closeDetails(id), 'vre-btn vre-JobDetails-close'));
    head.appendChild(actions);
    d.appendChild(head);

    this._dError = el('div', 'vre-Jobs-error');
    this._dError.setAttribute('role', 'alert');
    this._dError.hidden = true;
    d.appendChild(this._dError);

    this._dInfo = el('dl', 'vre-JobInfo');
    d.appendChild(this._dInfo);

    this._dOutputs = el('div', 'vre-JobOutputs');
    d.appendChild(this._dOutputs);

    const logHead = el('div', 'vre-JobLog-head', 'Log');
    d.appendChild(logHead);
    this._dLog = el('pre', 'vre-JobLog');
    this._dLog.tabIndex = 0;
    this._dLog.setAttribute('aria-label', `Log of job ${id}`);
    this._dLog.setAttribute('aria-live', 'off');
    this._dLog.textContent = '';
    // Follow the tail while the reader is at the end (scrolled up: left alone).
    this._logPinned = true;
    this._dLog.addEventListener('scroll', () => {
      const pre = this._dLog;
      this._logPinned = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    });
    this._logResize?.disconnect();
    this._logResize = new ResizeObserver(() => this._pinLog());
    this._logResize.observe(this._dLog);
    d.appendChild(this._dLog);
  }

  private _pinLog(): void {
    if (this._logPinned && this._dLog) {
      this._dLog.scrollTop = this._dLog.scrollHeight;
    }
  }

  private _closeDetails(id: number): void {
    this.select(null);
    this._focusRow(id);
  }

  private async _refreshDetail(): Promise<void> {
    const id = this._selected;
    if (id === null) {
      return;
    }
    this._detailAbort?.abort();
    const abort = (this._detailAbort = new AbortController());
    const final = this._detail !== null && isFinal(this._detail.state);
    try {
      if (!final || !this._detailFinalSeen) {
        const detail = await jobsApi.get(id, abort.signal);
        if (abort.signal.aborted || this._selected !== id) {
          return;
        }
        this._detailFinalSeen = isFinal(detail.state);
        this._detail = detail;
        this._renderDetail(detail);
      }
      if (!this._logDone) {
        await this._readLog(id, abort.signal);
      }
      this._dError.hidden = true;
    } catch (e) {
      if ((e as Error).name === 'AbortError' || this._selected !== id) {
        return;
      }
      this._dError.textContent = errorText(e);
      this._dError.hidden = false;
    }
    if (this._detail && isFinal(this._detail.state) && this._detailFinalSeen && this._logDone) {
      this._detailPoller.stop(); // nothing more will change
    }
  }

  private async _readLog(id: number, signal: AbortSignal): Promise<void> {
    // Read until caught up (a long log comes in chunks of 1 MiB).
    for (let i = 0; i < 8; i++) {
      const r = await jobsApi.log(id, this._logOffset, signal);
      if (signal.aborted || this._selected !== id) {
        return;
      }
      const advanced = r.offset > this._logOffset;
      this._logOffset = r.offset;
      if (r.text) {
        this._appendLog(r.text);
      }
      if (!advanced) {
        if (isFinal(r.state)) {
          this._logDone = true;
          if (!this._dLog.textContent) {
            this._dLog.textContent = '(the job wrote no log)';
            this._dLog.classList.add('vre-mod-empty');
          }
        }
        return;
      }
    }
  }

  private _appendLog(text: string): void {
    const pre = this._dLog;
    let all = (pre.textContent || '') + text;
    if (all.length > LOG_LIMIT) {
      all = '… (earlier lines cut; the whole log is log.txt in the outputs)\n' + all.slice(all.length - LOG_LIMIT);
    }
    pre.classList.remove('vre-mod-empty');
    pre.textContent = all;
    this._pinLog();
  }

  private _renderDetail(job: IJobDetail): void {
    this._dTitle.textContent = '';
    this._dTitle.appendChild(badge(job.state));
    this._dTitle.appendChild(document.createTextNode(` #${job.id} ${jobTitle(job)}`));
    this._cancelBtn.disabled = isFinal(job.state) || job.cancel_requested;
    this._rerunBtn.disabled = job.kind === 'cluster' ? !isFinal(job.state) : false;

    const rows: [string, string | HTMLElement][] = [];
    rows.push(['Target', job.target]);
    if (job.kind === 'notebook' && job.params && Object.keys(job.params).length) {
      rows.push(['Parameters', JSON.stringify(job.params)]);
    }
    if (job.kind === 'script' && job.params && Array.isArray((job.params as any).args) && (job.params as any).args.length) {
      rows.push(['Arguments', ((job.params as any).args as string[]).join(' ')]);
    }
    rows.push(['Submitted', `${new Date(job.submitted_at).toLocaleString()} by ${job.user}`]);
    if (job.state === 'queued' && job.position) {
      rows.push(['Queue', `#${job.position}`]);
    }
    const dur = jobDuration(job);
    if (dur) {
      rows.push(['Duration', dur]);
    }
    rows.push([
      'Resources',
      `${job.cpu} CPU · ${job.mem_mb} MiB${job.gpus ? ` · ${job.gpus} GPU${job.devices ? ` (${job.devices})` : ''}` : ''} · limit ${duration(job.max_runtime)}${job.profile ? ` · profile ${job.profile}` : ''}`
    ]);
    const usage = usageText(job);
    if (usage) {
      rows.push(['Used', usage]);
    }
    if (job.state === 'running' && job.progress) {
      rows.push(['Progress', progressBar(job.progress)]);
    }
    if (job.exit_code !== null && job.exit_code !== undefined) {
      rows.push(['Exit code', String(job.exit_code)]);
    }
    if (job.attempts > 1) {
      rows.push(['Attempts', String(job.attempts)]);
    }
    if (job.rerun_of) {
      rows.push(['Re-run of', `#${job.rerun_of}`]);
    }
    if (job.reason) {
      rows.push(['Reason', job.reason]);
    }
    const sig = JSON.stringify(rows.map(([k, v]) => [k, typeof v === 'string' ? v : v.outerHTML]));
    if (this._dInfo.dataset.sig !== sig) {
      this._dInfo.dataset.sig = sig;
      this._dInfo.textContent = '';
      for (const [k, v] of rows) {
        this._dInfo.appendChild(el('dt', undefined, k));
        const dd = el('dd');
        if (typeof v === 'string') {
          dd.textContent = v;
        } else {
          dd.appendChild(v);
        }
        if (k === 'Reason' && ['failed', 'timed_out'].includes(job.state)) {
          dd.classList.add('vre-mod-error');
        }
        this._dInfo.appendChild(dd);
      }
    }

    const outSig = JSON.stringify(job.outputs || []);
    if (this._dOutputs.dataset.sig !== outSig) {
      this._dOutputs.dataset.sig = outSig;
      this._dOutputs.textContent = '';
      const outputs = job.outputs || [];
      const head = el('div', 'vre-JobOutputs-head', 'Outputs ');
      const dir = el('span', 'vre-JobOutputs-dir', `in ${labPath(job.outdir) ?? job.outdir}`);
      dir.title = job.outdir;
      head.appendChild(dir);
      this._dOutputs.appendChild(head);
      if (!outputs.length) {
        this._dOutputs.appendChild(el('div', 'vre-JobOutputs-none', 'none yet'));
      }
      const ul = el('ul', 'vre-JobOutputs-list');
      for (const o of outputs) {
        const li = el('li');
        const rel = labPath(o.path);
        const shown = o.path.startsWith(job.outdir + '/') ? o.path.slice(job.outdir.length + 1) : o.path;
        const b = button(shown, `Open ${rel ?? o.path} in JupyterLab`, () => rel && this._options.openFile(rel), 'vre-JobOutput');
        b.disabled = rel === null;
        b.dataset.path = rel ?? o.path;
        li.appendChild(b);
        li.appendChild(el('span', 'vre-JobOutput-size', sizeText(o.size)));
        ul.appendChild(li);
      }
      this._dOutputs.appendChild(ul);
    }
  }

  private async _act(action: 'cancel' | 'rerun', id: number): Promise<void> {
    const btn = action === 'cancel' ? this._cancelBtn : this._rerunBtn;
    btn.disabled = true;
    try {
      const job = action === 'cancel' ? await jobsApi.cancel(id) : await jobsApi.rerun(id);
      this._dError.hidden = true;
      this._listPoller.now();
      if (action === 'rerun') {
        this._setStatus(`Job #${job.id} queued (a re-run of #${id}).`);
        this.select(job.id);
      } else {
        this._detailPoller.now();
      }
    } catch (e) {
      this._dError.textContent = errorText(e);
      this._dError.hidden = false;
      btn.disabled = false;
    }
  }

  // --- submit form ---------------------------------------------------------------------------

  private _buildForm(): HTMLFormElement {
    const form = el('form', 'vre-JobForm');
    form.hidden = true;
    form.setAttribute('aria-label', 'Submit a batch job');
    form.noValidate = true;
    const uid = Math.random().toString(36).slice(2, 8);
    const field = (label: string, input: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement, hint?: string) => {
      const wrap = el('div', 'vre-JobForm-field');
      input.id = `vre-jobform-${uid}-${input.name}`;
      const l = el('label', undefined, label);
      l.htmlFor = input.id;
      wrap.appendChild(l);
      wrap.appendChild(input);
      if (hint !== undefined) {
        const h = el('div', 'vre-JobForm-hint', hint);
        h.id = `${input.id}-hint`;
        input.setAttribute('aria-describedby', h.id);
        wrap.appendChild(h);
      }
      form.appendChild(wrap);
      return wrap;
    };
    const input = (name: string, type = 'text', placeholder = '') => {
      const i = el('input');
      i.name = name;
      i.type = type;
      i.placeholder = placeholder;
      i.autocomplete = 'off';
      i.spellcheck = false;
      return i;
    };

    const target = input('target', 'text', 'project/analysis.ipynb');
    field('Notebook or script', target, 'Path as in the file browser (the file must be in ~/project).');
    target.required = true;
    target.addEventListener('input', () => this._syncKind());

    const kind = el('select');
    kind.name = 'kind';
    for (const k of ['notebook', 'script']) {
      const o = el('option', undefined, k);
      o.value = k;
      kind.appendChild(o);
    }
    kind.addEventListener('change', () => this._syncParamsLabel());
    field('Kind', kind);

    const params = el('textarea');
    params.name = 'params';
    params.rows = 3;
    params.spellcheck = false;
    const paramsField = field('Parameters', params, '');
    this._paramsLabel = paramsField.querySelector('label')!;
    this._paramsHint = paramsField.querySelector('.vre-JobForm-hint')!;

    const grid = el('div', 'vre-JobForm-grid');
    const cpu = input('cpu', 'number', 'profile');
    cpu.min = '0.1';
    cpu.step = '0.1';
    const mem = input('mem_mb', 'number', 'profile');
    mem.min = '64';
    mem.step = '64';
    const gpus = input('gpus', 'number', 'profile');
    gpus.min = '0';
    gpus.step = '1';
    const runtime = input('max_runtime', 'number', 'default');
    runtime.min = '1';
    runtime.step = '1';
    for (const [label, i] of [
      ['CPUs', cpu],
      ['Memory (MiB)', mem],
      ['GPUs', gpus],
      ['Max run time (s)', runtime]
    ] as [string, HTMLInputElement][]) {
      const w = field(label, i);
      grid.appendChild(w);
    }
    form.appendChild(grid);

    const name = input('name', 'text', 'optional');
    name.maxLength = 128;
    field('Name', name);

    this._formError = el('div', 'vre-Jobs-error vre-JobForm-error');
    this._formError.setAttribute('role', 'alert');
    this._formError.hidden = true;
    form.appendChild(this._formError);

    const actions = el('div', 'vre-JobForm-actions');
    this._formSubmit = el('button', 'vre-btn vre-mod-on vre-JobForm-submit', 'Submit job');
    this._formSubmit.type = 'submit';
    this._formSubmit.title = 'Queue this job';
    this._formSubmit.setAttribute('aria-label', 'Submit job');
    actions.appendChild(this._formSubmit);
    actions.appendChild(button('Close', 'Close the submit form', () => this._hideForm()));
    form.appendChild(actions);

    form.addEventListener('submit', e => {
      e.preventDefault();
      void this._submit();
    });
    form.addEventListener('keydown', e => {
      if (e.key === 'Escape') {
        e.preventDefault();
        this._hideForm();
      } else if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        void this._submit();
      }
    });
    this._fields = { target, kind, params, cpu, mem, gpus, runtime, name };
    this._syncParamsLabel();
    return form;
  }

  private _hideForm(): void {
    this._form.hidden = true;
    this._submitToggle.setAttribute('aria-expanded', 'false');
    this._submitToggle.classList.remove('vre-mod-on');
    this._submitToggle.focus();
  }

  private _syncKind(): void {
    const t = this._fields.target.value.trim().toLowerCase();
    if (t.endsWith('.ipynb')) {
      this._fields.kind.value = 'notebook';
    } else if (t.endsWith('.py')) {
      this._fields.kind.value = 'script';
    }
    this._syncParamsLabel();
  }

  private _syncParamsLabel(): void {
    const notebook = this._fields.kind.value === 'notebook';
    this._paramsLabel.textContent = notebook ? 'Parameters (JSON object)' : 'Arguments (one per line)';
    this._paramsHint.textContent = notebook
      ? 'Fill the notebook’s “parameters” cell, e.g. {"series": "1.2.3", "n": 5}. Empty: none.'
      : 'Command-line arguments of the script, one per line (or a JSON list). Empty: none.';
    this._fields.params.placeholder = notebook ? '{}' : '--epochs\n5';
  }

  /** The form as a submission, or a message saying what to fix. */
  private _readForm(): ISubmission | string {
    const f = this._fields;
    const target = f.target.value.trim();
    if (!target) {
      return 'Give the path of a notebook (.ipynb) or script (.py) in the workspace.';
    }
    const kind = f.kind.value as 'notebook' | 'script';
    const text = f.params.value.trim();
    let params: { [key: string]: unknown };
    if (kind === 'notebook') {
      if (!text) {
        params = {};
      } else {
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch (e) {
          return `The parameters are not valid JSON: ${errorText(e)}`;
        }
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
          return 'The parameters must be a JSON object of name: value, e.g. {"n": 5}.';
        }
        params = parsed as { [key: string]: unknown };
      }
    } else {
      let args: unknown[];
      if (text.startsWith('[')) {
        try {
          args = JSON.parse(text);
        } catch (e) {
          return `The arguments are not a valid JSON list: ${errorText(e)}`;
        }
        if (!Array.isArray(args)) {
          return 'The arguments must be a JSON list, or one argument per line.';
        }
      } else {
        args = text ? text.split('\n').map(s => s.trim()).filter(s => s.length) : [];
      }
      params = { args };
    }
    const body: ISubmission = { kind, target: queuePath(target), params };
    const numbers: [keyof ISubmission, HTMLInputElement, string][] = [
      ['cpu', f.cpu, 'CPUs'],
      ['mem_mb', f.mem, 'Memory'],
      ['gpus', f.gpus, 'GPUs'],
      ['max_runtime', f.runtime, 'Max run time']
    ];
    for (const [key, i, label] of numbers) {
      const v = i.value.trim();
      if (!v) {
        continue;
      }
      const n = Number(v);
      if (!Number.isFinite(n) || (key !== 'cpu' && !Number.isInteger(n))) {
        return `${label} must be a ${key === 'cpu' ? '' : 'whole '}number, not “${v}”.`;
      }
      (body as any)[key] = n;
    }
    const name = f.name.value.trim();
    if (name) {
      body.name = name;
    }
    return body;
  }

  private async _submit(): Promise<void> {
    if (this._submitting) {
      return;
    }
    const body = this._readForm();
    const err = this._formError;
    if (typeof body === 'string') {
      err.textContent = body;
      err.hidden = false;
      return;
    }
    this._submitting = true;
    this._formSubmit.disabled = true;
    this._formSubmit.textContent = 'Submitting…';
    err.hidden = true;
    err.textContent = '';
    try {
      const job = await jobsApi.submit(body);
      this._setStatus(`Job #${job.id} queued: ${jobTitle(job)}.`);
      this._form.hidden = true;
      this._submitToggle.setAttribute('aria-expanded', 'false');
      this._submitToggle.classList.remove('vre-mod-on');
      this._jobs = [job, ...this._jobs.filter(j => j.id !== job.id)];
      this._renderList();
      this.select(job.id);
      this._focusRow(job.id);
      this._listPoller.now();
    } catch (e) {
      err.textContent = errorText(e); // the hub's message says what to fix
      err.hidden = false;
    } finally {
      this._submitting = false;
      this._formSubmit.disabled = false;
      this._formSubmit.textContent = 'Submit job';
    }
  }

  private _options: IJobsPanelOptions;
  private _project: Promise<string | null>;
  private _submitToggle: HTMLButtonElement;
  private _status: HTMLDivElement;
  private _list: HTMLUListElement;
  private _rows = new Map<number, HTMLLIElement>();
  private _jobs: IJob[] = [];
  private _progress = new Map<number, { done: number; total: number } | null>();
  private _listAbort: AbortController | null = null;
  private _listPoller = new Poller(() => this._refreshList(), 2000);

  private _details: HTMLElement;
  private _selected: number | null = null;
  private _detail: IJobDetail | null = null;
  private _detailFinalSeen = false;
  private _detailAbort: AbortController | null = null;
  private _detailPoller = new Poller(() => this._refreshDetail(), 1000);
  private _logOffset = 0;
  private _logDone = false;
  private _logPinned = true;
  private _logResize: ResizeObserver | null = null;
  private _dTitle!: HTMLHeadingElement;
  private _dError!: HTMLDivElement;
  private _dInfo!: HTMLDListElement;
  private _dOutputs!: HTMLDivElement;
  private _dLog!: HTMLPreElement;
  private _cancelBtn!: HTMLButtonElement;
  private _rerunBtn!: HTMLButtonElement;

  private _form: HTMLFormElement;
  private _formError!: HTMLDivElement;
  private _formSubmit!: HTMLButtonElement;
  private _paramsLabel!: HTMLLabelElement;
  private _paramsHint!: HTMLDivElement;
  private _submitting = false;
  private _fields!: {
    target: HTMLInputElement;
    kind: HTMLSelectElement;
    params: HTMLTextAreaElement;
    cpu: HTMLInputElement;
    mem: HTMLInputElement;
    gpus: HTMLInputElement;
    runtime: HTMLInputElement;
    name: HTMLInputElement;
  };
}
