/**
 * Window/level choices of the viewer: presets (CT, the file's own windows, the slice's window,
 * full range), mouse-drag steps sized to the data, rounding to the data's precision, and the
 * window the first image sets. The LUT that applies a window to pixels is render.ts.
 */
import { IPixels, IWindow } from './api';
import { IDisplay } from './render';

/** Window presets for CT (HU): [id, label, width, level]. */
export const CT_PRESETS: [string, string, number, number][] = [
  ['soft', 'Soft tissue', 400, 40],
  ['lung', 'Lung', 1500, -600],
  ['bone', 'Bone', 2500, 480],
  ['brain', 'Brain', 80, 40],
  ['liver', 'Liver', 150, 90]
];

/** A window to set and the preset it comes from (`custom` for none). */
export interface IWindowChoice {
  center: number;
  width: number;
  preset: string;
}

export class WindowLevel {
  /** The series' own windows (WindowCenter/Width of its files), not the server's presets. */
  fileWindows: IWindow[] = [];

  /** Whether the first image has set the window (before that there is nothing to show). */
  get isSet(): boolean {
    return this._set;
  }

  /** `d` with the window (center, width), rounded as the data's type wants. */
  apply(d: IDisplay, center: number, width: number): IDisplay {
    const round = (v: number) => (this._float ? Math.round(v * 1000) / 1000 : Math.round(v));
    return { ...d, center: round(center), width: Math.max(this._float ? 1e-3 : 1, round(width)) };
  }

  /** A mouse drag of (dx, dy) CSS px from `d`: x = width, y = level. */
  drag(d: IDisplay, dx: number, dy: number): IWindowChoice {
    const k = this._step;
    return { center: d.center + dy * k, width: Math.max(k, d.width + dx * k), preset: 'custom' };
  }

  /** The window of preset `id` (`img`: the image on screen, for `auto` and `range`), or null. */
  preset(id: string, img: IPixels | null): IWindowChoice | null {
    const ct = CT_PRESETS.find(p => p[0] === id);
    if (ct) {
      return { center: ct[3], width: ct[2], preset: id };
    }
    if (id.startsWith('file:')) {
      const w = this.fileWindows[Number(id.slice(5))];
      return w ? { center: w.center, width: w.width, preset: id } : null;
    }
    if (id === 'auto') {
      // the file's own window for this slice (X-VRE-Window), else the first window of the series
      const w = img?.window ? { center: img.window[0], width: img.window[1] } : this.fileWindows[0];
      if (w) {
        return { center: w.center, width: w.width, preset: 'auto' };
      }
      id = 'range';
    }
    if (id === 'range' && img) {
      const [lo, hi] = img.range;
      return { center: (lo + hi) / 2, width: Math.max(1, hi - lo), preset: 'range' };
    }
    return null;
  }

  /** The window set by the first image shown (null once one has set it). */
  first(img: IPixels): IWindowChoice | null {
    if (this._set) {
      return null;
    }
    this._set = true;
    this._float = img.dtype === 'float32';
    const [lo, hi] = img.range;
    this._step = this._float ? Math.max((hi - lo) / 1024, 1e-4) : Math.max(1, Math.round((hi - lo) / 1024));
    if (img.dtype === 'uint8') {
      return { center: 128, width: 256, preset: 'range' };
    }
    if (this.fileWindows.length) {
      return { center: this.fileWindows[0].center, width: this.fileWindows[0].width, preset: 'file:0' };
    }
    if (img.window) {
      return { center: img.window[0], width: img.window[1], preset: 'auto' };
    }
    return { center: (lo + hi) / 2, width: Math.max(1, hi - lo), preset: 'range' };
  }

  private _set = false;
  private _float = false;
  private _step = 1;
}
