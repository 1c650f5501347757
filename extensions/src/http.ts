/**
 * The one HTTP client of the extension: requests to this session's own server
 * (`<base_url>vre/api/...`: the dataset/DICOM API of extensions/API.md and the jobs relay),
 * one error type and one way to turn any error into text for the UI.
 *
 * Every request goes through `ServerConnection.makeRequest`, which adds the token / XSRF header.
 */
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/**
 * An error answered by the server (`{status, reason, message}`; the jobs relay sends
 * `{message}`), or a network failure (status 0). `message` is meant for the user as is; `body`
 * is the whole JSON answer (the airlock's refusals list problems per file there).
 */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly body: { [key: string]: unknown } | null = null
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Query parameters; empty, null and undefined values are left out. */
export type Query = { [key: string]: string | number | null | undefined };

let settings: ServerConnection.ISettings | null = null;

export function serverSettings(): ServerConnection.ISettings {
  if (!settings) {
    settings = ServerConnection.makeSettings();
  }
  return settings;
}

/**
 * A page of the VRE service on the hub (`<hub>/services/vre/<path>`: the catalogue, the airlock's
 * downloads), for links the browser follows with its hub login, not for this session's API.
 */
export function serviceUrl(path: string): string {
  const hubPrefix = PageConfig.getOption('hubPrefix') || '/hub/';
  const base = hubPrefix.replace(/hub\/?$/, '');
  return (PageConfig.getOption('hubHost') || '') + URLExt.join(base, 'services/vre', path);
}

/** The URL of an API route: `parts` are path segments (encoded here), `query` the parameters. */
export function apiUrl(parts: string[], query?: Query): string {
  const path = parts.map(p => encodeURIComponent(p)).join('/');
  let url = URLExt.join(serverSettings().baseUrl, 'vre/api', path);
  const q = Object.entries(query || {}).filter(
    ([, v]) => v !== undefined && v !== null && v !== ''
  );
  if (q.length) {
    url +=
      '?' +
      q
        .map(
          ([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`
        )
        .join('&');
  }
  return url;
}

/** What a 404 without a JSON body means: the route is not there (the server extension is missing). */
const NOT_AVAILABLE =
  'The VRE API is not available in this session (the vre_session server extension is not loaded).';

export interface IRequestOptions {
  /** The message for a 404 whose body is not the API's JSON (default: the API is not loaded). */
  notAvailable?: string;
}

/** The response of a successful request; any failure is an `ApiError` (aborts stay `AbortError`s). */
export async function request(
  url: string,
  init: RequestInit = {},
  options: IRequestOptions = {}
): Promise<Response> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, serverSettings());
  } catch (e) {
    if ((e as Error).name === 'AbortError') {
      throw e;
    }
    throw new ApiError(
      0,
      'network',
      `The session server cannot be reached (${(e as Error).message}). Is the session still running?`
    );
  }
  if (!response.ok) {
    let reason = 'error';
    let message = `${response.status} ${response.statusText}`;
    let body: any = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (body && typeof body === 'object') {
      if (typeof body.reason === 'string' && body.reason) {
        reason = body.reason;
      }
      if (typeof body.message === 'string' && body.message) {
        message = body.message;
      }
    } else if (response.status === 404) {
      message = options.notAvailable || NOT_AVAILABLE;
    }
    throw new ApiError(response.status, reason, message, body && typeof body === 'object' ? body : null);
  }
  return response;
}

export async function getJSON<T>(url: string, signal?: AbortSignal): Promise<T> {
  const response = await request(url, { signal });
  return (await response.json()) as T;
}

export async function getBlob(url: string, signal?: AbortSignal): Promise<Blob> {
  const response = await request(url, { signal });
  return await response.blob();
}

/**
 * A JSON call (`body`, if any, sent as JSON) that is never cached; answers `null` when the
 * response has no JSON body.
 */
export async function callJSON<T>(
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  url: string,
  body?: unknown,
  signal?: AbortSignal,
  options: IRequestOptions = {}
): Promise<T> {
  const init: RequestInit = { method, signal, cache: 'no-store' };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  const response = await request(url, init, options);
  try {
    return (await response.json()) as T;
  } catch {
    return null as T;
  }
}

/** A short human text for any error, for display in the UI. */
export function errorText(e: unknown): string {
  if (e instanceof Error) {
    return e.message;
  }
  return String(e);
}
