"""Image decoding (``datasets/_images.py``): PIL's pixels, decompression bombs and truncated files refused."""

import numpy as np
import pytest
from PIL import Image

from brainstore.datasets import decode_image


def test_decompression_bomb_refused(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(p)
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_image(p, max_pixels=1000 * 1000)


@pytest.mark.parametrize("kind", ["rgb", "rgba", "palette", "gray", "gray16", "jpeg"])
def test_decode_image_equals_pil(tmp_path, kind):
    """The libpng fast path (8-bit RGB PNGs) and the PIL path give PIL's ``convert("RGB")`` pixels."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    img, kw, ext = {
        "rgb": (rgb, {}, "png"),
        "rgba": (rgb.convert("RGBA"), {}, "png"),
        "palette": (rgb.convert("P"), {}, "png"),
        "gray": (rgb.convert("L"), {}, "png"),
        "gray16": (Image.fromarray(rng.integers(0, 65535, (37, 53), dtype=np.uint16)), {}, "png"),
        "jpeg": (rgb, {"quality": 90}, "jpg"),
    }[kind]
    path = tmp_path / f"x.{ext}"
    img.save(path, **kw)
    from brainstore.datasets import _images

    assert _images._png_decode is not None  # imagecodecs is a pinned dependency: the fast path is tested
    ours = decode_image(path)
    assert ours.mode == "RGB" and ours.size == (53, 37)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(np.asarray(decode_image(path.read_bytes())), np.asarray(ours))


def test_truncated_png_is_refused_with_a_reason(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    for cut in (data[: len(data) // 2], data[:60]):
        with pytest.raises(ValueError, match="not a readable image"):
            decode_image(cut)
