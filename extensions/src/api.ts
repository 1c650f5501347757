/**
 * The session's dataset and DICOM API (extensions/API.md): its types, the URLs of a viewer's
 * source, and the binary pixel routes. Requests and errors: http.ts.
 */
import { ApiError, Query, apiUrl, request } from './http';

export interface IRoot {
  api_version: number;
  user: string | null;
  project: string | null;
  datasets_link: string | null;
  data_root: string;
}

export interface IDatasetRecord {
  title?: string;
  description?: string;
  publisher?: string | { name?: string };
  access_rights?: string;
  condition?: string;
  modalities?: string[];
  body_parts?: string[];
  num_subjects?: number;
  num_studies?: number;
  num_series?: number;
  interoperability_tier?: number | string;
  [key: string]: unknown;
}

export interface IDataset {
  slug: string;
  path: string;
  browse_path: string | null;
  indexed: boolean;
  record: IDatasetRecord | null;
  /** The grant's mode: a `batch-only` dataset is a catalogue record without files (`note` says so). */
  mode?: 'interactive' | 'batch-only';
  note?: string;
}

/** A record of the hub's catalogue (`vre/api/catalogue`: metadata only, never a path). */
export interface ICatalogueRecord extends IDatasetRecord {
  slug: string;
  /** Project -> `granted` | `batch-only` | `requested` | `not granted`, for each of the user's projects. */
  access: { [project: string]: string };
}

export interface ICatalogue {
  datasets: ICatalogueRecord[];
  /** Filter name -> the values it can take (from every record). */
  facets: { [filter: string]: string[] };
}

export interface IPage<T> {
  total: number;
  limit: number;
  offset: number;
  items: T[];
}

export interface ISeriesItem {
  series_uid: string;
  study_uid: string;
  patient_id: string;
  study_date: string | null;
  study_description: string | null;
  accession?: string | null;
  modality: string | null;
  body_part: string | null;
  description: string | null;
  manufacturer?: string | null;
  rows?: number | null;
  columns?: number | null;
  pixel_spacing?: number[] | null;
  slice_thickness?: number | null;
  num_instances: number;
  /** Added by later API versions (absolute folder / folder relative to the Lab root). */
  path?: string | null;
  browse_path?: string | null;
}

export interface IPatientItem {
  patient_id: string;
  sex: string | null;
  age_years: number | null;
  num_studies: number;
  num_series: number;
  modalities: string[];
}

export interface IStudyItem {
  study_uid: string;
  patient_id: string;
  study_date: string | null;
  study_description: string | null;
  accession: string | null;
  num_series: number;
  num_instances: number;
  modalities: string[];
}

export type Markers = { top: string; bottom: string; left: string; right: string };

export interface IWindow {
  center: number;
  width: number;
  name?: string;
  source?: string;
}

export interface ISliceInfo {
  index: number;
  sop_instance_uid: string | null;
  instance_number: number | null;
  frame: number;
  position: number[] | null;
  location: number | null;
}

export interface IPlaneInfo {
  count: number;
  rows: number;
  columns: number;
  pixel_spacing: number[] | null;
  markers: Markers | null;
}

export type Plane = 'axial' | 'coronal' | 'sagittal';

export interface ISeriesMeta {
  source: 'series' | 'file';
  dataset: string | null;
  series_uid?: string;
  path?: string;
  browse_path?: string | null;
  patient_id: string | null;
  study_instance_uid: string | null;
  series_instance_uid: string | null;
  study_date: string | null;
  study_description: string | null;
  series_description: string | null;
  modality: string | null;
  body_part: string | null;
  manufacturer: string | null;
  num_instances: number;
  num_slices: number;
  rows: number | null;
  columns: number | null;
  samples_per_pixel: number;
  color: boolean;
  photometric_interpretation: string | null;
  invert: boolean;
  rescale?: { slope: number; intercept: number; type: string | null } | null;
  units: string | null;
  pixel_spacing: number[] | null;
  pixel_spacing_source: string | null;
  slice_thickness: number | null;
  slice_spacing: number | null;
  uniform_spacing: boolean;
  ordering: string;
  orientation: number[] | null;
  normal: number[] | null;
  orientation_markers: Markers | null;
  windows: IWindow[];
  voi_lut_function: string | null;
  slices: ISliceInfo[];
  mpr: {
    available: boolean;
    reason: string | null;
    oblique: boolean;
    planes: { [plane: string]: IPlaneInfo } | null;
  } | null;
  warnings: string[];
}

