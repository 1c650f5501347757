/**
 * How the Jobs panel shows a job: state badges and labels, durations, resource use, sizes,
 * progress bars, and paths between the session (absolute) and the Lab (relative to its root).
 */
import { el } from './dom';
import { IJob, JobState } from './jobs-api';

/** The Lab's root (the file browser's paths are relative to it). */
export const HOME = '/home/jovyan';

const FINAL: JobState[] = ['succeeded', 'failed', 'cancelled', 'timed_out'];

export function isFinal(state: JobState): boolean {
  return FINAL.includes(state);
}

export const STATE_LABEL: { [s in JobState]: string } = {
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
export function jobDuration(job: IJob): string {
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

export function usageText(job: IJob): string {
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

export function sizeText(n: number): string {
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

export function jobTitle(job: IJob): string {
  if (job.name) {
    return job.name;
  }
  if (job.kind === 'notebook' || job.kind === 'script') {
    return job.target.split('/').pop() || job.target;
  }
  return job.kind === 'cluster' ? 'Dask workers' : job.target || job.kind;
}

export function badge(state: JobState): HTMLSpanElement {
  const b = el('span', `vre-JobBadge vre-JobBadge-${state}`, STATE_LABEL[state] || state);
  b.dataset.state = state;
  return b;
}

export function progressBar(p: { done: number; total: number }): HTMLDivElement {
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
