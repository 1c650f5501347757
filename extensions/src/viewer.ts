/**
 * The DICOM viewer: native slices and axial/coronal/sagittal reformats of a series or a file.
 *
 * Images arrive as raw modality values (HU for CT); window/level is applied here through a
 * lookup table (render.ts) into an ImageData, then drawn on a 2-D canvas scaled by the pixel
 * spacing, so the aspect ratio is the patient's. Mouse: wheel = slice, ctrl+wheel = zoom,
 * left drag = the current tool (W/L by default), right drag = W/L, middle or shift drag = pan,
 * double click (MPR) = move the other planes there. Keys: arrows, PageUp/PageDown, Home/End,
 * +/-, r (reset), i (invert).
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  IPixels,
  IPlaneInfo,
  ISeriesMeta,
  ITags,
  IWindow,
  Markers,
  Plane,
  Source,
  sourceUrl
} from './api';
import { IJob, Loader } from './cache';
import { button as domButton, el } from './dom';
import { ApiError, errorText, getJSON } from './http';
import { IDisplay, Renderer, VoiFunction, formatValue, valueAt } from './render';

type Stack = 'native' | Plane;
type Layout = 'native' | 'mpr' | Plane;
type Tool = 'wl' | 'pan' | 'zoom';

/** Window presets for CT (HU): [id, label, width, level]. */
export const CT_PRESETS: [string, string, number, number][] = [
  ['soft', 'Soft tissue', 400, 40],
  ['lung', 'Lung', 1500, -600],
  ['bone', 'Bone', 2500, 480],
  ['brain', 'Brain', 80, 40],
  ['liver', 'Liver', 150, 90]
];


/** Timings of one viewer (read by the browser tests and bench/viewer.py). */
export interface IViewerStats {
  created: number;
  metaLoaded: number | null;
  firstPaint: number | null;
  frames: { index: number; stack: string; requested: number; painted: number; renderMs: number }[];
}

function button(label: string, title: string, cls: string, onClick: () => void): HTMLButtonElement {
  return domButton(label, title, onClick, { cls: `vre-btn ${cls}`, preventDefault: true });
}

const PLANE_LABEL: { [k: string]: string } = {
  native: 'Native',
  axial: 'Axial',
  coronal: 'Coronal',
  sagittal: 'Sagittal'
};

/** One image pane: a canvas, its overlays and its slider, showing one stack. */
class Viewport {
  readonly node: HTMLDivElement;
  readonly canvas: HTMLCanvasElement;
  index = 0;
  image: IPixels | null = null;
  zoom = 1;
  panX = 0;
  panY = 0;

