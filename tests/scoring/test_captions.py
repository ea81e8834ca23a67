"""Caption metrics (``scoring/_captions.py``): BLEU and ROUGE-L computed by hand."""

import numpy as np
import pytest


def test_caption_metrics_hand_computed():
    from brainstore.scoring import caption_metrics

    out = caption_metrics(["a cat on a mat"], ["a cat is on the mat"])
    # unigram precision 4/5 (the second 'a' is clipped), brevity penalty exp(1 - 6/5)
    assert out["bleu1"] == pytest.approx(100 * np.exp(-0.2) * 0.8, rel=1e-6)
    # LCS a-cat-on-mat = 4: P = 4/5, R = 4/6
    assert out["rougeL"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6), rel=1e-6)
    # case-insensitive (COCO caption evaluation): a capital first word is the same word
    assert caption_metrics(["A Cat on a MAT"], ["a cat is on the mat"]) == pytest.approx(out)
    same = caption_metrics(["the dog runs in the park"], ["the dog runs in the park"])
    assert same["bleu4"] == pytest.approx(100.0) and same["rougeL"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one reference per predicted caption"):
        caption_metrics(["a"], ["a", "b"])
