"""Offline lookups in the Hugging Face cache and local weight directories (never downloads)."""

from __future__ import annotations

import os
from pathlib import Path


def hf_cache_dir(cache_dir: str | None = None) -> str:
    """Effective HF hub cache: ``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``.

    Read from the environment at call time (``huggingface_hub.constants``
    freezes it at import time).
    """
    if cache_dir:
        return os.path.expanduser(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def repo_cache_path(repo_id: str, cache_dir: str | None = None) -> str:
    """Folder the HF cache uses for model ``repo_id`` (``models--org--name``)."""
    return os.path.join(hf_cache_dir(cache_dir), "models--" + repo_id.replace("/", "--"))


def cached_file(repo_id: str, filename: str, cache_dir: str | None = None) -> str | None:
    """Path of ``filename`` of ``repo_id`` at revision ``main`` in the HF cache, or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir(cache_dir))
    except Exception:  # noqa: BLE001 - invalid repo ids etc. mean "not cached"
        return None
    return hit if isinstance(hit, str) else None


def snapshot_dir(repo_id: str, marker: str, cache_dir: str | None = None) -> str | None:
    """Snapshot directory holding ``marker`` (e.g. ``config.json``) for ``repo_id``, or ``None``."""
    hit = cached_file(repo_id, marker, cache_dir)
    return os.path.dirname(hit) if hit else None


_PREFERRED = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)


def find_checkpoint_in_dir(path: str | Path) -> str | None:
    """The checkpoint open_clip's ``local-dir:`` loader picks (same preference order)."""
    p = Path(path)
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")) + list(p.glob("*.pth")))
    if not files:
        return None
    files.sort(key=lambda x: x.suffix == ".safetensors", reverse=True)
    preferred = [f for f in files if f.name in _PREFERRED]
    if preferred:
        return str(min(preferred, key=lambda f: _PREFERRED.index(f.name)))
    return str(files[0])


def hf_weight_files(model_dir: str | Path) -> list[str]:
    """Weight files of a transformers/sentence-transformers directory (sharded or not)."""
    d = Path(model_dir)
    for pattern in ("model*.safetensors", "pytorch_model*.bin", "*.safetensors", "*.bin"):
        found = sorted(str(f) for f in d.glob(pattern) if f.is_file() and not f.name.startswith("training_args"))
        if found:
            return found
    return []
