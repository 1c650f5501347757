/**
 * Decoded images in memory (LRU, bounded in bytes) and a loader that fetches them with a
 * bounded number of requests in flight: urgent loads (what is on screen) start at once,
 * prefetches (the neighbours in the scroll direction, then the rest) fill the free slots.
 * Nothing goes to the HTTP cache (the API answers `no-store`); this cache dies with the viewer.
 */
import { IPixels, getPixels } from './api';

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
}

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

  /** The image now: from the cache, the request already under way, or a new request. */
  load(job: IJob): Promise<IPixels> {
    const hit = this.cache.get(this._prefix + job.key);
    if (hit) {
      return Promise.resolve(hit);
    }
    return this._inflight.get(job.key) || this._fetch(job);
  }

  /** Replace the prefetch queue (the latest intention wins); cached ones are skipped. */
  prefetch(jobs: IJob[]): void {
    this._queue = jobs.filter(j => !this.cache.has(this._prefix + j.key) && !this._inflight.has(j.key));
    this._pump();
  }

  dispose(): void {
    this._disposed = true;
    this._queue = [];
    for (const c of this._controllers) {
      c.abort();
    }
    this._controllers.clear();
    this.cache.deletePrefix(this._prefix);
    this._keys.clear();
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
  private _keys = new Set<string>();
  private _queue: IJob[] = [];
  private _inflight = new Map<string, Promise<IPixels>>();
  private _controllers = new Set<AbortController>();
  private _active = 0;
  private _disposed = false;
}
