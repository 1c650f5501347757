/**
 * Mouse input of a viewer pane: wheel = slice, ctrl+wheel = zoom, left drag = the viewer's tool
 * (W/L by default), right drag = W/L, middle or shift drag = pan, ctrl+drag = zoom, double click
 * (MPR) = move the other planes there; and where the cursor is, for the value readout.
 */
import type { Tool, Viewport } from './viewport';

export class ViewportInput {
  constructor(private _v: Viewport) {
    const canvas = _v.canvas;
    canvas.addEventListener('wheel', this._onWheel, { passive: false });
    canvas.addEventListener('pointerdown', this._onPointerDown);
    canvas.addEventListener('pointermove', this._onPointerMove);
    canvas.addEventListener('pointerup', this._onPointerUp);
    canvas.addEventListener('pointercancel', this._onPointerUp);
    canvas.addEventListener('pointerleave', this._onPointerLeave);
    canvas.addEventListener('dblclick', this._onDblClick);
    canvas.addEventListener('contextmenu', e => {
      e.preventDefault();
      e.stopPropagation();
    });
  }

  /** The cursor over the canvas (CSS px), or null when it is elsewhere. */
  get cursor(): { x: number; y: number } | null {
    return this._cursor;
  }

  private _onWheel = (e: WheelEvent): void => {
    const v = this._v;
    e.preventDefault();
    e.stopPropagation();
    v.owner.setActive(v);
    const scale = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 400 : 1;
    if (e.ctrlKey || e.metaKey) {
      const r = v.canvas.getBoundingClientRect();
      v.zoomAt(Math.exp((-e.deltaY * scale) / 500), e.clientX - r.left, e.clientY - r.top);
      return;
    }
    this._wheel += e.deltaY * scale;
    if (Math.abs(this._wheel) >= 40 || Math.abs(e.deltaY * scale) >= 40) {
      const dir = Math.sign(this._wheel || e.deltaY);
      this._wheel = 0;
      v.setIndex(v.index + dir, performance.now());
    }
  };

  private _onPointerDown = (e: PointerEvent): void => {
    const v = this._v;
    v.owner.setActive(v);
    v.owner.node.focus({ preventScroll: true });
    let mode: Tool;
    if (e.button === 1 || (e.button === 0 && e.shiftKey)) {
      mode = 'pan';
    } else if (e.button === 2) {
      mode = 'wl';
    } else if (e.button === 0 && (e.ctrlKey || e.metaKey)) {
      mode = 'zoom';
    } else if (e.button === 0) {
      mode = v.owner.tool;
    } else {
      return;
    }
    e.preventDefault();
    const r = v.canvas.getBoundingClientRect();
    this._drag = { mode, x: e.clientX, y: e.clientY, x0: e.clientX - r.left, y0: e.clientY - r.top };
    v.canvas.setPointerCapture(e.pointerId);
    v.node.classList.add(`vre-mod-drag-${mode}`);
  };

  private _onPointerMove = (e: PointerEvent): void => {
    const v = this._v;
    const r = v.canvas.getBoundingClientRect();
    this._cursor = { x: e.clientX - r.left, y: e.clientY - r.top };
    const drag = this._drag;
    if (drag) {
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.mode === 'wl') {
        v.owner.adjustWindow(dx, dy);
      } else if (drag.mode === 'pan') {
        v.panX += dx;
        v.panY += dy;
        v.requestDraw(false);
      } else {
        v.zoomAt(Math.exp(-dy / 150), drag.x0, drag.y0);
      }
    }
    v.updateReadout();
  };

  private _onPointerUp = (e: PointerEvent): void => {
    if (this._drag) {
      this._v.node.classList.remove(`vre-mod-drag-${this._drag.mode}`);
      this._drag = null;
      try {
        this._v.canvas.releasePointerCapture(e.pointerId);
      } catch {
        // already released
      }
    }
  };

  private _onPointerLeave = (): void => {
    if (!this._drag) {
      this._cursor = null;
      this._v.updateReadout();
    }
  };

  private _onDblClick = (e: MouseEvent): void => {
    const v = this._v;
    const r = v.canvas.getBoundingClientRect();
    const p = v.imagePoint(e.clientX - r.left, e.clientY - r.top);
    if (p) {
      v.owner.crosshair(v, Math.floor(p.row), Math.floor(p.col));
    }
  };

  private _wheel = 0;
  private _cursor: { x: number; y: number } | null = null;
  private _drag: { mode: Tool; x: number; y: number; x0: number; y0: number } | null = null;
}
