/**
 * The DICOM viewer: native slices and axial/coronal/sagittal reformats of a series or a file.
 *
 * Images arrive as raw modality values (HU for CT); window/level is applied here through a
 * lookup table (render.ts) into an ImageData, then drawn on a 2-D canvas scaled by the pixel
 * spacing, so the aspect ratio is the patient's. Mouse: wheel = slice, ctrl+wheel = zoom,
 * left drag = the current tool (W/L by default), right drag = W/L, middle or shift drag = pan,
 * double click (MPR) = move the other planes there. Keys: arrows, PageUp/PageDown, Home/End,
 * +/-, r (reset), i (invert).
 *
 * This widget ties together: the panes (viewport.ts, with viewport-overlay.ts and
 * viewport-input.ts), the image loader and cache (cache.ts), windowing (windowing.ts,
 * render.ts), MPR (mpr.ts), the tag panel (tags.ts), the toolbar (viewer-toolbar.ts) and the
 * keys (viewer-keys.ts).
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IPixels, ISeriesMeta, Source, sourceUrl } from './api';
import { IJob, Loader } from './cache';
import { el } from './dom';
import { ApiError, errorText, getJSON } from './http';
import { IReferenceLines, crosshairTargets, referenceLines } from './mpr';
import { IDisplay, Renderer, VoiFunction, formatValue } from './render';
import { TagPanel } from './tags';
import { IKeyTarget, onViewerKey } from './viewer-keys';
import { IToolbar, Layout, buildToolbar, toolButton } from './viewer-toolbar';
import { IViewportOwner, Stack, Tool, Viewport } from './viewport';
import { WindowLevel } from './windowing';

export { CT_PRESETS } from './windowing';

/** Timings of one viewer (read by the browser tests and bench/viewer.py). */
export interface IViewerStats {
  created: number;
  metaLoaded: number | null;
  firstPaint: number | null;
  frames: { index: number; stack: string; requested: number; painted: number; renderMs: number }[];
}

export namespace DicomViewer {
  export interface IOptions {
    source: Source;
  }
}

export class DicomViewer extends Widget implements IViewportOwner, IKeyTarget {
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
    this._tags = new TagPanel(this.source);
    this._tags.node.hidden = true;
    body.append(this._grid, this._tags.node);
    this._error = el('div', 'vre-Viewer-error');
    this._error.hidden = true;
    this._loading = el('div', 'vre-Viewer-loading', 'Loading series…');
    this.node.append(this._toolbar, this._warning, body, this._error, this._loading);
    this.node.addEventListener('keydown', e => onViewerKey(this, e));
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
    return this._wl.isSet;
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
    const w = this._wl.drag(this.display, dx, dy);
    this.setWindow(w.center, w.width, w.preset);
  }

  setWindow(center: number, width: number, preset = 'custom'): void {
    this.display = this._wl.apply(this.display, center, width);
    this.node.dataset.preset = preset;
    if (this._tb) {
      const has = Array.from(this._tb.preset.options).some(o => o.value === preset);
      this._tb.preset.value = has ? preset : 'custom';
    }
    this._syncWindowInputs();
    for (const v of this._viewports) {
      v.updateOverlay();
      v.requestDraw(true);
    }
  }

  applyPreset(id: string): void {
    if (!this.meta) {
      return;
    }
    const w = this._wl.preset(id, this._activeImage());
    if (w) {
      this.setWindow(w.center, w.width, w.preset);
    }
  }

  setInvert(on: boolean): void {
    this.display = { ...this.display, invert: on };
    this._tb?.invert.classList.toggle('vre-mod-on', on !== !!this.meta?.invert);
    for (const v of this._viewports) {
      v.updateOverlay();
      v.requestDraw(true);
    }
  }

  setTool(tool: Tool): void {
    this.tool = tool;
    for (const [t, b] of Object.entries(this._tb?.tools ?? {})) {
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
    if (this._tb) {
      this._tb.layout.value = layout;
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
    const w = this._wl.first(img);
    if (w) {
      this.setWindow(w.center, w.width, w.preset);
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
    const axialCount = this._byStack('axial')?.count ?? 0;
    const now = performance.now();
    for (const [plane, index] of crosshairTargets(v.stack, row, col, axialCount)) {
      this._byStack(plane)?.setIndex(index, now);
    }
    for (const o of this._viewports) {
      o.requestDraw(false);
    }
  }

  /** MPR: where the other two planes cut this one (dashed lines), in image rows/columns. */
  referenceLines(v: Viewport): IReferenceLines | null {
    if (this._view !== 'mpr' || !this._showLines) {
      return null;
    }
    const axialCount = this._byStack('axial')?.count ?? 0;
    return referenceLines(v.stack, p => this._byStack(p)?.index ?? null, axialCount);
  }

  toggleTags(show?: boolean): void {
    const on = show ?? this._tags.node.hidden;
    this._tags.node.hidden = !on;
    this._tb?.tags.classList.toggle('vre-mod-on', on);
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

  private _byStack(stack: Stack): Viewport | undefined {
    return this._viewports.find(o => o.stack === stack);
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
    box.appendChild(toolButton('Retry', 'Load again', 'vre-retry', () => void this.load()));
    this._error.appendChild(box);
    this._error.hidden = false;
  }

  private _setup(meta: ISeriesMeta): void {
    this._wl.fileWindows = (meta.windows || []).filter(w => w.source !== 'preset');
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
    this._tb = buildToolbar(this._toolbar, meta, this._wl.fileWindows, {
      focus: () => this.node.focus({ preventScroll: true }),
      setLayout: layout => this.setLayout(layout),
      setTool: tool => this.setTool(tool),
      applyPreset: id => this.applyPreset(id),
      setWindow: (center, width, preset) => this.setWindow(center, width, preset),
      toggleInvert: () => this.setInvert(!this.display.invert),
      zoom: factor => this.activeOrFirst()?.zoomAt(factor),
      resetView: () => {
        for (const v of this._viewports) {
          v.resetView();
        }
      },
      toggleLines: () => {
        this._showLines = !this._showLines;
        for (const v of this._viewports) {
          v.requestDraw(false);
        }
        return this._showLines;
      },
      toggleTags: () => this.toggleTags()
    });
    this.setTool('wl');
    this.setLayout('native');
    this.node.dataset.ready = 'true';
  }

  private _syncWindowInputs(): void {
    if (this._tb && document.activeElement !== this._tb.width) {
      this._tb.width.value = formatValue(this.display.width);
    }
    if (this._tb && document.activeElement !== this._tb.level) {
      this._tb.level.value = formatValue(this.display.center);
    }
    this.node.dataset.window = `${this.display.center},${this.display.width}`;
  }

  /** The pane the keys and zoom buttons act on: the active one, else the first. */
  activeOrFirst(): Viewport | null {
    return this._active || this._viewports[0] || null;
  }

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
  private _wl = new WindowLevel();
  private _showLines = true;
  private _started = false;
  private _prefetchJobs = new Map<Viewport, IJob[]>();
  private _tb: IToolbar | null = null;
}
