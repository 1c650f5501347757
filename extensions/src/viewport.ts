/**
 * One pane of the viewer: a canvas showing one stack (native slices or one MPR plane) of the
 * series, scaled by the pixel spacing so the aspect ratio is the patient's, with its overlays
 * (viewport-overlay.ts), mouse input (viewport-input.ts) and slider. Images come through the
 * viewer's loader (cache.ts) and are windowed by its renderer (render.ts).
 */
import { IPixels, IPlaneInfo, ISeriesMeta, Markers, Plane, Source, sourceUrl } from './api';
import { IJob, Loader } from './cache';
import { el } from './dom';
import { errorText } from './http';
import { IReferenceLines, drawReferenceLines } from './mpr';
import { IDisplay, Renderer, formatValue, valueAt } from './render';
import { ViewportInput } from './viewport-input';
import { ViewportOverlay } from './viewport-overlay';

/** What a pane shows: the native slices or one reformatted plane. */
export type Stack = 'native' | Plane;
/** What a left drag does. */
export type Tool = 'wl' | 'pan' | 'zoom';

export const PLANE_LABEL: { [k: string]: string } = {
  native: 'Native',
  axial: 'Axial',
  coronal: 'Coronal',
  sagittal: 'Sagittal'
};

/** The viewer, as its panes see it (viewer.ts). */
export interface IViewportOwner {
  readonly node: HTMLElement;
  readonly source: Source;
  readonly meta: ISeriesMeta | null;
  readonly display: IDisplay;
  readonly tool: Tool;
  readonly renderer: Renderer;
  readonly loader: Loader;
  readonly isColor: boolean;
  readonly windowSet: boolean;
  setActive(v: Viewport): void;
  adjustWindow(dx: number, dy: number): void;
  indexChanged(v: Viewport): void;
  imageShown(v: Viewport, img: IPixels, first: boolean): void;
  painted(v: Viewport, t0: number, t1: number, requested: number): void;
  prefetch(v: Viewport, jobs: IJob[]): void;
  prefetchLimit(bytes: number): number;
  crosshair(v: Viewport, row: number, col: number): void;
  referenceLines(v: Viewport): IReferenceLines | null;
}

/** One image pane: a canvas, its overlays and its slider, showing one stack. */
export class Viewport {
  readonly node: HTMLDivElement;
  readonly canvas: HTMLCanvasElement;
  index = 0;
  image: IPixels | null = null;
  zoom = 1;
  panX = 0;
  panY = 0;

  constructor(
    readonly owner: IViewportOwner,
    readonly stack: Stack,
    readonly count: number
  ) {
    this.node = el('div', `vre-Viewport vre-Viewport-${stack}`);
    this.node.dataset.stack = stack;
    const stage = el('div', 'vre-Viewport-stage');
    this.canvas = el('canvas', 'vre-Viewport-canvas');
    stage.appendChild(this.canvas);
    this._ov = new ViewportOverlay(stage, PLANE_LABEL[stack]);
    this.node.appendChild(stage);

    const bar = el('div', 'vre-Viewport-bar');
    this.slider = el('input', 'vre-slider');
    this.slider.type = 'range';
    this.slider.min = '0';
    this.slider.max = String(Math.max(0, count - 1));
    this.slider.step = '1';
    this.slider.title = 'Slice (wheel, arrow keys, PageUp/PageDown)';
    this.slider.addEventListener('input', () => {
      this.owner.setActive(this);
      this.setIndex(Number(this.slider.value), performance.now());
    });
    // back to the viewer, so that the keys step the active pane (not the slider)
    this.slider.addEventListener('change', () => this.owner.node.focus({ preventScroll: true }));
    bar.appendChild(this.slider);
    this.node.appendChild(bar);
    this.slider.disabled = count <= 1;

    this._input = new ViewportInput(this);
    this._resizeObserver = new ResizeObserver(() => this.requestDraw(false));
    this._resizeObserver.observe(stage);
  }

