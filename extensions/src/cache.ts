/**
 * Decoded images in memory (LRU, bounded in bytes) and a loader that fetches them: urgent loads
 * (what is on screen) start at once; prefetches (the neighbours in the scroll direction, then the
 * rest) of a series' native slices come as one stream per contiguous run (`stream`, slices in the
 * order they are wanted, each shown as soon as it arrives), the others (MPR planes) with a bounded
 * number of requests in flight. Nothing goes to the HTTP cache (the API answers `no-store`); this
 * cache dies with the viewer.
 */
import { IPixels, getPixels, readStream } from './api';

export class PixelCache {
  constructor(private _budget: number) {}

  get bytes(): number {
    return this._bytes;
  }

  get budget(): number {
    return this._budget;
  }

  get(key: string): IPixels | undefined {
    const v = this._map.get(key);
    if (v) {
      this._map.delete(key);
      this._map.set(key, v);
    }
    return v;
  }

  has(key: string): boolean {
    return this._map.has(key);
  }

  set(key: string, value: IPixels): void {
    const old = this._map.get(key);
    if (old) {
      this._bytes -= old.bytes;
      this._map.delete(key);
    }
    this._map.set(key, value);
    this._bytes += value.bytes;
    while (this._bytes > this._budget && this._map.size > 1) {
      const oldest = this._map.keys().next().value as string;
      this._bytes -= this._map.get(oldest)!.bytes;
      this._map.delete(oldest);
    }
  }

  clear(): void {
    this._map.clear();
    this._bytes = 0;
  }

  /** Forget the entries whose key starts with `prefix` (one viewer's images). */
  deletePrefix(prefix: string): void {
    for (const [k, v] of this._map) {
      if (k.startsWith(prefix)) {
        this._bytes -= v.bytes;
        this._map.delete(k);
      }
    }
  }

  private _map = new Map<string, IPixels>();
  private _bytes = 0;
}

export interface IJob {
  key: string;
  url: string;
  /** Native slices: their index, and the URL of a stream of `count` slices from `start`. */
  index?: number;
  streamUrl?: (start: number, count: number, direction: number) => string;
}

/** A stream of slices under way: what it will deliver, in order, and how far it got. */
interface IStream {
  controller: AbortController;
  order: number[];
  next: number;
  keys: Map<number, string>;
}

/** A load waits for the stream instead of asking on its own when its slice is this close. */
const STREAM_WAIT = 6;

/** One budget for all viewers of the page: 512 MB of decoded images. */
const SHARED = new PixelCache(512 * 1024 * 1024);
let nextId = 0;

/** A viewer's loader; its images live in the page-wide cache under its own key prefix. */
export class Loader {
  constructor(
    private _maxInFlight = 3,
    readonly cache: PixelCache = SHARED
  ) {}

  /** The cached image of `key`, if any. */
  cached(key: string): IPixels | undefined {
    return this.cache.get(this._prefix + key);
  }

  /** How many of this viewer's images are in the cache. */
  get cachedCount(): number {
    let n = 0;
    this._keys.forEach(k => {
      if (this.cache.has(k)) {
        n += 1;
      }
    });
    return n;
  }

  /** The image now: from the cache, the request already under way, the stream when it is about
   * to deliver it, or a new request. */
  load(job: IJob): Promise<IPixels> {
    const hit = this.cache.get(this._prefix + job.key);
    if (hit) {
      return Promise.resolve(hit);
    }
    const inflight = this._inflight.get(job.key);
    if (inflight) {
      return inflight;
    }
    if (this._stream && job.index !== undefined && this._comingSoon(job.index)) {
      const waiting = this._waiting.get(job.key);
      if (waiting) {
        return waiting.promise;
      }
      let resolve!: (img: IPixels) => void;
      let reject!: (e: Error) => void;
      const promise = new Promise<IPixels>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this._waiting.set(job.key, { promise, resolve, reject, job });
      return promise;
    }
    return this._fetch(job);
  }

  /** Replace the prefetch wishes (the latest intention wins); cached ones are skipped. */
  prefetch(jobs: IJob[]): void {
    const missing = jobs.filter(j => !this.cache.has(this._prefix + j.key) && !this._inflight.has(j.key));
    const streamable = (j: IJob) => !this._noStream && !!j.streamUrl && j.index !== undefined;
    this._wanted = missing.filter(streamable);
    this._queue = missing.filter(j => !streamable(j));
    this._plan();
    this._pump();
  }

  /** Whether a stream is under way (for tests and the benchmark). */
  get streaming(): boolean {
    return this._stream !== null;
  }

  dispose(): void {
    this._disposed = true;
    this._queue = [];
    this._wanted = [];
    this._stopStream();
    for (const c of this._controllers) {
      c.abort();
    }
    this._controllers.clear();
    this.cache.deletePrefix(this._prefix);
    this._keys.clear();
  }

