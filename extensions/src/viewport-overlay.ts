/**
 * What a viewer pane shows over its image: the series lines (top left), plane, slice and
 * location (top right), window/level (bottom left), the value and patient position under the
 * cursor and the zoom (bottom right), orientation markers on the four sides, a message for an
 * image that cannot be shown, and a loading notice. Viewport (viewport.ts) decides the texts.
 */
import { Markers } from './api';
import { el } from './dom';

export class ViewportOverlay {
  readonly slice: HTMLDivElement;
  readonly location: HTMLDivElement;
  readonly wl: HTMLDivElement;
  readonly zoom: HTMLDivElement;
  readonly value: HTMLDivElement;
  readonly pos: HTMLDivElement;
  readonly message: HTMLDivElement;

  /** Adds the overlays to `stage` (after its canvas); `plane` names the stack shown. */
  constructor(stage: HTMLDivElement, plane: string) {
    this._ov = {
      tl: el('div', 'vre-ov vre-ov-tl'),
      tr: el('div', 'vre-ov vre-ov-tr'),
      bl: el('div', 'vre-ov vre-ov-bl'),
      br: el('div', 'vre-ov vre-ov-br')
    };
    for (const o of Object.values(this._ov)) {
      stage.appendChild(o);
    }
    this.slice = el('div', 'vre-readout-slice');
    this.location = el('div', 'vre-readout-location');
    this._ov.tr.append(el('div', 'vre-readout-plane', plane), this.slice, this.location);
    this.wl = el('div', 'vre-readout-wl');
    this._ov.bl.appendChild(this.wl);
    this.zoom = el('div', 'vre-readout-zoom');
    this.value = el('div', 'vre-readout-value');
    this.pos = el('div', 'vre-readout-pos');
    this._ov.br.append(this.value, this.pos, this.zoom);
    this._markers = {};
    for (const side of ['top', 'right', 'bottom', 'left']) {
      const m = el('div', `vre-marker vre-marker-${side}`);
      this._markers[side] = m;
      stage.appendChild(m);
    }
    this.message = el('div', 'vre-Viewport-message');
    this.message.hidden = true;
    stage.appendChild(this.message);
    this._spinner = el('div', 'vre-Viewport-loading', 'Loading…');
    this._spinner.hidden = true;
    stage.appendChild(this._spinner);
  }

  /** The orientation letters on the four sides (none: empty). */
  setMarkers(m: Markers | null): void {
    for (const side of ['top', 'right', 'bottom', 'left'] as const) {
      this._markers[side].textContent = m ? m[side] || '' : '';
    }
  }

  setTitle(lines: string[]): void {
    this._ov.tl.textContent = '';
    for (const line of lines) {
      if (line) {
        this._ov.tl.appendChild(el('div', '', line));
      }
    }
  }

  /** Show "Loading…" if the image has not come within 150 ms. */
  startSpinner(): void {
    this._spinnerTimer = this._spinnerTimer || window.setTimeout(() => (this._spinner.hidden = false), 150);
  }

  stopSpinner(): void {
    if (this._spinnerTimer) {
      clearTimeout(this._spinnerTimer);
      this._spinnerTimer = 0;
    }
    this._spinner.hidden = true;
  }

  private _ov: { tl: HTMLDivElement; tr: HTMLDivElement; bl: HTMLDivElement; br: HTMLDivElement };
  private _markers: { [side: string]: HTMLDivElement };
  private _spinner: HTMLDivElement;
  private _spinnerTimer = 0;
}
