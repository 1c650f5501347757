/**
 * The viewer's toolbar: layout (native or MPR planes), drag tool, window presets and W/L inputs,
 * invert, zoom, MPR reference lines, the tag panel and a help tip. It calls back into the viewer
 * (viewer.ts), which keeps the handles returned here in step with its state.
 */
import { ISeriesMeta, IWindow } from './api';
import { button, el } from './dom';
import { formatValue } from './render';
import type { Tool } from './viewport';
import { CT_PRESETS } from './windowing';

/** The viewer's panes: the native slices, the three MPR planes, or one of them. */
export type Layout = 'native' | 'mpr' | 'axial' | 'coronal' | 'sagittal';

/** What the toolbar asks the viewer to do. */
export interface IToolbarActions {
  /** Give the keyboard back to the viewer (after a select changed). */
  focus(): void;
  setLayout(layout: Layout): void;
  setTool(tool: Tool): void;
  applyPreset(id: string): void;
  setWindow(center: number, width: number, preset: string): void;
  toggleInvert(): void;
  /** Zoom the active pane by `factor`. */
  zoom(factor: number): void;
  resetView(): void;
  /** Show or hide the MPR reference lines; answers whether they are shown now. */
  toggleLines(): boolean;
  toggleTags(): void;
}

/** The controls whose state the viewer updates. */
export interface IToolbar {
  layout: HTMLSelectElement;
  preset: HTMLSelectElement;
  width: HTMLInputElement;
  level: HTMLInputElement;
  invert: HTMLButtonElement;
  tags: HTMLButtonElement;
  tools: { [tool: string]: HTMLButtonElement };
}

/** A toolbar button: `vre-btn` and `cls`; a click does not take the focus's default action. */
export function toolButton(label: string, title: string, cls: string, onClick: () => void): HTMLButtonElement {
  return button(label, title, onClick, { cls: `vre-btn ${cls}`, preventDefault: true });
}

/** Fill `tb` with the toolbar of a series with `meta` (and its own windows `fileWindows`). */
export function buildToolbar(tb: HTMLElement, meta: ISeriesMeta, fileWindows: IWindow[], act: IToolbarActions): IToolbar {
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
    act.setLayout(layout.value as Layout);
    act.focus();
  });
  lg.appendChild(layout);
  if (!meta.mpr?.available) {
    lg.appendChild(el('span', 'vre-tb-note', `MPR unavailable: ${meta.mpr?.reason || 'no geometry'}`));
  }

  // tools
  const tg = group('Drag');
  const tools = {
    wl: toolButton('W/L', 'Left drag changes window (horizontal) and level (vertical); right drag always does', 'vre-tool-wl', () => act.setTool('wl')),
    pan: toolButton('Pan', 'Left drag pans (also: middle drag or shift+drag)', 'vre-tool-pan', () => act.setTool('pan')),
    zoom: toolButton('Zoom', 'Left drag zooms (also: ctrl+wheel, ctrl+drag)', 'vre-tool-zoom', () => act.setTool('zoom'))
  };
  tg.append(tools.wl, tools.pan, tools.zoom);

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
  fileWindows.forEach((w: IWindow, i: number) =>
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
    act.applyPreset(preset.value);
    act.focus();
  });
  wg.appendChild(preset);
  const num = (cls: string, title: string) => {
    const i = el('input', `vre-wl-input ${cls}`);
    i.type = 'number';
    i.title = title;
    i.addEventListener('keydown', e => e.stopPropagation());
    i.addEventListener('change', () => {
      const w = Number(width.value);
      const c = Number(level.value);
      if (Number.isFinite(w) && Number.isFinite(c)) {
        act.setWindow(c, w, 'custom');
      }
    });
    return i;
  };
  const width = num('vre-wl-width', 'Window width');
  const level = num('vre-wl-level', 'Window level (center)');
  wg.append(el('span', 'vre-tb-label', 'W'), width, el('span', 'vre-tb-label', 'L'), level);
  const invert = toolButton('Invert', 'Invert the grey scale (i)', 'vre-invert', () => act.toggleInvert());
  wg.appendChild(invert);
  if (meta.color) {
    preset.disabled = true;
    width.disabled = true;
    level.disabled = true;
    invert.disabled = true;
  }

  // zoom
  const zg = group('');
  zg.append(
    toolButton('−', 'Zoom out (-)', 'vre-zoom-out', () => act.zoom(1 / 1.25)),
    toolButton('+', 'Zoom in (+)', 'vre-zoom-in', () => act.zoom(1.25)),
    toolButton('Reset', 'Reset zoom and pan (r)', 'vre-reset', () => act.resetView())
  );

  const og = group('');
  if (meta.mpr?.available) {
    const lines = toolButton('Lines', 'MPR reference lines (double click a pane to move the others there)', 'vre-lines vre-mod-on', () => {
      lines.classList.toggle('vre-mod-on', act.toggleLines());
    });
    og.appendChild(lines);
  }
  const tags = toolButton('Tags', 'DICOM tags of the current instance', 'vre-tags-toggle', () => act.toggleTags());
  og.appendChild(tags);
  const help = el('span', 'vre-help', '?');
  help.title =
    'Wheel / ↑↓ / PageUp PageDown / Home End: slice\n' +
    'Ctrl+wheel, +/-: zoom · middle or shift drag: pan · r: reset\n' +
    'Left drag: tool (W/L by default) · right drag: window/level · i: invert\n' +
    'MPR: double click to move the other planes to that point';
  og.appendChild(help);
  return { layout, preset, width, level, invert, tags, tools };
}
