/**
 * Multiplanar reformats in the viewer: how the axial, coronal and sagittal panes relate.
 *
 * The server sends the planes in radiological display orientation (extensions/API.md): axial
 * rows run anterior -> posterior and its columns right -> left; coronal and sagittal rows run
 * head -> feet, so a row of those is axial image `count - 1 - row`; coronal image i is axial row
 * i, sagittal image i is axial (and coronal) column i.
 */
import { IPixels, Plane } from './api';

export interface IReferenceLines {
  /** Image row (null: none) where the other plane cuts this one, and its colour. */
  row: number | null;
  col: number | null;
  rowColor: string;
  colColor: string;
}

const COLORS: { [plane: string]: string } = { axial: '#4aa3ff', coronal: '#58d68d', sagittal: '#f5b041' };

/**
 * The planes to move, in order, when the pixel (row, col) of a `plane` image is double clicked:
 * [plane, index] pairs; `axialCount` is the number of axial images.
 */
export function crosshairTargets(plane: string, row: number, col: number, axialCount: number): [Plane, number][] {
  if (plane === 'axial') {
    return [
      ['coronal', row],
      ['sagittal', col]
    ];
  }
  if (plane === 'coronal') {
    return [
      ['axial', axialCount - 1 - row],
      ['sagittal', col]
    ];
  }
  if (plane === 'sagittal') {
    return [
      ['axial', axialCount - 1 - row],
      ['coronal', col]
    ];
  }
  return [];
}

/**
 * Where the other two planes cut a `plane` image (dashed lines), from the index each pane shows
 * (`indexOf`: null for a plane that is not shown).
 */
export function referenceLines(
  plane: string,
  indexOf: (p: Plane) => number | null,
  axialCount: number
): IReferenceLines | null {
  const ax = indexOf('axial');
  if (plane === 'axial') {
    return { row: indexOf('coronal'), col: indexOf('sagittal'), rowColor: COLORS.coronal, colColor: COLORS.sagittal };
  }
  if (plane === 'coronal') {
    return {
      row: ax === null ? null : axialCount - 1 - ax,
      col: indexOf('sagittal'),
      rowColor: COLORS.axial,
      colColor: COLORS.sagittal
    };
  }
  if (plane === 'sagittal') {
    return {
      row: ax === null ? null : axialCount - 1 - ax,
      col: indexOf('coronal'),
      rowColor: COLORS.axial,
      colColor: COLORS.coronal
    };
  }
  return null;
}

/** Draw `lines` over `image`, drawn at origin (ox, oy) with (sx, sy) CSS px per column/row. */
export function drawReferenceLines(
  ctx: CanvasRenderingContext2D,
  g: { sx: number; sy: number; ox: number; oy: number },
  image: IPixels,
  lines: IReferenceLines
): void {
  ctx.save();
  ctx.lineWidth = 1;
  ctx.setLineDash([4, 4]);
  const { rows, cols } = image;
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