export type PixelArray = Int16Array | Uint16Array | Float32Array | Uint8Array;

/** One image from `slices/<i>` or `mpr/<plane>/<i>`, values in modality units. */
export interface IPixels {
  dtype: 'int16' | 'uint16' | 'float32' | 'uint8';
  rows: number;
  cols: number;
  channels: number;
  data: PixelArray;
  spacing: [number, number] | null;
  index: number;
  count: number;
  range: [number, number];
  window: [number, number] | null;
  position: number[] | null;
  location: number | null;
  markers: Markers | null;
  bytes: number;
}

export interface ITagElement {
  tag: string;
  keyword: string;
  name: string;
  vr: string;
  depth: number;
  value: string;
}

export interface ITags {
  sop_instance_uid: string | null;
  count: number;
  truncated: boolean;
  elements: ITagElement[];
}

/** What the viewer shows: an indexed series, or one file opened by path. */
export type Source =
  | { kind: 'series'; dataset: string; seriesUid: string }
  | { kind: 'file'; path: string };

/** The URL of a route below a source, e.g. `slices/3` of a series or of a file. */
export function sourceUrl(source: Source, sub: string[] = [], query?: Query): string {
  if (source.kind === 'series') {
    return apiUrl(
      ['datasets', source.dataset, 'series', source.seriesUid, ...sub],
      query
    );
  }
  return apiUrl(['file', ...sub], { ...(query || {}), path: source.path });
}

function numbers(header: string | null): number[] | null {
  if (!header) {
    return null;
  }
  const values = header.split(',').map(Number);
  return values.every(v => Number.isFinite(v)) ? values : null;
}

/** Fetch and wrap a binary image (slice or MPR plane). */
export async function getPixels(url: string, signal?: AbortSignal): Promise<IPixels> {
  const response = await request(url, { signal });
  const h = response.headers;
  const buffer = await response.arrayBuffer();
  const dtype = (h.get('X-VRE-Dtype') || 'int16') as IPixels['dtype'];
  const shape = numbers(h.get('X-VRE-Shape')) || [];
  const [rows, cols] = shape;
  const channels = shape.length > 2 ? shape[2] : 1;
  let data: PixelArray;
  switch (dtype) {
    case 'int16':
      data = new Int16Array(buffer);
      break;
    case 'uint16':
      data = new Uint16Array(buffer);
      break;
    case 'float32':
      data = new Float32Array(buffer);
      break;
    case 'uint8':
      data = new Uint8Array(buffer);
      break;
    default:
      throw new ApiError(422, 'unreadable', `unknown pixel type ${dtype}`);
  }
  if (!rows || !cols || data.length !== rows * cols * channels) {
    throw new ApiError(
      422,
      'unreadable',
      `the server sent ${data.length} values for an image of shape ${shape.join('x')}`
    );
  }
  const spacing = numbers(h.get('X-VRE-Pixel-Spacing'));
  const index = (h.get('X-VRE-Index') || '0/1').split('/').map(Number);
  let range = numbers(h.get('X-VRE-Range'));
  if (!range || range.length !== 2) {
    range = [0, 0];
  }
  const win = numbers(h.get('X-VRE-Window'));
  const markers = h.get('X-VRE-Markers');
  let m: Markers | null = null;
  if (markers) {
    const [top, right, bottom, left] = markers.split(',');
    m = { top, right, bottom, left };
  }
  const location = h.get('X-VRE-Location');
  return {
    dtype,
    rows,
    cols,
    channels,
    data,
    spacing: spacing && spacing.length === 2 ? [spacing[0], spacing[1]] : null,
    index: index[0],
    count: index[1],
    range: [range[0], range[1]],
    window: win && win.length === 2 ? [win[0], win[1]] : null,
    position: numbers(h.get('X-VRE-Position')),
    location: location !== null && location !== '' ? Number(location) : null,
    markers: m,
    bytes: buffer.byteLength
  };
}

