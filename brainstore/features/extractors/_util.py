"""Small helpers shared by the extractors: version names, weight folders, hub offline mode, image checks
(no torch imports; the option parsers are in :mod:`._spec`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator


# ----------------------------------------------------------------------------- helpers
def slugify(*parts: Any, max_len: int = 120) -> str:
    """Filesystem/table-safe name: lowercase ``[a-z0-9._-]`` joined by ``-``.

    Names longer than ``max_len`` are truncated and suffixed with a short hash
    of the full name, so distinct settings never collide.
    """
    raw = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    s = re.sub(r"[^a-z0-9.]+", "-", raw.lower()).strip("-.")
    s = re.sub(r"-{2,}", "-", s)
    if len(s) > max_len:
        h = hashlib.sha1(s.encode()).hexdigest()[:10]
        s = s[: max_len - 11].rstrip("-.") + "-" + h
    return s


def weights_dir() -> Path:
    """Directory searched for local weights: ``$BRAINSTORE_WEIGHTS_DIR`` or ``~/.cache/brainstore/weights``."""
    env = os.environ.get("BRAINSTORE_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "brainstore" / "weights"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Force Hugging Face hub offline mode so no network request is ever attempted."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    old_env = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    consts = None
    try:
        import huggingface_hub.constants as consts  # light import, no torch

        old_const = consts.HF_HUB_OFFLINE
        consts.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - huggingface_hub always installed here
        consts = None
    try:
        yield
    finally:
        if consts is not None:
            consts.HF_HUB_OFFLINE = old_const
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_pil_image(item: Any, who: str) -> Any:
    """Return ``item`` converted to RGB, or raise ``TypeError`` if it is not a PIL image."""
    from PIL import Image

    if not isinstance(item, Image.Image):
        raise TypeError(f"{who}: expected a PIL.Image.Image, got {type(item).__name__}")
    return item if item.mode == "RGB" else item.convert("RGB")
