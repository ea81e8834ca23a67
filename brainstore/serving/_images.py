"""Uploaded images, for the backend (``_backend.LocalBackend`` is an :class:`ImageEmbedding`): which tables an
encoding model's image must be embedded into, and the embedding itself by the extractor that made each table,
rebuilt from the table's recorded spec (the extraction pipeline's own preprocessing and forward)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._codec import ServingError
from ._outage import served

__all__ = ["ImageEmbedding"]

if TYPE_CHECKING:
    from ..features import FeatureStore


class ImageEmbedding:
    """The image methods of a backend; it provides ``_encoder``, ``_store``, ``_lock`` and ``_extractors``."""

    def _embed_image(self, fs: FeatureStore, tables: list[str], image: bytes) -> dict[str, np.ndarray]:
        out = self.embed_images(fs.uri, tables, [image])[0]
        if isinstance(out, ServingError):
            raise out
        return out

    def _image_metas(self, fs: FeatureStore, tables: list[str]) -> dict[str, dict]:
        metas = {t: fs.metadata(t) for t in tables}
        for t, meta in metas.items():
            if meta.get("modality") != "image" or not meta.get("spec"):
                raise ServingError(422, f"the model reads {t} ({meta.get('modality') or 'derived'} features), which "
                                        "an uploaded image cannot produce; send stimulus_id or embedding")
        return metas

    @served
    def image_tables(self, subject: str, model: str | None = None) -> dict:
        """Where an uploaded image must be embedded for ``model`` of ``subject``: ``{"model", "store", "tables"}``
        (422 when a table is not made from images); ``model`` names the version (``NAME@3``), so that the encode
        call that follows uses the same one."""
        model, _, em = self._encoder(subject, model)
        tables = sorted(em.table_names())
        self._image_metas(em.store, tables)
        return {"model": f"{model}@{em.record.version}", "store": em.store.uri, "tables": tables}

    @served
    def embed_images(self, store: str, tables: list[str], images: list[bytes]) -> list:
        """Each image's ``{table: (1, dim)}`` embeddings, one batched forward per table, by the extractor that
        made the table (rebuilt from its recorded spec: the extraction pipeline's preprocessing). A bad
        image gives its own :class:`ServingError` in its slot; the others are embedded."""
        from ..datasets import decode_image
        from ..features import get_extractor

        fs = self._store(store)
        metas = self._image_metas(fs, tables)  # every table checked before any image is read
        decoded, out = {}, [None] * len(images)
        for i, data in enumerate(images):
            try:
                decoded[i] = decode_image(data)
            except ValueError as e:
                out[i] = ServingError(413 if "limit" in str(e) else 400, f"image: {e}")
        for t, meta in metas.items():
            with self._lock:
                ext = self._extractors.get(t)
                if ext is None:
                    ext = get_extractor(meta["spec"])
                    if ext.version != meta.get("version"):
                        raise ServingError(503, f"the extractor {meta['spec']!r} now gives version {ext.version}, "
                                                f"the table {t} holds {meta.get('version')}; re-extract or serve "
                                                "another model")
                    ext.load("cpu", meta.get("dtype", "float32"))
                    self._extractors[t] = ext
            good = sorted(decoded)
            if not good:
                break
            E = ext.embed(np.stack([ext.preprocess(decoded[i]) for i in good]))
            for j, i in enumerate(good):
                out[i] = {**(out[i] or {}), t: E[j:j + 1]}
        return out
