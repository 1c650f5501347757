"""The offline notebook viewer: data embedded exactly, spacing, downsampling, bad input."""

import base64
import re

import numpy as np
import pytest

from vre_session.notebook import view


def embedded(html: str) -> np.ndarray:
    data = re.search(r'atob\("([A-Za-z0-9+/=]+)"\)', html).group(1)
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


def test_volume_is_embedded_exactly_and_offline():
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 100
    html = view(vol, spacing=(2.5, 0.7, 0.7))._repr_html_()
    assert np.array_equal(embedded(html), vol.ravel().astype(np.float32))
    assert '"shape": [4, 5, 6]' in html and '"spacing": [2.5, 0.7, 0.7]' in html
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # nothing fetched


def test_2d_and_window():
    v = view(np.ones((8, 9)), window=(400, 40))
    assert v.data.shape == (1, 8, 9) and v.window == (400, 40)


def test_large_volumes_are_downsampled_in_plane():
    v = view(np.zeros((10, 512, 512), dtype=np.int16), spacing=(1, 0.5, 0.5))
    v2 = type(v)(np.zeros((10, 512, 512), dtype=np.int16), spacing=(1, 0.5, 0.5), max_bytes=2_000_000)
    assert v.downsampled == 1 and v2.downsampled == 4 and v2.data.shape == (10, 128, 128)
    assert v2.spacing == (1.0, 2.0, 2.0)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2, 2)), np.array(["a", "b"]), np.zeros(3, dtype=complex)])
def test_bad_images_are_explained(bad):
    with pytest.raises(ValueError, match="view\\(\\) takes"):
        view(bad)