  readonly slider: HTMLInputElement;

  dispose(): void {
    this._resizeObserver.disconnect();
    if (this._raf) {
      cancelAnimationFrame(this._raf);
    }
    this.node.remove();
  }

  job(i: number): IJob {
    const src = this.owner.source;
    if (this.stack !== 'native') {
      return { key: `${this.stack}:${i}`, url: sourceUrl(src, ['mpr', this.stack, String(i)]) };
    }
    return {
      key: `native:${i}`,
      url: sourceUrl(src, ['slices', String(i)]),
      index: i,
      streamUrl: (start, count, direction) => sourceUrl(src, ['stream'], { start, count, direction })
    };
  }

  get plane(): IPlaneInfo | null {
    if (this.stack === 'native') {
      return null;
    }
    return this.owner.meta?.mpr?.planes?.[this.stack] || null;
  }

  /** Show image `i` (loads it if needed; the last request wins). */
  setIndex(i: number, requested: number): void {
    i = Math.max(0, Math.min(this.count - 1, Math.round(i)));
    this._direction = i >= this.index ? 1 : -1;
    this.index = i;
    this._requested = requested;
    this.node.dataset.index = String(i);
    this.slider.value = String(i);
    this._ov.slice.textContent = `${PLANE_LABEL[this.stack] === 'Native' ? 'Slice' : 'Image'} ${i + 1} / ${this.count}`;
    this.owner.indexChanged(this);
    const job = this.job(i);
    const cached = this.owner.loader.cached(job.key);
    if (cached) {
      this._show(cached, i);
    } else {
      this._ov.startSpinner();
      this.owner.loader.load(job).then(
        img => {
          if (this.index === i) {
            this._show(img, i);
          }
        },
        e => {
          if (this.index === i && (e as Error).name !== 'AbortError') {
            this._ov.stopSpinner();
            this.showMessage(`Cannot show ${this.stack === 'native' ? 'slice' : this.stack + ' image'} ${i + 1}: ${errorText(e)}`);
          }
        }
      );
    }
    this._prefetch();
  }

  step(delta: number): void {
    this.setIndex(this.index + delta, performance.now());
  }

  showMessage(text: string | null): void {
    this._ov.message.hidden = !text;
    this._ov.message.textContent = text || '';
    this.node.classList.toggle('vre-mod-error', !!text);
  }

  /** Redraw; `pixels`: the window or the image changed (re-run the LUT). */
  requestDraw(pixels: boolean): void {
    this._pixelsDirty = this._pixelsDirty || pixels;
    if (!this._raf) {
      this._raf = requestAnimationFrame(() => {
        this._raf = 0;
        this.draw();
      });
    }
  }

  /** Screen geometry: CSS px per image column/row and the image origin in the canvas. */
  geometry(): { sx: number; sy: number; ox: number; oy: number; w: number; h: number } | null {
    const img = this.image;
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    if (!img || !w || !h) {
      return null;
    }
    const [rowSp, colSp] = this.spacing();
    const fit = Math.min(w / (img.cols * colSp), h / (img.rows * rowSp));
    const scale = fit * this.zoom;
    const sx = colSp * scale;
    const sy = rowSp * scale;
    const ox = (w - img.cols * sx) / 2 + this.panX;
    const oy = (h - img.rows * sy) / 2 + this.panY;
    return { sx, sy, ox, oy, w, h };
  }

  spacing(): [number, number] {
    const s =
      this.image?.spacing ||
      (this.stack === 'native' ? this.owner.meta?.pixel_spacing : this.plane?.pixel_spacing) ||
      null;
    if (s && s.length === 2 && s[0] > 0 && s[1] > 0) {
      return [s[0], s[1]];
    }
    return [1, 1];
  }

