"""``view(image)`` in a notebook, offline: the call shape of itkwidgets' ``view``, no network.

itkwidgets' current release loads its viewer application from the internet when a cell first
renders; sessions have no network, so it shows nothing. This viewer is a self-contained HTML output
(a canvas and a few lines of JavaScript, the volume embedded in the output): slice scrolling with a
slider or the mouse wheel, window/level with sliders, drag or presets, and the value under the
cursor. It takes numpy arrays (2-D or 3-D, z-y-x) and SimpleITK images (spacing taken from them).
Large volumes are downsampled in-plane so an output stays under ``max_bytes``.
"""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np

PRESETS = {"soft tissue": (400, 40), "lung": (1500, -600), "bone": (2500, 480), "brain": (80, 40), "liver": (150, 90)}


def _as_volume(image, spacing) -> tuple[np.ndarray, tuple[float, float, float]]:
    if hasattr(image, "GetSpacing") and hasattr(image, "GetSize"):  # SimpleITK.Image
        import SimpleITK as sitk

        sx, sy, *sz = image.GetSpacing()
        array = sitk.GetArrayFromImage(image)
        spacing = spacing or (sz[0] if sz else 1.0, sy, sx)
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"view() takes a 2-D or 3-D image, not an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"view() takes real-valued images, not {array.dtype}")
    return array, tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))


class Viewer:
    def __init__(self, image, *, spacing=None, window: tuple[float, float] | None = None, max_bytes: int = 24_000_000):
        volume, self.spacing = _as_volume(image, spacing)
        step = 1
        while volume[:, ::step, ::step].size * 4 > max_bytes and step < 64:
            step *= 2
        volume = volume[:, ::step, ::step]
        self.spacing = (self.spacing[0], self.spacing[1] * step, self.spacing[2] * step)
        self.downsampled = step
        self.data = np.ascontiguousarray(volume, dtype="<f4")
        finite = self.data[np.isfinite(self.data)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self.range = (lo, hi)
        self.window = window or (max(hi - lo, 1e-6), (hi + lo) / 2)

    def _repr_html_(self) -> str:
        uid = "vre" + uuid.uuid4().hex[:8]
        z, y, x = self.data.shape
        meta = json.dumps({"shape": [z, y, x], "spacing": self.spacing, "window": self.window,
                           "range": self.range, "presets": PRESETS})
        payload = base64.b64encode(self.data.tobytes()).decode()
        note = f" (downsampled {self.downsampled}x in-plane)" if self.downsampled > 1 else ""
        return _TEMPLATE.replace("UID", uid).replace("META", meta).replace("DATA", payload).replace("NOTE", note)


def view(image, *, spacing=None, window=None, **_ignored) -> Viewer:
    """Show ``image`` (numpy array or SimpleITK image) in the notebook; like itkwidgets' ``view``."""
    return Viewer(image, spacing=spacing, window=window)


_TEMPLATE = """
<div id="UID" class="vre-view" style="font:12px sans-serif;max-width:640px">
  <canvas style="width:100%;image-rendering:pixelated;background:#000;cursor:crosshair"></canvas>
  <div><input class="s" type="range" min="0" value="0" style="width:100%" aria-label="slice"></div>
  <div>W <input class="w" type="range" style="width:30%" aria-label="window">
       L <input class="l" type="range" style="width:30%" aria-label="level">
       <select class="p" aria-label="preset"><option value="">preset</option></select></div>
  <div class="r" style="font-family:monospace">NOTE</div>
</div>
<script>
(function () {
  const root = document.getElementById("UID"), m = META;
  const bin = atob("DATA"), buf = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
  const vol = new Float32Array(buf.buffer), [Z, Y, X] = m.shape, n = X * Y;
  const cv = root.querySelector("canvas"), ctx = cv.getContext("2d");
  cv.width = X; cv.height = Y; cv.style.aspectRatio = (X * m.spacing[2]) + "/" + (Y * m.spacing[1]);
  const s = root.querySelector(".s"), w = root.querySelector(".w"), l = root.querySelector(".l");
  const p = root.querySelector(".p"), r = root.querySelector(".r"), img = ctx.createImageData(X, Y);
  const span = Math.max(m.range[1] - m.range[0], 1e-6);
  s.max = Z - 1; s.value = Math.floor(Z / 2);
  // slider ranges cover the image, its starting window and every preset (none is clamped)
  const pw = Object.values(m.presets).map((v) => v[0]), pl = Object.values(m.presets).map((v) => v[1]);
  w.min = Math.min(span / 1000, 1); w.max = Math.max(span * 2, m.window[0], ...pw); w.step = "any";
  l.min = Math.min(m.range[0] - span, m.window[1], ...pl); l.max = Math.max(m.range[1] + span, m.window[1], ...pl);
  l.step = "any"; w.value = m.window[0]; l.value = m.window[1];
  for (const k in m.presets) { const o = document.createElement("option"); o.textContent = k; p.appendChild(o); }
  let last = "";
  function draw() {
    const z = +s.value, W = +w.value, L = +l.value, lo = L - W / 2, off = z * n;
    for (let i = 0; i < n; i++) {
      const v = Math.max(0, Math.min(255, ((vol[off + i] - lo) / W) * 255)), j = 4 * i;
      img.data[j] = img.data[j + 1] = img.data[j + 2] = v; img.data[j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    r.textContent = "slice " + (z + 1) + "/" + Z + "  W " + W.toFixed(0) + " L " + L.toFixed(0) + last;
  }
  s.oninput = w.oninput = l.oninput = draw;
  p.onchange = () => { const v = m.presets[p.value]; if (v) { w.value = v[0]; l.value = v[1]; draw(); } };
  cv.onwheel = (e) => { e.preventDefault(); s.value = +s.value + (e.deltaY > 0 ? 1 : -1); draw(); };
  let drag = null;
  cv.onmousedown = (e) => { drag = [e.clientX, e.clientY, +w.value, +l.value]; };
  window.addEventListener("mouseup", () => { drag = null; });
  cv.onmousemove = (e) => {
    const b = cv.getBoundingClientRect(), x = Math.floor((e.clientX - b.left) / b.width * X),
          y = Math.floor((e.clientY - b.top) / b.height * Y);
    if (drag) { w.value = drag[2] + (e.clientX - drag[0]) * span / 500; l.value = drag[3] + (e.clientY - drag[1]) * span / 500; }
    if (x >= 0 && y >= 0 && x < X && y < Y) last = "  value " + vol[+s.value * n + y * X + x].toFixed(1) + " at (" + x + "," + y + ")";
    draw();
  };
  draw();
})();
</script>
"""