  private _comingSoon(index: number): boolean {
    const s = this._stream!;
    const at = s.order.indexOf(index, s.next);
    return at >= 0 && at - s.next < STREAM_WAIT;
  }

  /** Keep the stream if it is about to deliver the first wish; else start one for the wishes'
   * first contiguous run (in the direction the wishes go). */
  private _plan(): void {
    if (this._disposed) {
      return;
    }
    const wanted = this._wanted.filter(
      j => !this.cache.has(this._prefix + j.key) && !this._inflight.has(j.key)
    );
    this._wanted = wanted;
    if (this._stream) {
      if (!wanted.length || this._comingSoon(wanted[0].index!)) {
        return;
      }
      this._stopStream();
    }
    if (!wanted.length) {
      return;
    }
    const first = wanted[0];
    const byIndex = new Map<number, IJob>(wanted.map(j => [j.index!, j]));
    const second = wanted.length > 1 ? wanted[1].index! - first.index! : 1;
    const direction = second === -1 ? -1 : 1;
    const order: number[] = [];
    const keys = new Map<number, string>();
    for (let i = first.index!; byIndex.has(i); i += direction) {
      order.push(i);
      keys.set(i, byIndex.get(i)!.key);
    }
    const stream: IStream = { controller: new AbortController(), order, next: 0, keys };
    this._stream = stream;
    const url = first.streamUrl!(first.index!, order.length, direction);
    readStream(
      url,
      stream.controller.signal,
      img => {
        const key = stream.keys.get(img.index);
        const at = stream.order.indexOf(img.index, stream.next);
        if (at >= 0) {
          stream.next = at + 1;
        }
        if (key === undefined || this._disposed) {
          return;
        }
        this.cache.set(this._prefix + key, img);
        this._keys.add(this._prefix + key);
        const w = this._waiting.get(key);
        if (w) {
          this._waiting.delete(key);
          w.resolve(img);
        }
      },
      (index, error) => {
        const key = stream.keys.get(index);
        const at = stream.order.indexOf(index, stream.next);
        if (at >= 0) {
          stream.next = at + 1;
        }
        const w = key !== undefined ? this._waiting.get(key) : undefined;
        if (w) {
          this._waiting.delete(key!);
          w.reject(error);
        }
        // a slice that cannot be shown is not wished again by this stream's successors
        this._wanted = this._wanted.filter(j => j.index !== index);
      }
    )
      .then(
        () => true,
        e => (e as Error).name === 'AbortError'
      )
      .then(ok => {
        if (this._stream !== stream) {
          return;
        }
        this._stream = null;
        if (!ok) {
          // the stream route failed (an older server, a refusal): one request per slice from now on
          this._noStream = true;
          this._queue = [...this._wanted, ...this._queue];
          this._wanted = [];
        }
        this._releaseWaiting();
        this._plan();
        this._pump();
      });
  }

  private _stopStream(): void {
    const s = this._stream;
    if (s) {
      this._stream = null;
      s.controller.abort();
      this._releaseWaiting();
    }
  }

  /** Loads that waited for a stream that will not deliver them ask on their own. */
  private _releaseWaiting(): void {
    const waiting = Array.from(this._waiting.values());
    this._waiting.clear();
    for (const w of waiting) {
      const hit = this.cache.get(this._prefix + w.job.key);
      if (hit) {
        w.resolve(hit);
      } else {
        (this._inflight.get(w.job.key) || this._fetch(w.job)).then(w.resolve, w.reject);
      }
    }
  }

  private _pump(): void {
    while (!this._disposed && this._active < this._maxInFlight && this._queue.length) {
      const job = this._queue.shift()!;
      if (this.cache.has(this._prefix + job.key) || this._inflight.has(job.key)) {
        continue;
      }
      this._fetch(job).catch(() => undefined);
    }
  }

  private _fetch(job: IJob): Promise<IPixels> {
    this._active++;
    const controller = new AbortController();
    this._controllers.add(controller);
    const p = getPixels(job.url, controller.signal)
      .then(img => {
        if (!this._disposed) {
          this.cache.set(this._prefix + job.key, img);
          this._keys.add(this._prefix + job.key);
        }
        return img;
      })
      .finally(() => {
        this._controllers.delete(controller);
        this._inflight.delete(job.key);
        this._active--;
        this._pump();
      });
    this._inflight.set(job.key, p);
    return p;
  }

  private _prefix = `v${nextId++}:`;
  private _wanted: IJob[] = [];
  private _noStream = false;
  private _stream: IStream | null = null;
  private _waiting = new Map<
    string,
    { promise: Promise<IPixels>; resolve: (img: IPixels) => void; reject: (e: Error) => void; job: IJob }
  >();
  private _keys = new Set<string>();
  private _queue: IJob[] = [];
  private _inflight = new Map<string, Promise<IPixels>>();
  private _controllers = new Set<AbortController>();
  private _active = 0;
  private _disposed = false;
}
