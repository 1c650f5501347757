/**
 * The Python cell that "Insert code cell" puts into a notebook: load a series as a 3-D array
 * with its spacing. It runs with only pydicom + numpy (what every session has); SimpleITK is
 * used instead when it is importable.
 */
import { IDataset, ISeriesItem } from './api';

function py(s: string | null | undefined): string {
  return JSON.stringify(s ?? ''); // a JSON string is a valid Python string literal
}

/**
 * The series' folder (absolute) if the API gives it (`path`, or `relpath` inside the dataset),
 * else null: then the code searches the dataset for the series' UID.
 */
export function seriesFolder(dataset: IDataset, item: ISeriesItem): string | null {
  if (item.path) {
    return item.path;
  }
  const rel = (item as { relpath?: string | null }).relpath;
  if (rel) {
    return `${dataset.path.replace(/\/+$/, '')}/${rel.replace(/^\/+/, '')}`;
  }
  return null;
}

export function seriesCode(dataset: IDataset, item: ISeriesItem): string {
  const folder = seriesFolder(dataset, item);
  const what = [item.description || 'series', item.patient_id, item.study_date].filter(Boolean).join(', ');
  const where = folder
    ? `FOLDER = Path(${py(folder)})`
    : `FOLDER = Path(${py(dataset.path)})  # the dataset; the series' files are found by their SeriesInstanceUID`;
  return `# VRE dataset "${dataset.slug}": ${what} (${item.modality || '?'}, ${item.num_instances} image(s))
# volume[z, y, x] in modality units (HU for CT), slices ordered along the slice normal;
# spacing = (z, y, x) in mm. Uses SimpleITK if installed, else pydicom + numpy.
from pathlib import Path

import numpy as np
import pydicom

SERIES_UID = ${py(item.series_uid)}
${where}


def load_dicom_series(folder, series_uid):
    """Return (volume, spacing, origin) of one series found under \`folder\`."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # folders, hidden files and .ipynb_checkpoints
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue  # not a DICOM file (e.g. clinical.csv)
        if ds.get("SeriesInstanceUID") == series_uid and "Rows" in ds:
            found.append((path, ds))
    if not found:
        raise FileNotFoundError(f"no image of series {series_uid} under {folder}")
    first = found[0][1]
    iop = first.get("ImageOrientationPatient")
    if iop is not None and all("ImagePositionPatient" in ds for _, ds in found):
        iop = np.array(iop, dtype=float)
        normal = np.cross(iop[:3], iop[3:])  # row direction x column direction

        def along(ds):
            return float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float)))

        found.sort(key=lambda f: along(f[1]))
        where = np.array([along(ds) for _, ds in found])
    else:  # no geometry: instance number order
        found.sort(key=lambda f: int(f[1].get("InstanceNumber") or 0))
        where = None
    images = []
    for path, _ in found:
        ds = pydicom.dcmread(path)
        values = ds.pixel_array
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            values = values * slope + intercept
        images.extend(values if values.ndim == 3 and int(ds.get("NumberOfFrames", 1) or 1) > 1 else [values])
    volume = np.stack(images)
    if volume.dtype.kind == "f" and np.all(volume == np.round(volume)) and -32768 <= volume.min() and volume.max() <= 32767:
        volume = volume.astype(np.int16)
    row_mm, col_mm = (float(v) for v in first.get("PixelSpacing", [1, 1]))
    if where is not None and len(where) > 1:
        z_mm = float(np.median(np.diff(where)))
    else:
        z_mm = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1)
    origin = tuple(float(v) for v in found[0][1].get("ImagePositionPatient", [0, 0, 0]))
    return volume, (z_mm, row_mm, col_mm), origin


try:
    import SimpleITK as sitk
except ImportError:
    sitk = None
if sitk is not None:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(FOLDER), SERIES_UID, False, True))
    image = reader.Execute()
    volume = sitk.GetArrayFromImage(image)  # (z, y, x)
    spacing = tuple(reversed(image.GetSpacing()))
    origin = image.GetOrigin()
else:
    volume, spacing, origin = load_dicom_series(FOLDER, SERIES_UID)
print("shape", volume.shape, volume.dtype, "spacing (z, y, x) mm", tuple(round(s, 4) for s in spacing))
`;
}
