/**
 * The Jobs panel's queue: the project's jobs, newest first, one row each (state, queue place,
 * progress of running notebooks, duration, resource use, reason), kept in place between polls
 * and navigable with the keyboard (a listbox with one row in the tab order).
 */
import { el } from './dom';
import { IJob } from './jobs-api';
import { STATE_LABEL, badge, isFinal, jobDuration, jobTitle, progressBar, usageText } from './jobs-format';

export type Progress = { done: number; total: number } | null;

export class JobList {
  readonly node: HTMLUListElement;

  /** `select(id)`: a row was chosen (click, Enter, Space) or, with null, let go (Escape). */
  constructor(private _select: (id: number | null) => void) {
    this.node = el('ul', 'vre-JobList');
    this.node.setAttribute('role', 'listbox');
    this.node.setAttribute('aria-label', 'Jobs of this project, newest first');
    this.node.addEventListener('keydown', e => this._onKey(e));
  }

  /** Show `jobs` (newest first); `selected` is the job whose details are open. */
  render(jobs: IJob[], progress: Map<number, Progress>, selected: number | null): void {
    this._jobs = jobs;
    const seen = new Set<number>();
    jobs.forEach((job, i) => {
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
          this._select(id);
          this.focusRow(id);
        });
        this._rows.set(job.id, row);
      }
      const signature = JSON.stringify([job, progress.get(job.id), jobDuration(job)]);
      if (row.dataset.sig !== signature) {
        row.dataset.sig = signature;
        this._fillRow(row, job, progress.get(job.id));
      }
      row.setAttribute('aria-selected', String(job.id === selected));
      row.classList.toggle('vre-mod-selected', job.id === selected);
      const at = this.node.children[i];
      if (at !== row) {
        this.node.insertBefore(row, at || null);
      }
    });
    for (const [id, row] of this._rows) {
      if (!seen.has(id)) {
        row.remove();
        this._rows.delete(id);
      }
    }
    // One row is in the tab order: the selected one, else the first.
    const focusable = selected !== null && this._rows.has(selected) ? selected : jobs[0]?.id;
    for (const [id, row] of this._rows) {
      row.tabIndex = id === focusable ? 0 : -1;
    }
  }

  /** Mark the row of `id` (or none) as the selected one. */
  markSelected(id: number | null): void {
    for (const [jid, row] of this._rows) {
      row.setAttribute('aria-selected', String(jid === id));
      row.classList.toggle('vre-mod-selected', jid === id);
    }
  }

  focusRow(id: number): void {
    const row = this._rows.get(id);
    if (!row) {
      return;
    }
    for (const [jid, r] of this._rows) {
      r.tabIndex = jid === id ? 0 : -1;
    }
    row.focus();
  }

  private _fillRow(row: HTMLLIElement, job: IJob, p: Progress | undefined): void {
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

  private _onKey(e: KeyboardEvent): void {
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
          this._select(ids[i]);
        }
        e.preventDefault();
        return;
      case 'Escape':
        this._select(null);
        e.preventDefault();
        return;
      default:
        return;
    }
    e.preventDefault();
    if (i >= 0 && i < ids.length) {
      this.focusRow(ids[i]);
    }
  }

  private _jobs: IJob[] = [];
  private _rows = new Map<number, HTMLLIElement>();
}
