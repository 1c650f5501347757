/**
 * The airlock as the Export requests panel sees it: this server's own relay
 * (`<base_url>vre/api/airlock...`, extensions/vre_session/airlock.py -> the VRE service's API,
 * docs/airlock.md). Released files are downloaded from the VRE service itself (`downloadUrl`),
 * never through the session.
 */

import { ApiError, apiUrl, callJSON, serviceUrl } from './http';

export type AirlockState =
  | 'draft'
  | 'submitted'
  | 'in_review'
  | 'changes_requested'
  | 'approved'
  | 'released'
  | 'rejected'
  | 'withdrawn';

export type AirlockAction =
  | 'edit'
  | 'add_files'
  | 'remove_file'
  | 'check'
  | 'submit'
  | 'update_file'
  | 'withdraw'
  | 'download';

export interface IAirlockSummary {
  id: number;
  project: string;
  author: string;
  title: string;
  state: AirlockState;
  phase: 'independent' | 'consolidation' | null;
  round: number;
  reviews_required: number;
  reviews_complete: number;
  created_at: string;
  submitted_at: string | null;
  updated_at: string | null;
  released_at: string | null;
  file_count: number;
  /** Held jobs' files the caller may not see yet (counted in `file_count`, not in `total_size`). */
  withheld_files?: number;
  total_size: number;
  you: string[];
  actions: string[];
}

export interface IAirlockFile {
  id: number;
  name: string;
  path: string;
  description: string;
  size: number | null;
  sha256: string | null;
  version: number;
  frozen: boolean;
  frozen_at: string | null;
  status: 'pending' | 'approved' | 'changes' | 'rejected' | 'conflict';
  /** From a held job's folder (`/held/jobs/<id>`). */
  held?: boolean;
  withheld?: false;
}

/**
 * A held job's file before release, as its author and the project's members see it: its name,
 * size and checksum are withheld; `path` is the job's folder (docs/airlock.md).
 */
export interface IWithheldFile extends Omit<IAirlockFile, 'name' | 'size' | 'sha256' | 'withheld'> {
  name: null;
  size: null;
  sha256: null;
  withheld: true;
}

/** A request's files: those the caller sees, and held files it does not. */
export type AirlockEntry = IAirlockFile | IWithheldFile;

export interface IAirlockReview {
  id: number;
  file: number;
  file_version: number;
  reviewer: string;
  decision: 'approve' | 'changes' | 'reject';
  comment: string;
  phase: string;
  time: string;
  current: boolean;
}

export interface IAirlockRequest extends IAirlockSummary {
  justification: string;
  files: AirlockEntry[];
  reviews: IAirlockReview[];
  history: { from: string | null; to: string; actor: string; comment: string; time: string }[];
  rules: { [key: string]: unknown } | null;
  record: boolean;
}

export interface ICheckReport {
  ok: boolean;
  problems: string[];
  files: { id: number; name: string | null; path: string; frozen: boolean; size: number | null; problems: string[]; withheld?: boolean }[];
}

/** A refused call's problems (`problems`, then `files[].problems`) as lines for the user. */
export function problemLines(e: unknown): string[] {
  const body = e instanceof ApiError ? e.body : null;
  const lines: string[] = [];
  for (const p of (body?.problems as string[] | undefined) || []) {
    lines.push(p);
  }
  for (const f of (body?.files as { name?: string; path?: string; problems?: string[] }[] | undefined) || []) {
    for (const p of f.problems || []) {
      lines.push(`${f.name || f.path}: ${p}`);
    }
  }
  return lines;
}

const NO_AIRLOCK = {
  notAvailable: 'The airlock is not available in this session (the vre_session server extension has no airlock API).'
};

function call<T>(
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  parts: string[],
  body?: unknown,
  query?: { [key: string]: string | null },
  signal?: AbortSignal
): Promise<T> {
  return callJSON<T>(method, apiUrl(['airlock', ...parts], query), body, signal, NO_AIRLOCK);
}

const id = (n: number) => String(n);

export const airlockApi = {
  /** This session's project (`GET vre/api/`): the panel lists and adds to its requests only. */
  project: () =>
    callJSON<{ project?: string | null }>('GET', apiUrl([]), undefined, undefined, NO_AIRLOCK).then(r => r.project || null),
  list: (project: string | null, signal?: AbortSignal) =>
    call<{ requests: IAirlockSummary[] }>('GET', ['requests'], undefined, { role: 'author', project }, signal).then(
      r => r.requests || []
    ),
  get: (rid: number, signal?: AbortSignal) =>
    call<IAirlockRequest>('GET', ['requests', id(rid)], undefined, undefined, signal),
  create: (title: string, justification: string, files: { path: string; description?: string }[] = []) =>
    call<IAirlockRequest>('POST', ['requests'], { title, justification, files }),
  edit: (rid: number, changes: { title?: string; justification?: string }) =>
    call<IAirlockRequest>('PATCH', ['requests', id(rid)], changes),
  addFiles: (rid: number, files: { path: string; description?: string }[]) =>
    call<IAirlockRequest>('POST', ['requests', id(rid), 'files'], { files }),
  describe: (rid: number, fid: number, description: string) =>
    call<IAirlockRequest>('PATCH', ['requests', id(rid), 'files', id(fid)], { description }),
  removeFile: (rid: number, fid: number) => call<IAirlockRequest>('DELETE', ['requests', id(rid), 'files', id(fid)]),
  updateFile: (rid: number, fid: number, path?: string) =>
    call<IAirlockRequest>('POST', ['requests', id(rid), 'files', id(fid), 'update'], path ? { path } : {}),
  check: (rid: number) => call<ICheckReport>('POST', ['requests', id(rid), 'check'], {}),
  submit: (rid: number) => call<IAirlockRequest>('POST', ['requests', id(rid), 'submit'], {}),
  withdraw: (rid: number, comment: string) =>
    call<IAirlockRequest>('POST', ['requests', id(rid), 'withdraw'], { comment })
};

/**
 * The VRE service's download route for a released request (zip) or one of its files: a page of
 * the service that logs the browser in through the hub (silently: the user is logged in) and hands
 * over to the API's download, which checks and records it.
 */
export function downloadUrl(rid: number, fid?: number): string {
  return serviceUrl(fid === undefined ? `airlock/${rid}/download` : `airlock/${rid}/files/${fid}/download`);
}
