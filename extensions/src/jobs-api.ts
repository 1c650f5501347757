/**
 * The batch queue as the Jobs panel sees it: this server's own relay
 * (`<base_url>vre/api/jobs...`, extensions/vre_session/jobs/handlers.py -> the hub's queue).
 * Requests and errors (`ApiError`, whose `message` is the server's own text): http.ts.
 */
import { apiUrl, callJSON } from './http';

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'timed_out';

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
  /** open: the project's shared workers; held: batch-only data too, outputs withheld (airlock). */
  lane: 'open' | 'held';
  submitted_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface IJobDetail extends IJob {
  progress: { done: number; total: number } | null;
  outputs: { path: string; size: number }[];
  /** A held job: what to do instead of opening its outputs. */
  held?: string;
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
  lane?: 'open' | 'held';
}

/** A 404 without the API's JSON: this server has no jobs routes. */
const NO_QUEUE = {
  notAvailable:
    'The batch queue is not available in this session (the vre_session server extension has no jobs API).'
};

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