  constructor(
    readonly owner: DicomViewer,
    readonly stack: Stack,
    readonly count: number
  ) {
    this.node = el('div', `vre-Viewport vre-Viewport-${stack}`);
    this.node.dataset.stack = stack;
    const stage = el('div', 'vre-Viewport-stage');
    this.canvas = el('canvas', 'vre-Viewport-canvas');
    stage.appendChild(this.canvas);
    this._ov = {
      tl: el('div', 'vre-ov vre-ov-tl'),
      tr: el('div', 'vre-ov vre-ov-tr'),
      bl: el('div', 'vre-ov vre-ov-bl'),
      br: el('div', 'vre-ov vre-ov-br')
    };
    for (const o of Object.values(this._ov)) {
      stage.appendChild(o);
    }
    this._slice = el('div', 'vre-readout-slice');
    this._location = el('div', 'vre-readout-location');
    this._ov.tr.append(el('div', 'vre-readout-plane', PLANE_LABEL[stack]), this._slice, this._location);
    this._wl = el('div', 'vre-readout-wl');
    this._ov.bl.appendChild(this._wl);
    this._zoomText = el('div', 'vre-readout-zoom');
    this._value = el('div', 'vre-readout-value');
    this._pos = el('div', 'vre-readout-pos');
    this._ov.br.append(this._value, this._pos, this._zoomText);
    this._markers = {};
    for (const side of ['top', 'right', 'bottom', 'left']) {
      const m = el('div', `vre-marker vre-marker-${side}`);
      this._markers[side] = m;
      stage.appendChild(m);
    }
    this._message = el('div', 'vre-Viewport-message');
    this._message.hidden = true;
    stage.appendChild(this._message);
    this._spinner = el('div', 'vre-Viewport-loading', 'Loading…');
    this._spinner.hidden = true;
    stage.appendChild(this._spinner);
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

    this.canvas.addEventListener('wheel', this._onWheel, { passive: false });
    this.canvas.addEventListener('pointerdown', this._onPointerDown);
    this.canvas.addEventListener('pointermove', this._onPointerMove);
    this.canvas.addEventListener('pointerup', this._onPointerUp);
    this.canvas.addEventListener('pointercancel', this._onPointerUp);
    this.canvas.addEventListener('pointerleave', this._onPointerLeave);
    this.canvas.addEventListener('dblclick', this._onDblClick);
    this.canvas.addEventListener('contextmenu', e => {
      e.preventDefault();
      e.stopPropagation();
    });
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
    const url =
      this.stack === 'native'
        ? sourceUrl(src, ['slices', String(i)])
        : sourceUrl(src, ['mpr', this.stack, String(i)]);
    return { key: `${this.stack}:${i}`, url };
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
    this._slice.textContent = `${PLANE_LABEL[this.stack] === 'Native' ? 'Slice' : 'Image'} ${i + 1} / ${this.count}`;
    this.owner.indexChanged(this);
    const job = this.job(i);
    const cached = this.owner.loader.cached(job.key);
    if (cached) {
      this._show(cached, i);
    } else {
      this._spinnerTimer = this._spinnerTimer || window.setTimeout(() => (this._spinner.hidden = false), 150);
      this.owner.loader.load(job).then(
        img => {
          if (this.index === i) {
            this._show(img, i);
          }
        },
        e => {
          if (this.index === i && (e as Error).name !== 'AbortError') {
            this._stopSpinner();
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
    this._message.hidden = !text;
    this._message.textContent = text || '';
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
    this._drawReferenceLines(ctx, g);
    const d = canvas.dataset;
    d.ox = g.ox.toFixed(3);
    d.oy = g.oy.toFixed(3);
    d.sx = g.sx.toFixed(5);
    d.sy = g.sy.toFixed(5);
    d.rows = String(img.rows);
    d.cols = String(img.cols);
    d.index = String(img.index);
    this._zoomText.textContent = `Zoom ${Math.round(this.zoom * 100)}%`;
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
    this._wl.textContent = this.owner.isColor || !this.owner.windowSet
      ? ''
      : `W ${formatValue(d.width)}  L ${formatValue(d.center)}${d.invert !== !!this.owner.meta?.invert ? '  (inverted)' : ''}`;
    const img = this.image;
    const m: Markers | null =
      this.stack === 'native'
        ? this.owner.meta?.orientation_markers || null
        : img?.markers || this.plane?.markers || null;
    for (const side of ['top', 'right', 'bottom', 'left'] as const) {
      this._markers[side].textContent = m ? m[side] || '' : '';
    }
    let loc: number | null = null;
    if (this.stack === 'native') {
      const s = this.owner.meta?.slices[this.index];
      loc = s && s.location !== null && s.location !== undefined ? s.location : img?.location ?? null;
    } else if (img && img.index === this.index) {
      loc = img.location;
    }
    this._location.textContent = loc !== null && loc !== undefined ? `Loc ${loc.toFixed(2)} mm` : '';
    this.updateReadout();
  }

  /** The value (and patient position) under the cursor. */
  updateReadout(): void {
    const img = this.image;
    const c = this._cursor;
    const p = c && img ? this.imagePoint(c.x, c.y) : null;
    if (!p || !img) {
      this._value.textContent = '';
      this._pos.textContent = '';
      delete this._value.dataset.value;
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
      this._value.dataset.value = String(v);
    }
    this._value.dataset.row = String(row);
    this._value.dataset.col = String(col);
    this._value.textContent = `(${col}, ${row})  ${text}`;
    this._value.title = 'pixel (column, row) and its value in modality units';
    // Patient coordinates of a native pixel: position + c * colSpacing * rowDir + r * rowSpacing * colDir.
    const meta = this.owner.meta;
    const pos = img.position || meta?.slices[this.index]?.position;
    if (this.stack === 'native' && meta?.orientation && pos && img.index === this.index) {
      const [rs, cs] = this.spacing();
      const o = meta.orientation;
      const xyz = [0, 1, 2].map(k => pos[k] + col * cs * o[k] + row * rs * o[3 + k]);
      this._pos.textContent = `x ${xyz[0].toFixed(1)}  y ${xyz[1].toFixed(1)}  z ${xyz[2].toFixed(1)} mm`;
    } else {
      this._pos.textContent = '';
    }
  }

  setTitleOverlay(lines: string[]): void {
    this._ov.tl.textContent = '';
    for (const line of lines) {
      if (line) {
        this._ov.tl.appendChild(el('div', '', line));
      }
    }
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
    this._stopSpinner();
    this.showMessage(null);
    const first = !this.image;
    this.image = img;
    this.owner.imageShown(this, img, first);
    this.updateOverlay();
    this.requestDraw(true);
    void i;
  }

  private _stopSpinner(): void {
    if (this._spinnerTimer) {
      clearTimeout(this._spinnerTimer);
      this._spinnerTimer = 0;
    }
    this._spinner.hidden = true;
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

  private _drawReferenceLines(ctx: CanvasRenderingContext2D, g: { sx: number; sy: number; ox: number; oy: number }): void {
    const lines = this.owner.referenceLines(this);
    if (!lines || !this.image) {
      return;
    }
    ctx.save();
    ctx.lineWidth = 1;
    ctx.setLineDash([4, 4]);
    const { rows, cols } = this.image;
    if (lines.row !== null) {
      ctx.strokeStyle = lines.rowColor;
      const y = g.oy + (lines.row + 0.5) * g.sy;
      ctx.beginPath();
      ctx.moveTo(g.ox, y);
      ctx.lineTo(g.ox + cols * g.sx, y);
      ctx.stroke();
    }
    if (lines.col !== null) {
      ctx.strokeStyle = lines.colColor;
      const x = g.ox + (lines.col + 0.5) * g.sx;
      ctx.beginPath();
      ctx.moveTo(x, g.oy);
      ctx.lineTo(x, g.oy + rows * g.sy);
      ctx.stroke();
    }
    ctx.restore();
  }

  private _onWheel = (e: WheelEvent): void => {
    e.preventDefault();
    e.stopPropagation();
    this.owner.setActive(this);
    const scale = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
    if (e.ctrlKey || e.metaKey) {
      const r = this.canvas.getBoundingClientRect();
      this.zoomAt(Math.exp((-e.deltaY * scale) / 500), e.clientX - r.left, e.clientY - r.top);
      return;
    }
    this._wheel += e.deltaY * scale;
    if (Math.abs(this._wheel) >= 40 || Math.abs(e.deltaY * scale) >= 40) {
      const dir = Math.sign(this._wheel || e.deltaY);
      this._wheel = 0;
      this.setIndex(this.index + dir, performance.now());
    }
  };

  private _onPointerDown = (e: PointerEvent): void => {
    this.owner.setActive(this);
    this.owner.node.focus({ preventScroll: true });
    let mode: Tool;
    if (e.button === 1 || (e.button === 0 && e.shiftKey)) {
      mode = 'pan';
    } else if (e.button === 2) {
      mode = 'wl';
    } else if (e.button === 0 && (e.ctrlKey || e.metaKey)) {
      mode = 'zoom';
    } else if (e.button === 0) {
      mode = this.owner.tool;
    } else {
      return;
    }
    e.preventDefault();
    const r = this.canvas.getBoundingClientRect();
    this._drag = { mode, x: e.clientX, y: e.clientY, x0: e.clientX - r.left, y0: e.clientY - r.top };
    this.canvas.setPointerCapture(e.pointerId);
    this.node.classList.add(`vre-mod-drag-${mode}`);
  };

  private _onPointerMove = (e: PointerEvent): void => {
    const r = this.canvas.getBoundingClientRect();
    this._cursor = { x: e.clientX - r.left, y: e.clientY - r.top };
    const drag = this._drag;
    if (drag) {
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.mode === 'wl') {
        this.owner.adjustWindow(dx, dy);
      } else if (drag.mode === 'pan') {
        this.panX += dx;
        this.panY += dy;
        this.requestDraw(false);
      } else {
        this.zoomAt(Math.exp(-dy / 150), drag.x0, drag.y0);
      }
    }
    this.updateReadout();
  };

  private _onPointerUp = (e: PointerEvent): void => {
    if (this._drag) {
      this.node.classList.remove(`vre-mod-drag-${this._drag.mode}`);
      this._drag = null;
      try {
        this.canvas.releasePointerCapture(e.pointerId);
      } catch {
        // already released
      }
    }
  };

  private _onPointerLeave = (): void => {
    if (!this._drag) {
      this._cursor = null;
      this.updateReadout();
    }
  };

  private _onDblClick = (e: MouseEvent): void => {
    const r = this.canvas.getBoundingClientRect();
    const p = this.imagePoint(e.clientX - r.left, e.clientY - r.top);
    if (p) {
      this.owner.crosshair(this, Math.floor(p.row), Math.floor(p.col));
    }
  };

  private _ov: { tl: HTMLDivElement; tr: HTMLDivElement; bl: HTMLDivElement; br: HTMLDivElement };
  private _slice: HTMLDivElement;
  private _location: HTMLDivElement;
  private _wl: HTMLDivElement;
  private _zoomText: HTMLDivElement;
  private _value: HTMLDivElement;
  private _pos: HTMLDivElement;
  private _markers: { [side: string]: HTMLDivElement };
  private _message: HTMLDivElement;
  private _spinner: HTMLDivElement;
  private _spinnerTimer = 0;
  private _buffer: HTMLCanvasElement | null = null;
  private _bufferFor: IPixels | null = null;
  private _imageData: ImageData | null = null;
  private _pixelsDirty = true;
  private _raf = 0;
  private _requested = 0;
  private _direction = 1;
  private _wheel = 0;
  private _cursor: { x: number; y: number } | null = null;
  private _drag: { mode: Tool; x: number; y: number; x0: number; y0: number } | null = null;
  private _resizeObserver: ResizeObserver;
}

/** The searchable tag list of the instance behind the current native slice. */
class TagPanel {
  readonly node: HTMLDivElement;

  constructor(private _viewer: DicomViewer) {
    this.node = el('div', 'vre-Tags');
    const head = el('div', 'vre-Tags-head');
    this._search = el('input', 'vre-tags-search vre-select');
    this._search.type = 'search';
    this._search.placeholder = 'Filter tags (name, keyword, tag, value)';
    this._search.addEventListener('input', () => this._render());
    this._search.addEventListener('keydown', e => e.stopPropagation());
    head.appendChild(this._search);
    this._info = el('div', 'vre-Tags-info');
    head.appendChild(this._info);
    this.node.appendChild(head);
    this._list = el('div', 'vre-Tags-list');
    this.node.appendChild(this._list);
  }

  /** Load the tags of native slice `slice` (debounced while scrolling). */
  load(slice: number): void {
    if (this._timer) {
      clearTimeout(this._timer);
    }
    this._timer = window.setTimeout(() => this._load(slice), this._tags ? 200 : 0);
  }

  private async _load(slice: number): Promise<void> {
    this._timer = 0;
    if (this._loaded === slice) {
      return;
    }
    const ticket = ++this._ticket;
    this._info.textContent = 'Loading tags…';
    try {
      const tags = await getJSON<ITags>(sourceUrl(this._viewer.source, ['tags'], { slice }));
      if (ticket !== this._ticket) {
        return;
      }
      this._tags = tags;
      this._loaded = slice;
      this._render();
    } catch (e) {
      if (ticket === this._ticket) {
        this._tags = null;
        this._loaded = -1;
        this._list.textContent = '';
        this._info.textContent = '';
        this._list.appendChild(el('div', 'vre-error-text', `Cannot read the tags: ${errorText(e)}`));
      }
    }
  }

  private _render(): void {
    const tags = this._tags;
    this._list.textContent = '';
    if (!tags) {
      return;
    }
    const terms = this._search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const table = el('table', 'vre-tags-table');
    const body = el('tbody');
    let shown = 0;
    for (const t of tags.elements) {
      const tag = `(${t.tag.slice(0, 4)},${t.tag.slice(4)})`;
      const hay = `${tag} ${t.tag} ${t.keyword} ${t.name} ${t.vr} ${t.value}`.toLowerCase();
      if (terms.length && !terms.every(term => hay.includes(term))) {
        continue;
      }
      shown++;
      const tr = el('tr');
      tr.dataset.keyword = t.keyword;
      const tdTag = el('td', 'vre-tag-id', tag);
      const tdName = el('td', 'vre-tag-name', t.name || t.keyword);
      tdName.style.paddingLeft = `${4 + 12 * t.depth}px`;
      tdName.title = t.keyword;
      const tdVr = el('td', 'vre-tag-vr', t.vr);
      const tdValue = el('td', 'vre-tag-value', t.value);
      tdValue.title = t.value;
      tr.append(tdTag, tdName, tdVr, tdValue);
      body.appendChild(tr);
    }
    table.appendChild(body);
    this._list.appendChild(table);
    const slice = this._loaded + 1;
    this._info.textContent =
      `Slice ${slice}: ${shown} of ${tags.count} element(s)` + (tags.truncated ? ' (list truncated by the server)' : '');
  }

  private _search: HTMLInputElement;
  private _info: HTMLDivElement;
  private _list: HTMLDivElement;
  private _tags: ITags | null = null;
  private _loaded = -1;
  private _ticket = 0;
  private _timer = 0;
}

export namespace DicomViewer {
  export interface IOptions {
    source: Source;
  }
}

export class DicomViewer extends Widget {
  readonly source: Source;
  meta: ISeriesMeta | null = null;
  display: IDisplay = { center: 40, width: 400, invert: false, fn: 'LINEAR' };
  tool: Tool = 'wl';
  readonly renderer = new Renderer();
  readonly loader = new Loader(3);
  readonly stats: IViewerStats;

  constructor(options: DicomViewer.IOptions) {
    super();
    this.source = options.source;
    this.stats = { created: performance.now(), metaLoaded: null, firstPaint: null, frames: [] };
    this.addClass('vre-Viewer');
    this.node.tabIndex = 0;
    (this.node as any).__vreViewer = this;
    this.title.caption =
      options.source.kind === 'file' ? options.source.path : `Series ${options.source.seriesUid}`;

    this._toolbar = el('div', 'vre-Viewer-toolbar');
    this._warning = el('div', 'vre-Viewer-warning');
    this._warning.hidden = true;
    const body = el('div', 'vre-Viewer-body');
    this._grid = el('div', 'vre-Viewer-grid');
    this._tags = new TagPanel(this);
    this._tags.node.hidden = true;
    body.append(this._grid, this._tags.node);
    this._error = el('div', 'vre-Viewer-error');
    this._error.hidden = true;
    this._loading = el('div', 'vre-Viewer-loading', 'Loading series…');
    this.node.append(this._toolbar, this._warning, body, this._error, this._loading);
    this.node.addEventListener('keydown', this._onKey);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    for (const v of this._viewports) {
      v.dispose();
    }
    this._viewports = [];
    this.loader.dispose();
    super.dispose();
  }

  /** Whether the first image has set the window (before that there is nothing to show). */
  get windowSet(): boolean {
    return this._windowSet;
  }

  get isColor(): boolean {
    return !!this.meta?.color;
  }

  get viewports(): readonly Viewport[] {
    return this._viewports;
  }

  /** Load (or reload) the metadata and show the series. */
  async load(): Promise<void> {
    this._error.hidden = true;
    this._loading.hidden = false;
    try {
      const meta = await getJSON<ISeriesMeta>(sourceUrl(this.source));
      if (this.isDisposed) {
        return;
      }
      this.stats.metaLoaded = performance.now();
      this.meta = meta;
      this._loading.hidden = true;
      this._setup(meta);
    } catch (e) {
      if (this.isDisposed) {
        return;
      }
      this._loading.hidden = true;
      this._showError(e);
    }
  }

  setActive(v: Viewport): void {
    if (this._active !== v) {
      this._active?.node.classList.remove('vre-mod-active');
      this._active = v;
      v.node.classList.add('vre-mod-active');
    }
  }

  /** Change window/level by a mouse drag of (dx, dy) CSS px: x = width, y = level. */
  adjustWindow(dx: number, dy: number): void {
    const k = this._wlStep;
    const d = this.display;
    this.setWindow(d.center + dy * k, Math.max(k, d.width + dx * k), 'custom');
  }

  setWindow(center: number, width: number, preset = 'custom'): void {
    const round = (v: number) => (this._float ? Math.round(v * 1000) / 1000 : Math.round(v));
    this.display = { ...this.display, center: round(center), width: Math.max(this._float ? 1e-3 : 1, round(width)) };
    this.node.dataset.preset = preset;
    if (this._presetSelect) {
      const has = Array.from(this._presetSelect.options).some(o => o.value === preset);
      this._presetSelect.value = has ? preset : 'custom';
    }
    this._syncWindowInputs();
    for (const v of this._viewports) {
      v.updateOverlay();
      v.requestDraw(true);
    }
  }

  applyPreset(id: string): void {
    const meta = this.meta;
    if (!meta) {
      return;
    }
    const ct = CT_PRESETS.find(p => p[0] === id);
    if (ct) {
      this.setWindow(ct[3], ct[2], id);
      return;
    }
    if (id.startsWith('file:')) {
      const w = this._fileWindows[Number(id.slice(5))];
      if (w) {
        this.setWindow(w.center, w.width, id);
      }
      return;
    }
    const img = this._activeImage();
    if (id === 'auto') {
      // the file's own window for this slice (X-VRE-Window), else the first window of the series
      const w = img?.window ? { center: img.window[0], width: img.window[1] } : this._fileWindows[0];
      if (w) {
        this.setWindow(w.center, w.width, 'auto');
        return;
      }
      id = 'range';
    }
    if (id === 'range' && img) {
      const [lo, hi] = img.range;
      this.setWindow((lo + hi) / 2, Math.max(1, hi - lo), 'range');
    }
  }

  setInvert(on: boolean): void {
    this.display = { ...this.display, invert: on };
    this._invertButton?.classList.toggle('vre-mod-on', on !== !!this.meta?.invert);
    for (const v of this._viewports) {
      v.updateOverlay();
      v.requestDraw(true);
    }
  }

  setTool(tool: Tool): void {
    this.tool = tool;
    for (const [t, b] of Object.entries(this._toolButtons)) {
      b.classList.toggle('vre-mod-on', t === tool);
      b.setAttribute('aria-pressed', String(t === tool));
    }
    this.node.dataset.tool = tool;
  }

  setLayout(layout: Layout): void {
    const meta = this.meta;
    if (!meta) {
      return;
    }
    if (layout !== 'native' && !meta.mpr?.available) {
      layout = 'native';
    }
    for (const v of this._viewports) {
      this._indexOf[v.stack] = v.index;
      v.dispose();
    }
    this._viewports = [];
    this._prefetchJobs.clear();
    this._active = null;
    this._view = layout;
    if (this._layoutSelect) {
      this._layoutSelect.value = layout;
    }
    const stacks: Stack[] = layout === 'mpr' ? ['axial', 'coronal', 'sagittal'] : [layout];
    this._grid.className = `vre-Viewer-grid vre-mod-${stacks.length}`;
    this.node.dataset.layout = layout;
    for (const s of stacks) {
      const count = s === 'native' ? meta.num_slices : meta.mpr!.planes![s].count;
      const v = new Viewport(this, s, count);
      this._grid.appendChild(v.node);
      this._viewports.push(v);
    }
    const first = this._viewports[0];
    first.setTitleOverlay(this._titleLines());
    this.setActive(first);
    for (const v of this._viewports) {
      const i = this._indexOf[v.stack] ?? Math.floor((v.count - 1) / 2);
      v.setIndex(i, performance.now());
      v.updateOverlay();
    }
  }

  /** Called by a viewport when its index changed. */
  indexChanged(v: Viewport): void {
    this._indexOf[v.stack] = v.index;
    if (v.stack === 'native' && !this._tags.node.hidden) {
      this._tags.load(v.index);
    }
    if (this._view === 'mpr') {
      for (const o of this._viewports) {
        if (o !== v) {
          o.requestDraw(false);
        }
      }
    }
  }

  /** Called by a viewport when it shows an image (the first one sets the window). */
  imageShown(v: Viewport, img: IPixels, first: boolean): void {
    void v;
    void first;
    if (!this._windowSet) {
      this._windowSet = true;
      this._float = img.dtype === 'float32';
      const [lo, hi] = img.range;
      this._wlStep = this._float ? Math.max((hi - lo) / 1024, 1e-4) : Math.max(1, Math.round((hi - lo) / 1024));
      if (img.dtype === 'uint8') {
        this.setWindow(128, 256, 'range');
      } else if (this._fileWindows.length) {
        this.setWindow(this._fileWindows[0].center, this._fileWindows[0].width, 'file:0');
      } else if (img.window) {
        this.setWindow(img.window[0], img.window[1], 'auto');
      } else {
        this.setWindow((lo + hi) / 2, Math.max(1, hi - lo), 'range');
      }
    }
  }

  painted(v: Viewport, t0: number, t1: number, requested: number): void {
    if (this.stats.firstPaint === null && v.image) {
      this.stats.firstPaint = t1;
      this.node.dataset.painted = 'true';
    }
    if (requested && v.image) {
      const frames = this.stats.frames;
      frames.push({ index: v.index, stack: v.stack, requested, painted: t1, renderMs: t1 - t0 });
      if (frames.length > 5000) {
        frames.splice(0, frames.length - 5000);
      }
    }
  }

  /** How many images of `bytes` each a pane may prefetch: its share of 60% of the cache. */
  prefetchLimit(bytes: number): number {
    const share = (this.loader.cache.budget * 0.6) / Math.max(1, this._viewports.length);
    return Math.max(8, Math.floor(share / Math.max(1, bytes)));
  }

  prefetch(v: Viewport, jobs: IJob[]): void {
    this._prefetchJobs.set(v, jobs);
    // interleave the viewports' wishes, the active one first
    const lists = [this._prefetchJobs.get(this._active!) || [], ...Array.from(this._prefetchJobs.entries())
      .filter(([k]) => k !== this._active && this._viewports.includes(k)).map(([, j]) => j)];
    const merged: IJob[] = [];
    const longest = Math.max(...lists.map(l => l.length));
    for (let i = 0; i < longest; i++) {
      for (const l of lists) {
        if (i < l.length) {
          merged.push(l[i]);
        }
      }
    }
    this.loader.prefetch(merged);
  }

  /** MPR: the planes of the other viewports through the double-clicked pixel. */
  crosshair(v: Viewport, row: number, col: number): void {
    if (this._view !== 'mpr') {
      return;
    }
    const by = (s: Stack) => this._viewports.find(o => o.stack === s);
    const ax = by('axial');
    const co = by('coronal');
    const sa = by('sagittal');
    const now = performance.now();
    const nz = ax?.count ?? 0;
    if (v.stack === 'axial') {
      co?.setIndex(row, now);
      sa?.setIndex(col, now);
    } else if (v.stack === 'coronal') {
      ax?.setIndex(nz - 1 - row, now);
      sa?.setIndex(col, now);
    } else if (v.stack === 'sagittal') {
      ax?.setIndex(nz - 1 - row, now);
      co?.setIndex(col, now);
    }
    for (const o of this._viewports) {
      o.requestDraw(false);
    }
  }

  /** MPR: where the other two planes cut this one (dashed lines), in image rows/columns. */
  referenceLines(v: Viewport): { row: number | null; col: number | null; rowColor: string; colColor: string } | null {
    if (this._view !== 'mpr' || !this._showLines) {
      return null;
    }
    const idx = (s: Stack) => this._viewports.find(o => o.stack === s)?.index ?? null;
    const nz = this._viewports.find(o => o.stack === 'axial')?.count ?? 0;
    const colors: { [k: string]: string } = { axial: '#4aa3ff', coronal: '#58d68d', sagittal: '#f5b041' };
    const ax = idx('axial');
    if (v.stack === 'axial') {
      return { row: idx('coronal'), col: idx('sagittal'), rowColor: colors.coronal, colColor: colors.sagittal };
    }
    if (v.stack === 'coronal') {
      return { row: ax === null ? null : nz - 1 - ax, col: idx('sagittal'), rowColor: colors.axial, colColor: colors.sagittal };
    }
    if (v.stack === 'sagittal') {
      return { row: ax === null ? null : nz - 1 - ax, col: idx('coronal'), rowColor: colors.axial, colColor: colors.coronal };
    }
    return null;
  }

  toggleTags(show?: boolean): void {
    const on = show ?? this._tags.node.hidden;
    this._tags.node.hidden = !on;
    this._tagsButton?.classList.toggle('vre-mod-on', on);
    if (on) {
      this._tags.load(this._indexOf.native ?? 0);
    }
    for (const v of this._viewports) {
      v.requestDraw(false);
    }
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (!this._started) {
      this._started = true;
      void this.load();
    }
  }

  protected onActivateRequest(msg: Message): void {
    super.onActivateRequest(msg);
    this.node.focus({ preventScroll: true });
  }

  protected onResize(msg: Widget.ResizeMessage): void {
    super.onResize(msg);
    for (const v of this._viewports) {
      v.requestDraw(false);
    }
  }

  private _activeImage(): IPixels | null {
    return (this._active || this._viewports[0])?.image || null;
  }

  private _titleLines(): string[] {
    const m = this.meta!;
    return [
      m.patient_id || '',
      [m.study_date, m.study_description].filter(Boolean).join('  '),
      [m.modality, m.series_description].filter(Boolean).join('  ')
    ];
  }

  private _showError(e: unknown): void {
    this._error.textContent = '';
    const box = el('div', 'vre-Viewer-errorBox');
    const status = e instanceof ApiError && e.status ? ` (${e.status} ${e.reason})` : '';
    box.appendChild(el('div', 'vre-Viewer-errorTitle', `This image cannot be shown${status}`));
    box.appendChild(el('div', 'vre-Viewer-errorMessage', errorText(e)));
    box.appendChild(button('Retry', 'Load again', 'vre-retry', () => void this.load()));
    this._error.appendChild(box);
    this._error.hidden = false;
  }

  private _setup(meta: ISeriesMeta): void {
    this._fileWindows = (meta.windows || []).filter(w => w.source !== 'preset');
    const fn = (meta.voi_lut_function || 'LINEAR').toUpperCase();
    this.display = {
      center: 40,
      width: 400,
      invert: !!meta.invert,
      fn: (['LINEAR', 'LINEAR_EXACT', 'SIGMOID'].includes(fn) ? fn : 'LINEAR') as VoiFunction
    };
    const name =
      this.source.kind === 'file'
        ? this.source.path.split('/').pop()!
        : [meta.series_description || 'Series', meta.patient_id].filter(Boolean).join(' — ');
    this.title.label = name;
    this.title.caption = `${name}\n${meta.modality || ''} ${meta.num_slices} image(s)`;
    if (meta.warnings?.length) {
      this._warning.textContent = meta.warnings.join(' · ');
      this._warning.hidden = false;
    }
    this._buildToolbar(meta);
    this.setTool('wl');
    this.setLayout('native');
    this.node.dataset.ready = 'true';
  }

  private _buildToolbar(meta: ISeriesMeta): void {
    const tb = this._toolbar;
    tb.textContent = '';
    const group = (label: string) => {
      const g = el('div', 'vre-tb-group');
      if (label) {
        g.appendChild(el('span', 'vre-tb-label', label));
      }
      tb.appendChild(g);
      return g;
    };

    // layout
    const lg = group('View');
    const layout = el('select', 'vre-layout vre-select');
    const opts: [Layout, string][] = [
      ['native', `Native (${meta.num_slices})`],
      ['mpr', 'MPR: axial + coronal + sagittal'],
      ['axial', 'Axial'],
      ['coronal', 'Coronal'],
      ['sagittal', 'Sagittal']
    ];
    for (const [v, label] of opts) {
      const o = el('option', '', label);
      o.value = v;
      if (v !== 'native' && !meta.mpr?.available) {
        o.disabled = true;
      }
      layout.appendChild(o);
    }
    layout.title = meta.mpr?.available
      ? 'Native slices or multiplanar reformats'
      : `MPR not available: ${meta.mpr?.reason || 'no consistent geometry'}`;
    layout.addEventListener('change', () => {
      this.setLayout(layout.value as Layout);
      this.node.focus({ preventScroll: true });
    });
    lg.appendChild(layout);
    this._layoutSelect = layout;
    if (!meta.mpr?.available) {
      lg.appendChild(el('span', 'vre-tb-note', `MPR unavailable: ${meta.mpr?.reason || 'no geometry'}`));
    }

    // tools
    const tg = group('Drag');
    this._toolButtons = {
      wl: button('W/L', 'Left drag changes window (horizontal) and level (vertical); right drag always does', 'vre-tool-wl', () => this.setTool('wl')),
      pan: button('Pan', 'Left drag pans (also: middle drag or shift+drag)', 'vre-tool-pan', () => this.setTool('pan')),
      zoom: button('Zoom', 'Left drag zooms (also: ctrl+wheel, ctrl+drag)', 'vre-tool-zoom', () => this.setTool('zoom'))
    };
    tg.append(this._toolButtons.wl, this._toolButtons.pan, this._toolButtons.zoom);

    // window / level
    const wg = group('Window');
    const preset = el('select', 'vre-preset vre-select');
    const add = (value: string, label: string, disabled = false) => {
      const o = el('option', '', label);
      o.value = value;
      o.disabled = disabled;
      preset.appendChild(o);
    };
    add('custom', 'Custom', true);
    this._fileWindows.forEach((w: IWindow, i: number) =>
      add(`file:${i}`, `File: ${w.name || 'window ' + (i + 1)} (${formatValue(w.width)}/${formatValue(w.center)})`)
    );
    add('auto', 'Auto (file window of this slice)');
    add('range', 'Full range (min–max)');
    if (meta.units === 'HU' || meta.modality === 'CT') {
      for (const [id, label, w, l] of CT_PRESETS) {
        add(id, `${label} (${w}/${l})`);
      }
    }
    preset.title = 'Window presets (W/L)';
    preset.addEventListener('change', () => {
      this.applyPreset(preset.value);
      this.node.focus({ preventScroll: true });
    });
    wg.appendChild(preset);
    this._presetSelect = preset;
    const num = (cls: string, title: string) => {
      const i = el('input', `vre-wl-input ${cls}`);
      i.type = 'number';
      i.title = title;
      i.addEventListener('keydown', e => e.stopPropagation());
      i.addEventListener('change', () => {
        const w = Number(this._widthInput!.value);
        const c = Number(this._levelInput!.value);
        if (Number.isFinite(w) && Number.isFinite(c)) {
          this.setWindow(c, w, 'custom');
        }
      });
      return i;
    };
    this._widthInput = num('vre-wl-width', 'Window width');
    this._levelInput = num('vre-wl-level', 'Window level (center)');
    wg.append(el('span', 'vre-tb-label', 'W'), this._widthInput, el('span', 'vre-tb-label', 'L'), this._levelInput);
    this._invertButton = button('Invert', 'Invert the grey scale (i)', 'vre-invert', () => this.setInvert(!this.display.invert));
    wg.appendChild(this._invertButton);
    if (meta.color) {
      preset.disabled = true;
      this._widthInput.disabled = true;
      this._levelInput.disabled = true;
      this._invertButton.disabled = true;
    }

    // zoom
    const zg = group('');
    zg.append(
      button('−', 'Zoom out (-)', 'vre-zoom-out', () => this._activeOrFirst()?.zoomAt(1 / 1.25)),
      button('+', 'Zoom in (+)', 'vre-zoom-in', () => this._activeOrFirst()?.zoomAt(1.25)),
      button('Reset', 'Reset zoom and pan (r)', 'vre-reset', () => {
        for (const v of this._viewports) {
          v.resetView();
        }
      })
    );

    const og = group('');
    if (meta.mpr?.available) {
      const lines = button('Lines', 'MPR reference lines (double click a pane to move the others there)', 'vre-lines vre-mod-on', () => {
        this._showLines = !this._showLines;
        lines.classList.toggle('vre-mod-on', this._showLines);
        for (const v of this._viewports) {
          v.requestDraw(false);
        }
      });
      og.appendChild(lines);
    }
    this._tagsButton = button('Tags', 'DICOM tags of the current instance', 'vre-tags-toggle', () => this.toggleTags());
    og.appendChild(this._tagsButton);
    const help = el('span', 'vre-help', '?');
    help.title =
      'Wheel / ↑↓ / PageUp PageDown / Home End: slice\n' +
      'Ctrl+wheel, +/-: zoom · middle or shift drag: pan · r: reset\n' +
      'Left drag: tool (W/L by default) · right drag: window/level · i: invert\n' +
      'MPR: double click to move the other planes to that point';
    og.appendChild(help);
  }

  private _syncWindowInputs(): void {
    if (this._widthInput && document.activeElement !== this._widthInput) {
      this._widthInput.value = formatValue(this.display.width);
    }
    if (this._levelInput && document.activeElement !== this._levelInput) {
      this._levelInput.value = formatValue(this.display.center);
    }
    this.node.dataset.window = `${this.display.center},${this.display.width}`;
  }

  private _activeOrFirst(): Viewport | null {
    return this._active || this._viewports[0] || null;
  }

  private _onKey = (e: KeyboardEvent): void => {
    const v = this._activeOrFirst();
    const t = e.target as HTMLElement;
    const typing =
      t.tagName === 'SELECT' || t.tagName === 'TEXTAREA' || (t.tagName === 'INPUT' && (t as HTMLInputElement).type !== 'range');
    if (!v || e.altKey || typing) {
      return;
    }
    const page = Math.max(1, Math.round(v.count / 10));
    let handled = true;
    switch (e.key) {
      case 'ArrowDown':
      case 'ArrowRight':
        v.step(1);
        break;
      case 'ArrowUp':
      case 'ArrowLeft':
        v.step(-1);
        break;
      case 'PageDown':
        v.step(page);
        break;
      case 'PageUp':
        v.step(-page);
        break;
      case 'Home':
        v.setIndex(0, performance.now());
        break;
      case 'End':
        v.setIndex(v.count - 1, performance.now());
        break;
      case '+':
      case '=':
        if (e.ctrlKey || e.metaKey) {
          handled = false;
        } else {
          v.zoomAt(1.25);
        }
        break;
      case '-':
        if (e.ctrlKey || e.metaKey) {
          handled = false;
        } else {
          v.zoomAt(1 / 1.25);
        }
        break;
      case 'r':
      case '0':
        if (e.ctrlKey || e.metaKey) {
          handled = false;
        } else {
          for (const o of this._viewports) {
            o.resetView();
          }
        }
        break;
      case 'i':
        if (e.ctrlKey || e.metaKey || this.isColor) {
          handled = false;
        } else {
          this.setInvert(!this.display.invert);
        }
        break;
      default:
        handled = false;
    }
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  };

  private _toolbar: HTMLDivElement;
  private _warning: HTMLDivElement;
  private _grid: HTMLDivElement;
  private _tags: TagPanel;
  private _error: HTMLDivElement;
  private _loading: HTMLDivElement;
  private _viewports: Viewport[] = [];
  private _active: Viewport | null = null;
  private _view: Layout = 'native';
  private _indexOf: { [stack: string]: number } = {};
  private _fileWindows: IWindow[] = [];
  private _windowSet = false;
  private _float = false;
  private _wlStep = 1;
  private _showLines = true;
  private _started = false;
  private _prefetchJobs = new Map<Viewport, IJob[]>();
  private _layoutSelect: HTMLSelectElement | null = null;
  private _presetSelect: HTMLSelectElement | null = null;
  private _widthInput: HTMLInputElement | null = null;
  private _levelInput: HTMLInputElement | null = null;
  private _invertButton: HTMLButtonElement | null = null;
  private _tagsButton: HTMLButtonElement | null = null;
  private _toolButtons: { [tool: string]: HTMLButtonElement } = {};
}