/** What a `stream` record's header says (the binary slice answer's headers, as JSON). */
interface IStreamHeader {
  index: number;
  count?: number;
  dtype?: IPixels['dtype'];
  shape?: number[];
  pixel_spacing?: number[] | null;
  range?: number[];
  window?: number[] | null;
  position?: number[] | null;
  location?: number | null;
  nbytes?: number;
  error?: { status: number; reason: string; message: string };
}

function typed(dtype: IPixels['dtype'], buffer: ArrayBuffer): PixelArray {
  switch (dtype) {
    case 'int16':
      return new Int16Array(buffer);
    case 'uint16':
      return new Uint16Array(buffer);
    case 'float32':
      return new Float32Array(buffer);
    case 'uint8':
      return new Uint8Array(buffer);
    default:
      throw new ApiError(422, 'unreadable', `unknown pixel type ${dtype}`);
  }
}

function streamPixels(h: IStreamHeader, buffer: ArrayBuffer): IPixels {
  const shape = h.shape || [];
  const [rows, cols] = shape;
  const channels = shape.length > 2 ? shape[2] : 1;
  const data = typed(h.dtype || 'int16', buffer);
  if (!rows || !cols || data.length !== rows * cols * channels) {
    throw new ApiError(422, 'unreadable', `the server sent ${data.length} values for an image of shape ${shape.join('x')}`);
  }
  const s = h.pixel_spacing;
  const w = h.window;
  const r = h.range && h.range.length === 2 ? h.range : [0, 0];
  return {
    dtype: h.dtype || 'int16',
    rows,
    cols,
    channels,
    data,
    spacing: s && s.length === 2 ? [s[0], s[1]] : null,
    index: h.index,
    count: h.count ?? 0,
    range: [r[0], r[1]],
    window: w && w.length === 2 ? [w[0], w[1]] : null,
    position: h.position || null,
    location: h.location ?? null,
    markers: null,
    bytes: buffer.byteLength
  };
}

/**
 * Read a `stream` answer (many slices, see API.md) as it arrives: `onImage` for each slice as
 * soon as its last byte is in, `onError` for a slice the server could not decode. Each slice's
 * bytes are copied once, into its own buffer, straight from the network chunks.
 */
export async function readStream(
  url: string,
  signal: AbortSignal,
  onImage: (img: IPixels) => void,
  onError: (index: number, error: ApiError) => void
): Promise<void> {
  const response = await request(url, { signal });
  if (!response.body) {
    throw new ApiError(422, 'unreadable', 'the server sent no stream');
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let small = new Uint8Array(0); // the length prefix and the JSON header being gathered
  let header: IStreamHeader | null = null;
  let body: Uint8Array | null = null;
  let filled = 0;
  const finish = () => {
    const h = header!;
    header = null;
    if (h.error) {
      onError(h.index, new ApiError(h.error.status, h.error.reason, h.error.message));
    } else {
      onImage(streamPixels(h, body!.buffer as ArrayBuffer));
    }
    body = null;
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      break;
    }
    let chunk = value as Uint8Array;
    while (chunk.length) {
      if (header && body) {
        const n = Math.min(chunk.length, body.length - filled);
        body.set(chunk.subarray(0, n), filled);
        filled += n;
        chunk = chunk.subarray(n);
        if (filled === body.length) {
          finish();
        }
        continue;
      }
      // gather the 4-byte length, then the JSON header
      const need = small.length < 4 ? 4 : 4 + new DataView(small.buffer, small.byteOffset).getUint32(0, true);
      const take = Math.min(chunk.length, need - small.length);
      const merged = new Uint8Array(small.length + take);
      merged.set(small);
      merged.set(chunk.subarray(0, take), small.length);
      small = merged;
      chunk = chunk.subarray(take);
      if (small.length === need && need > 4) {
        header = JSON.parse(decoder.decode(small.subarray(4))) as IStreamHeader;
        small = new Uint8Array(0);
        body = new Uint8Array(header.nbytes || 0);
        filled = 0;
        if (!body.length) {
          finish();
        }
      }
    }
  }
  if (header || small.length) {
    throw new ApiError(422, 'unreadable', 'the stream of slices ended in the middle of a slice');
  }
}
