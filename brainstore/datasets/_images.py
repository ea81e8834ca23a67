"""Safe image decoding shared by validation and the feature pipeline.

A ``path`` may also be an array reference (``FILE.hdf5#KEY[INDEX]``, ``FILE.npy#[INDEX]``,
:mod:`._arrays`): its pixels are read from the brick, with no decoding.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

try:  # libpng/zlib-ng PNG decoder, ~1.8x faster than PIL's on NSD-size images, pixel-identical
    from imagecodecs import png_decode as _png_decode
except ImportError:  # pragma: no cover - optional speed-up
    _png_decode = None

from ._arrays import MAX_PIXELS, parse_array_ref, read_array_ref, ref_problem

__all__ = ["MAX_PIXELS", "decode_image", "image_problem"]


def decode_image(data: bytes | str | Path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image (bytes or path) to RGB, refusing empty files and decompression bombs.

    An array reference (``FILE.hdf5#KEY[INDEX]``, ``FILE.npy#[INDEX]``) gives the brick's pixels as
    they are (no decoding; grayscale bricks replicated to RGB).

    Raises
    ------
    ValueError
        With a message that says what is wrong (empty, not an image, too many pixels, truncated; for an
        array reference a :class:`~._arrays.BrickError`: missing file or key, index out of range ...).
    """
    if isinstance(data, str) and (ref := parse_array_ref(data)) is not None:
        return Image.fromarray(read_array_ref(ref))  # the brick's dtype/shape/size were checked
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if len(data) == 0:
        raise ValueError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ValueError(f"image is {w}x{h} = {w * h:,} pixels, above the {max_pixels:,} limit (decompression bomb?)")
            if _png_decode is not None and img.format == "PNG" and img.mode == "RGB":
                # 8-bit RGB PNG (every NSD stimulus): same pixels as PIL's decoder, less time
                arr = _png_decode(data)
                if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
                    raise ValueError(f"PNG decoded to {arr.shape} {arr.dtype}, header says {w}x{h} RGB")
                return Image.fromarray(arr)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"decompression bomb refused: {e}") from e
    except ValueError:
        raise
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), SyntaxError...
        raise ValueError(f"not a readable image ({type(e).__name__}: {e})") from e
    return img.convert("RGB")


def image_problem(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> str | None:
    """None when ``path`` decodes as an image, else a sentence naming the file and the problem.

    For an array reference: whether its brick file and key exist, hold uint8 images and the index is in
    range (cheap: the brick's header only, the file kept open).
    """
    if isinstance(path, str) and (ref := parse_array_ref(path)) is not None:
        return ref_problem(ref)
    path = Path(path)
    try:
        if not path.exists():
            return f"image {path} does not exist"
        decode_image(path, max_pixels=max_pixels)
    except ValueError as e:
        return f"image {path}: {e}; replace or remove it"
    return None
