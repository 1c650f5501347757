/**
 * The viewer's keys: arrows step the active pane, PageUp/PageDown a tenth of it, Home/End go to
 * its ends, +/- zoom, r (or 0) resets zoom and pan, i inverts. Keys typed into the toolbar's
 * inputs and selects are theirs; with ctrl/cmd (or alt) they are the browser's.
 */
import { IDisplay } from './render';
import type { Viewport } from './viewport';

/** The viewer, as its keys see it. */
export interface IKeyTarget {
  readonly viewports: readonly Viewport[];
  readonly display: IDisplay;
  readonly isColor: boolean;
  /** The pane the keys act on (the active one, else the first). */
  activeOrFirst(): Viewport | null;
  setInvert(on: boolean): void;
}

export function onViewerKey(viewer: IKeyTarget, e: KeyboardEvent): void {
  const v = viewer.activeOrFirst();
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
        for (const o of viewer.viewports) {
          o.resetView();
        }
      }
      break;
    case 'i':
      if (e.ctrlKey || e.metaKey || viewer.isColor) {
        handled = false;
      } else {
        viewer.setInvert(!viewer.display.invert);
      }
      break;
    default:
      handled = false;
  }
  if (handled) {
    e.preventDefault();
    e.stopPropagation();
  }
}
