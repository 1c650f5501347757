/**
 * A polling loop that never overlaps itself and skips its work while the page is hidden.
 */

/** Calls `fn` every `ms` (after the previous call settled) while started. */
export class Poller {
  constructor(
    private _fn: () => Promise<void>,
    private _ms: number
  ) {}

  get running(): boolean {
    return this._running;
  }

  start(): void {
    if (this._running) {
      return;
    }
    this._running = true;
    this._tick(0);
  }

  stop(): void {
    this._running = false;
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  /** Run now (and keep the rhythm from then on). */
  now(): void {
    if (this._running) {
      this._tick(0);
    }
  }

  private _tick(delay: number): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
    }
    this._timer = window.setTimeout(async () => {
      this._timer = null;
      if (!this._running) {
        return;
      }
      if (this._busy) {
        this._again = true;
        return;
      }
      this._busy = true;
      try {
        if (!document.hidden) {
          await this._fn();
        }
      } catch (e) {
        console.warn('VRE jobs:', e);
      } finally {
        this._busy = false;
      }
      if (this._running && this._timer === null) {
        this._tick(this._again ? 0 : this._ms);
        this._again = false;
      }
    }, delay);
  }

  private _running = false;
  private _busy = false;
  private _again = false;
  private _timer: number | null = null;
}
