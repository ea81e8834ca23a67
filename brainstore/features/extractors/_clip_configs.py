"""open_clip architecture configs (read without importing torch), pretrained tags and checkpoint helpers."""

from __future__ import annotations

import atexit
import copy
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_PP_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")

_EXTRA_CONFIGS: dict[str, dict] = {}
_REGISTERED_DIR: list[str] = []


def register_clip_config(name: str, cfg: dict) -> None:
    """Make architecture ``name`` known to the ``clip`` extractor (and to open_clip once imported)."""
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ValueError(f"open_clip config {name!r} needs embed_dim, vision_cfg and text_cfg")
    _EXTRA_CONFIGS[name] = copy.deepcopy(cfg)
    if "open_clip" in sys.modules:
        _ensure_open_clip_config(name, cfg)


def registered_clip_configs() -> dict[str, dict]:
    """The architectures :func:`register_clip_config` made known in this process.

    Returns
    -------
    dict
        ``{name: config}`` (copies), to register the same ones in another process (a Serve replica,
        a Ray worker) with :func:`register_clip_config`.
    """
    return copy.deepcopy(_EXTRA_CONFIGS)


def _builtin_config_dir() -> Path | None:
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs"


def clip_model_config(arch: str) -> dict | None:
    """open_clip model config for ``arch`` without importing torch (``None`` if unknown)."""
    arch = arch.replace("/", "-")
    if arch in _EXTRA_CONFIGS:
        return copy.deepcopy(_EXTRA_CONFIGS[arch])
    if "open_clip" in sys.modules:
        cfg = sys.modules["open_clip"].get_model_config(arch)
        if cfg is not None:
            return cfg
    d = _builtin_config_dir()
    if d is not None and (d / f"{arch}.json").is_file():
        return json.loads((d / f"{arch}.json").read_text())
    return None


def list_clip_archs() -> list[str]:
    """Known architecture names (open_clip built-ins plus registered ones)."""
    d = _builtin_config_dir()
    names = {p.stem for p in d.glob("*.json")} if d else set()
    return sorted(names | set(_EXTRA_CONFIGS))


def _ensure_open_clip_config(arch: str, cfg: dict) -> None:
    """Register ``cfg`` under ``arch`` inside open_clip (needed in Ray workers, too)."""
    import open_clip

    if open_clip.get_model_config(arch) is not None:
        return
    if not _REGISTERED_DIR:
        _REGISTERED_DIR.append(tempfile.mkdtemp(prefix="brainstore-open-clip-configs-"))
        # open_clip reads the file when it is added; the folder goes when the process exits
        atexit.register(shutil.rmtree, _REGISTERED_DIR[0], True)
    path = Path(_REGISTERED_DIR[0]) / f"{arch}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)


def _is_torchscript(path: str | None) -> bool:
    """OpenAI's original CLIP files are TorchScript archives (``torch.load(weights_only=True)`` refuses them)."""
    import zipfile

    if not path or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())


def _load_torchscript_weights(model: Any, path: str) -> None:
    """Copy the parameters of a TorchScript CLIP archive (OpenAI's format) into an open_clip model."""
    import torch

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        sd = torch.jit.load(path, map_location="cpu").state_dict()
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or k not in dict(model.named_buffers())}
    for k in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(k, None)
    model.load_state_dict(sd, strict=True)


def _tag_cfg(arch: str, tag: str) -> dict:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        raise ValueError(
            f"bad value for option 'pretrained' of extractor 'clip': {tag!r} is not an open_clip tag for "
            f"arch={arch!r}; available tags: {list_pretrained_tags_by_model(arch)}; "
            "or use checkpoint=/path/to/weights, pretrained=hf-hub:org/repo, a local directory, or pretrained=none"
        )
    return cfg
