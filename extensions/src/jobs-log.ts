/**
 * A job's log in the Jobs panel: read by byte offset until the job has ended and its log is read
 * to the end, the tail kept on screen, and followed while the reader is at the bottom.
 */
import { el } from './dom';
import { jobsApi } from './jobs-api';
import { isFinal } from './jobs-format';

const LOG_LIMIT = 512 * 1024; // characters of log kept on screen (the tail)

export class JobLog {
  readonly node: HTMLPreElement;

  constructor(readonly id: number) {
    this.node = el('pre', 'vre-JobLog');
    this.node.tabIndex = 0;
    this.node.setAttribute('aria-label', `Log of job ${id}`);
    this.node.setAttribute('aria-live', 'off');
    this.node.textContent = '';
    // Follow the tail while the reader is at the end (scrolled up: left alone).
    this.node.addEventListener('scroll', () => {
      const pre = this.node;
      this._pinned = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    });
    this._resize = new ResizeObserver(() => this._pin());
    this._resize.observe(this.node);
  }

  /** Whether the whole log of the ended job has been read. */
  get done(): boolean {
    return this._done;
  }

  dispose(): void {
    this._resize.disconnect();
  }

  /** Read what is new; `current()` says whether this log is still the one on screen. */
  async read(signal: AbortSignal, current: () => boolean): Promise<void> {
    // Read until caught up (a long log comes in chunks of 1 MiB).
    for (let i = 0; i < 8; i++) {
      const r = await jobsApi.log(this.id, this._offset, signal);
      if (signal.aborted || !current()) {
        return;
      }
      const advanced = r.offset > this._offset;
      this._offset = r.offset;
      if (r.text) {
        this._append(r.text);
      }
      if (!advanced) {
        if (isFinal(r.state)) {
          this._done = true;
          if (!this.node.textContent) {
            this.node.textContent = '(the job wrote no log)';
            this.node.classList.add('vre-mod-empty');
          }
        }
        return;
      }
    }
  }

  private _append(text: string): void {
    const pre = this.node;
    let all = (pre.textContent || '') + text;
    if (all.length > LOG_LIMIT) {
      all = '… (earlier lines cut; the whole log is log.txt in the outputs)\n' + all.slice(all.length - LOG_LIMIT);
    }
    pre.classList.remove('vre-mod-empty');
    pre.textContent = all;
    this._pin();
  }

  private _pin(): void {
    if (this._pinned) {
      this.node.scrollTop = this.node.scrollHeight;
    }
  }

  private _offset = 0;
  private _done = false;
  private _pinned = true;
  private _resize: ResizeObserver;
}