  draw(): void {
    const t0 = performance.now();
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const ch = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== cw || canvas.height !== ch) {
      canvas.width = cw;
      canvas.height = ch;
    }
    const ctx = canvas.getContext('2d')!;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, cw, ch);
    const img = this.image;
    const g = this.geometry();
    if (!img || !g) {
      return;
    }
    if (this._pixelsDirty || !this._buffer || this._bufferFor !== img) {
      if (!this._buffer || this._buffer.width !== img.cols || this._buffer.height !== img.rows) {
        this._buffer = document.createElement('canvas');
        this._buffer.width = img.cols;
        this._buffer.height = img.rows;
        this._imageData = new ImageData(img.cols, img.rows);
      }
      this.owner.renderer.render(img, this.owner.display, this._imageData!);
      this._buffer.getContext('2d')!.putImageData(this._imageData!, 0, 0);
      this._bufferFor = img;
      this._pixelsDirty = false;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    // Smooth when shrinking or mildly enlarging; crisp pixels when zoomed in far.
    ctx.imageSmoothingEnabled = Math.max(g.sx, g.sy) < 3;
    ctx.imageSmoothingQuality = 'medium';
    ctx.drawImage(this._buffer, g.ox, g.oy, img.cols * g.sx, img.rows * g.sy);
    const lines = this.owner.referenceLines(this);
    if (lines) {
      drawReferenceLines(ctx, g, img, lines);
    }
    const d = canvas.dataset;
    d.ox = g.ox.toFixed(3);
    d.oy = g.oy.toFixed(3);
    d.sx = g.sx.toFixed(5);
    d.sy = g.sy.toFixed(5);
    d.rows = String(img.rows);
    d.cols = String(img.cols);
    d.index = String(img.index);
    this._ov.zoom.textContent = `Zoom ${Math.round(this.zoom * 100)}%`;
    const t1 = performance.now();
    this.owner.painted(this, t0, t1, this._requested);
    this._requested = 0;
  }

  /** Image (row, col) under a point of the canvas (CSS px), fractional; null off the image. */
  imagePoint(x: number, y: number): { row: number; col: number } | null {
    const g = this.geometry();
    if (!g || !this.image) {
      return null;
    }
    const col = (x - g.ox) / g.sx;
    const row = (y - g.oy) / g.sy;
    if (col < 0 || row < 0 || col >= this.image.cols || row >= this.image.rows) {
      return null;
    }
    return { row, col };
  }

  updateOverlay(): void {
    const d = this.owner.display;
    this._ov.wl.textContent = this.owner.isColor || !this.owner.windowSet
      ? ''
      : `W ${formatValue(d.width)}  L ${formatValue(d.center)}${d.invert !== !!this.owner.meta?.invert ? '  (inverted)' : ''}`;
    const img = this.image;
    const m: Markers | null =
      this.stack === 'native'
        ? this.owner.meta?.orientation_markers || null
        : img?.markers || this.plane?.markers || null;
    this._ov.setMarkers(m);
    let loc: number | null = null;
    if (this.stack === 'native') {
      const s = this.owner.meta?.slices[this.index];
      loc = s && s.location !== null && s.location !== undefined ? s.location : img?.location ?? null;
    } else if (img && img.index === this.index) {
      loc = img.location;
    }
    this._ov.location.textContent = loc !== null && loc !== undefined ? `Loc ${loc.toFixed(2)} mm` : '';
    this.updateReadout();
  }

  /** The value (and patient position) under the cursor. */
  updateReadout(): void {
    const img = this.image;
    const c = this._input.cursor;
    const p = c && img ? this.imagePoint(c.x, c.y) : null;
    if (!p || !img) {
      this._ov.value.textContent = '';
      this._ov.pos.textContent = '';
      delete this._ov.value.dataset.value;
      return;
    }
    const row = Math.floor(p.row);
    const col = Math.floor(p.col);
    const v = valueAt(img, row, col);
    const units = this.owner.meta?.units || '';
    let text: string;
    if (Array.isArray(v)) {
      text = `RGB ${v.join(', ')}`;
    } else if (v === null) {
      text = '';
    } else {
      text = `${formatValue(v)}${units ? ' ' + units : ''}`;
      this._ov.value.dataset.value = String(v);
    }
    this._ov.value.dataset.row = String(row);
    this._ov.value.dataset.col = String(col);
    this._ov.value.textContent = `(${col}, ${row})  ${text}`;
    this._ov.value.title = 'pixel (column, row) and its value in modality units';
    // Patient coordinates of a native pixel: position + c * colSpacing * rowDir + r * rowSpacing * colDir.
    const meta = this.owner.meta;
    const pos = img.position || meta?.slices[this.index]?.position;
    if (this.stack === 'native' && meta?.orientation && pos && img.index === this.index) {
      const [rs, cs] = this.spacing();
      const o = meta.orientation;
      const xyz = [0, 1, 2].map(k => pos[k] + col * cs * o[k] + row * rs * o[3 + k]);
      this._ov.pos.textContent = `x ${xyz[0].toFixed(1)}  y ${xyz[1].toFixed(1)}  z ${xyz[2].toFixed(1)} mm`;
    } else {
      this._ov.pos.textContent = '';
    }
  }

  setTitleOverlay(lines: string[]): void {
    this._ov.setTitle(lines);
  }

  resetView(): void {
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.requestDraw(false);
  }

  /** Multiply the zoom by `factor`, keeping the canvas point (x, y) fixed. */
  zoomAt(factor: number, x?: number, y?: number): void {
    const g = this.geometry();
    const z = Math.max(0.1, Math.min(40, this.zoom * factor));
    if (!g) {
      this.zoom = z;
      return;
    }
    const cx = x ?? g.w / 2;
    const cy = y ?? g.h / 2;
    const f = z / this.zoom;
    // new origin so that (cx, cy) maps to the same image point
    const nox = cx - (cx - g.ox) * f;
    const noy = cy - (cy - g.oy) * f;
    this.zoom = z;
    const img = this.image!;
    const ng = this.geometry()!;
    this.panX = nox - (g.w - img.cols * ng.sx) / 2;
    this.panY = noy - (g.h - img.rows * ng.sy) / 2;
    this.requestDraw(false);
    this.updateReadout();
  }

  private _show(img: IPixels, i: number): void {
    this._ov.stopSpinner();
    this.showMessage(null);
    const first = !this.image;
    this.image = img;
    this.owner.imageShown(this, img, first);
    this.updateOverlay();
    this.requestDraw(true);
    void i;
  }

  /** Neighbours first (in the scroll direction), then the whole stack if it fits the cache. */
  private _prefetch(): void {
    const jobs: IJob[] = [];
    const n = this.count;
    const seen = new Set<number>();
    const add = (k: number) => {
      if (k >= 0 && k < n && !seen.has(k)) {
        seen.add(k);
        jobs.push(this.job(k));
      }
    };
    for (let d = 1; d <= 6; d++) {
      add(this.index + this._direction * d);
    }
    add(this.index - this._direction);
    add(this.index - 2 * this._direction);
    for (let d = 7; d < n; d++) {
      add(this.index + this._direction * d);
      add(this.index - this._direction * (d - 4));
    }
    // nearest first, and no more than this pane's share of the cache (else the far ones
    // would evict the near ones)
    const each = this.image?.bytes || 512 * 512 * 2;
    this.owner.prefetch(this, jobs.slice(0, this.owner.prefetchLimit(each)));
  }

  private _ov: ViewportOverlay;
  private _input: ViewportInput;
  private _buffer: HTMLCanvasElement | null = null;
  private _bufferFor: IPixels | null = null;
  private _imageData: ImageData | null = null;
  private _pixelsDirty = true;
  private _raf = 0;
  private _requested = 0;
  private _direction = 1;
  private _resizeObserver: ResizeObserver;
}
