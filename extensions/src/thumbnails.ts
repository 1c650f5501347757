/**
 * The dataset browser's series thumbnails (`.../thumbnail.png`), fetched as blobs and kept as
 * object URLs.
 */
import { getBlob } from './http';

/** Thumbnails as object URLs: at most 4 requests at a time, newest wishes first, LRU of 800. */
export class Thumbnails {
  get(url: string): Promise<string> {
    const hit = this._urls.get(url);
    if (hit) {
      this._urls.delete(url);
      this._urls.set(url, hit);
      return Promise.resolve(hit);
    }
    let p = this._pending.get(url);
    if (!p) {
      p = new Promise<string>((resolve, reject) => {
        this._queue.unshift({ url, resolve, reject });
        this._pump();
      });
      this._pending.set(url, p);
      p.catch(() => undefined).finally(() => this._pending.delete(url));
    }
    return p;
  }

  /** Forget queued requests that are no longer on screen. */
  keepOnly(urls: Set<string>): void {
    const dropped = this._queue.filter(j => !urls.has(j.url));
    this._queue = this._queue.filter(j => urls.has(j.url));
    for (const j of dropped) {
      this._pending.delete(j.url);
      j.reject(new Error('scrolled away'));
    }
  }

  private _pump(): void {
    while (this._active < 4 && this._queue.length) {
      const job = this._queue.shift()!;
      this._active++;
      getBlob(job.url)
        .then(blob => {
          const u = URL.createObjectURL(blob);
          this._urls.set(job.url, u);
          while (this._urls.size > 800) {
            const [k, v] = this._urls.entries().next().value as [string, string];
            URL.revokeObjectURL(v);
            this._urls.delete(k);
          }
          job.resolve(u);
        }, job.reject)
        .finally(() => {
          this._active--;
          this._pump();
        });
    }
  }

  private _urls = new Map<string, string>();
  private _pending = new Map<string, Promise<string>>();
  private _queue: { url: string; resolve: (u: string) => void; reject: (e: unknown) => void }[] = [];
  private _active = 0;
}
