/**
 * The Jobs panel (sidebar): the project's batch queue, through this server's own relay
 * (`<base_url>vre/api/jobs...`, jobs-api.ts).
 *
 * - the project's jobs, newest first, refreshed every 2 s while the panel is visible
 *   (jobs-list.ts);
 * - a job's details: live log (polled by byte offset), output files (open in Lab), Cancel, Re-run
 *   (jobs-details.ts, jobs-log.ts);
 * - a submit form (notebook or script of the workspace, parameters, resources); the hub's
 *   refusals are shown as they come (they say what to fix) (jobs-form.ts).
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { button, el } from './dom';
import { errorText } from './http';
import { IJob, jobsApi } from './jobs-api';
import { JobDetails } from './jobs-details';
import { JobForm } from './jobs-form';
import { jobTitle } from './jobs-format';
import { JobList, Progress } from './jobs-list';
import { Poller } from './poller';

export interface IJobsPanelOptions {
  /** Open a file in Lab; `path` is relative to the Lab's root. */
  openFile(path: string): void;
}

export class JobsPanel extends Widget {
  constructor(options: IJobsPanelOptions) {
    super();
    this.id = 'vre-jobs';
    this.addClass('vre-Jobs');
    this.title.caption = 'Jobs (batch queue)';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', 'Batch jobs');

    this._form = new JobForm(job => this._submitted(job));
    const head = el('div', 'vre-Jobs-head');
    head.appendChild(el('h2', 'vre-Jobs-title', 'Jobs'));
    const tools = el('div', 'vre-Jobs-tools');
    tools.appendChild(this._form.toggleButton);
    tools.appendChild(button('⟳', 'Refresh the job list', () => this._listPoller.now(), { labelled: true }));
    head.appendChild(tools);
    this.node.appendChild(head);

    this.node.appendChild(this._form.node);

    this._status = el('div', 'vre-Jobs-status');
    this._status.setAttribute('role', 'status');
    this._status.setAttribute('aria-live', 'polite');
    this.node.appendChild(this._status);

    this._list = new JobList(id => this.select(id));
    this.node.appendChild(this._list.node);

    this._details = new JobDetails({
      openFile: path => options.openFile(path),
      changed: () => this._listPoller.now(),
      rerun: (job, of) => {
        this._setStatus(`Job #${job.id} queued (a re-run of #${of}).`);
        this.select(job.id);
      },
      close: id => {
        this.select(null);
        this._list.focusRow(id);
      }
    });
    this.node.appendChild(this._details.node);

    this._project = jobsApi.project().catch(() => null);
  }

  /** Open the submit form, with `path` (relative to the Lab root) as its target. */
  showForm(path?: string): void {
    this._form.show(path);
  }

  toggleForm(): void {
    this._form.toggle();
  }

  /** Show one job's details (log, outputs, actions). */
  select(id: number | null): void {
    if (id === this._selected) {
      return;
    }
    this._selected = id;
    this._details.show(id);
    this._list.markSelected(id);
    this.node.classList.toggle('vre-mod-details', id !== null);
    if (id !== null && this.isVisible) {
      this._details.start();
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._listPoller.stop();
    this._details.dispose();
    this._listAbort?.abort();
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
      this._details.start();
    }
  }

  private _pause(): void {
    this._listPoller.stop();
    this._details.stop();
  }

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
    this._list.render(this._jobs, this._progress, this._selected);
  }

  /** The form queued `job`: show it, selected, at the top of the list. */
  private _submitted(job: IJob): void {
    this._setStatus(`Job #${job.id} queued: ${jobTitle(job)}.`);
    this._jobs = [job, ...this._jobs.filter(j => j.id !== job.id)];
    this._renderList();
    this.select(job.id);
    this._list.focusRow(job.id);
    this._listPoller.now();
  }

  private _setStatus(text: string, error = false): void {
    this._status.textContent = text;
    this._status.classList.toggle('vre-mod-error', error);
    this._status.hidden = !text;
  }

  private _form: JobForm;
  private _project: Promise<string | null>;
  private _status: HTMLDivElement;
  private _list: JobList;
  private _details: JobDetails;
  private _selected: number | null = null;
  private _jobs: IJob[] = [];
  private _progress = new Map<number, Progress>();
  private _listAbort: AbortController | null = null;
  private _listPoller = new Poller(() => this._refreshList(), 2000);
}
