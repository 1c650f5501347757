/**
 * A job's details in the Jobs panel: state, parameters, resources and use, reason, output files
 * (open in the Lab), Cancel and Re-run, and its live log (jobs-log.ts). Polled every second while
 * shown, until the job has ended and its log is read to the end.
 */
import { button, el } from './dom';
import { errorText } from './http';
import { IJob, IJobDetail, jobsApi } from './jobs-api';
import { JobLog } from './jobs-log';
import { badge, duration, isFinal, jobDuration, jobTitle, labPath, progressBar, sizeText, usageText } from './jobs-format';
import { Poller } from './poller';

export interface IJobDetailsOptions {
  /** Open a file in Lab; `path` is relative to the Lab's root. */
  openFile(path: string): void;
  /** A job was cancelled or re-run: the list is out of date. */
  changed(): void;
  /** Job `of` was queued again as `job`. */
  rerun(job: IJob, of: number): void;
  /** The details of job `id` were closed (✕). */
  close(id: number): void;
}

export class JobDetails {
  readonly node: HTMLElement;

  constructor(private _options: IJobDetailsOptions) {
    this.node = el('section', 'vre-JobDetails');
    this.node.setAttribute('aria-label', 'Job details');
    this.node.hidden = true;
  }

  /** The job shown (null: none). */
  get id(): number | null {
    return this._id;
  }

  /** Show job `id` (null: hide); polling starts with `start()`. */
  show(id: number | null): void {
    this._id = id;
    this._abort?.abort();
    this._abort = null;
    this._detail = null;
    this._finalSeen = false;
    this._poller.stop();
    this.node.hidden = id === null;
    this.node.textContent = '';
    this._log?.dispose();
    this._log = null;
    if (id !== null) {
      this._renderSkeleton(id);
    }
  }

  /** Poll the shown job (while the panel is visible). */
  start(): void {
    if (this._id !== null) {
      this._poller.start();
    }
  }

  stop(): void {
    this._poller.stop();
  }

  dispose(): void {
    this._poller.stop();
    this._abort?.abort();
    this._log?.dispose();
  }

  private _renderSkeleton(id: number): void {
    const d = this.node;
    const head = el('div', 'vre-JobDetails-head');
    this._dTitle = el('h3', 'vre-JobDetails-title', `Job #${id}`);
    head.appendChild(this._dTitle);
    const actions = el('div', 'vre-JobDetails-actions');
    this._cancelBtn = button('Cancel', `Cancel job ${id}`, () => void this._act('cancel', id), { labelled: true });
    this._cancelBtn.classList.add('vre-JobDetails-cancel');
    this._rerunBtn = button('Re-run', `Queue job ${id} again as a new job`, () => void this._act('rerun', id), {
      labelled: true
    });
    this._rerunBtn.classList.add('vre-JobDetails-rerun');
    this._cancelBtn.disabled = true;
    this._rerunBtn.disabled = true;
    actions.appendChild(this._cancelBtn);
    actions.appendChild(this._rerunBtn);
    actions.appendChild(
      button('✕', 'Close the job details', () => this._options.close(id), {
        cls: 'vre-btn vre-JobDetails-close',
        labelled: true
      })
    );
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
    this._log = new JobLog(id);
    d.appendChild(this._log.node);
  }

  private async _refresh(): Promise<void> {
    const id = this._id;
    const log = this._log;
    if (id === null || log === null) {
      return;
    }
    this._abort?.abort();
    const abort = (this._abort = new AbortController());
    const final = this._detail !== null && isFinal(this._detail.state);
    try {
      if (!final || !this._finalSeen) {
        const detail = await jobsApi.get(id, abort.signal);
        if (abort.signal.aborted || this._id !== id) {
          return;
        }
        this._finalSeen = isFinal(detail.state);
        this._detail = detail;
        this._render(detail);
      }
      if (!log.done) {
        await log.read(abort.signal, () => this._id === id);
      }
      this._dError.hidden = true;
    } catch (e) {
      if ((e as Error).name === 'AbortError' || this._id !== id) {
        return;
      }
      this._dError.textContent = errorText(e);
      this._dError.hidden = false;
    }
    if (this._detail && isFinal(this._detail.state) && this._finalSeen && log.done) {
      this._poller.stop(); // nothing more will change
    }
  }

  private _render(job: IJobDetail): void {
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
      if (job.held) {
        this._dOutputs.appendChild(el('div', 'vre-JobOutputs-held', job.held));
      } else if (!outputs.length) {
        this._dOutputs.appendChild(el('div', 'vre-JobOutputs-none', 'none yet'));
      }
      const ul = el('ul', 'vre-JobOutputs-list');
      for (const o of outputs) {
        const li = el('li');
        const rel = labPath(o.path);
        const shown = o.path.startsWith(job.outdir + '/') ? o.path.slice(job.outdir.length + 1) : o.path;
        const b = button(shown, `Open ${rel ?? o.path} in JupyterLab`, () => rel && this._options.openFile(rel), {
          cls: 'vre-JobOutput',
          labelled: true
        });
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
      this._options.changed();
      if (action === 'rerun') {
        this._options.rerun(job, id);
      } else {
        this._poller.now();
      }
    } catch (e) {
      this._dError.textContent = errorText(e);
      this._dError.hidden = false;
      btn.disabled = false;
    }
  }

  private _id: number | null = null;
  private _detail: IJobDetail | null = null;
  private _finalSeen = false;
  private _abort: AbortController | null = null;
  private _poller = new Poller(() => this._refresh(), 1000);
  private _log: JobLog | null = null;
  private _dTitle!: HTMLHeadingElement;
  private _dError!: HTMLDivElement;
  private _dInfo!: HTMLDListElement;
  private _dOutputs!: HTMLDivElement;
  private _cancelBtn!: HTMLButtonElement;
  private _rerunBtn!: HTMLButtonElement;
}
