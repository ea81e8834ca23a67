"""PIL + numpy image preprocessing (no torch), matching torchvision/open_clip/SAM eval transforms.

The functions reproduce, on PIL inputs, what ``open_clip.image_transform``
(eval mode) and SAM's ``ResizeLongestSide`` + ``Sam.preprocess`` compute with
torchvision, so CPU workers need neither torch nor torchvision.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])


def _resize(img, h: int, w: int, interpolation: str):
    if (img.height, img.width) == (h, w):
        return img
    return img.resize((w, h), resample=_RESAMPLE[interpolation])


def _crop_or_pad(arr: np.ndarray, h: int, w: int, fill: int = 0) -> np.ndarray:
    """torchvision ``center_crop`` (pads with ``fill`` when the image is smaller)."""
    ih, iw = arr.shape[:2]
    if h > ih or w > iw:
        top, left = (h - ih) // 2 if h > ih else 0, (w - iw) // 2 if w > iw else 0
        bottom, right = (h - ih + 1) // 2 if h > ih else 0, (w - iw + 1) // 2 if w > iw else 0
        arr = np.pad(arr, ((top, bottom), (left, right), (0, 0)), constant_values=fill)
        ih, iw = arr.shape[:2]
    top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
    return arr[top : top + h, left : left + w]


def _keep_ratio_size(ih: int, iw: int, th: int, tw: int, longest: float) -> tuple[int, int]:
    """open_clip ``ResizeKeepRatio.get_params`` without random scaling."""
    rh, rw = ih / th, iw / tw
    ratio = max(rh, rw) * longest + min(rh, rw) * (1.0 - longest)
    return round(ih / ratio), round(iw / ratio)


def clip_geometry(
    img,
    size: int | Sequence[int],
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    fill_color: int = 0,
) -> np.ndarray:
    """The resize/crop part of open_clip's eval transform on a PIL RGB image.

    ``normalize_chw(clip_geometry(img, ...).transpose(1, 2, 0), mean, std, 255)`` equals
    ``open_clip.image_transform(..., is_train=False)(img)``.

    Returns
    -------
    numpy.ndarray
        uint8 ``(3, H, W)`` pixels; :func:`normalize_chw` (or the same arithmetic on the model's
        device) turns them into what ``open_clip.image_transform`` returns.
    """
    th, tw = _pair(size)
    interp = interpolation if interpolation in ("bicubic", "bilinear") else "bicubic"
    if resize_mode == "squash":
        arr = np.asarray(_resize(img, th, tw, interp))
    elif resize_mode == "longest":
        nh, nw = _keep_ratio_size(img.height, img.width, th, tw, 1.0)
        arr = _crop_or_pad(np.asarray(_resize(img, nh, nw, interp)), th, tw, fill_color)
    elif resize_mode == "shortest":
        if th == tw:  # torchvision Resize(int): shorter edge -> size, longer edge truncated
            ih, iw = img.height, img.width
            short, long = (iw, ih) if iw <= ih else (ih, iw)
            new_long = int(th * long / short)
            nh, nw = (new_long, th) if iw <= ih else (th, new_long)
        else:  # open_clip's ResizeKeepRatio here ignores `interpolation` (always bicubic): keep parity
            nh, nw = _keep_ratio_size(img.height, img.width, th, tw, 0.0)
            interp = "bicubic"
        arr = _crop_or_pad(np.asarray(_resize(img, nh, nw, interp)), th, tw, 0)
    else:
        raise ValueError(f"unknown resize_mode {resize_mode!r}; valid: shortest, longest, squash")
    return np.ascontiguousarray(np.asarray(arr, dtype=np.uint8).transpose(2, 0, 1))


def normalize_chw(arr: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float) -> np.ndarray:
    """uint8 HWC -> float32 CHW ``(x / scale - mean) / std``."""
    x = np.asarray(arr, dtype=np.float32)
    if scale != 1.0:
        x = x / np.float32(scale)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def longest_side_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """SAM ``ResizeLongestSide.get_preprocess_shape``."""
    scale = target * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_preprocess(img, img_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> np.ndarray:
    """SAM: resize longest side to ``img_size`` (bilinear), normalize (0-255 scale), zero-pad bottom/right.

    Returns
    -------
    numpy.ndarray
        float32 ``(3, img_size, img_size)``.
    """
    nh, nw = longest_side_shape(img.height, img.width, img_size)
    x = normalize_chw(np.asarray(_resize(img, nh, nw, "bilinear")), pixel_mean, pixel_std, scale=1.0)
    out = np.zeros((3, img_size, img_size), np.float32)
    out[:, :nh, :nw] = x
    return out
