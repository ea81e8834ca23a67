"""Caption metrics of decoded captions against the true ones: BLEU-1..4 (sacrebleu) and ROUGE-L (rouge-score).

BLEU-n is sacrebleu's corpus BLEU with ``max_ngram_order=n`` (brevity penalty included, default
13a tokenization, case-insensitive as the COCO caption evaluation), on a 0-100 scale as sacrebleu
reports it; ROUGE-L (case-insensitive too) is the mean over items of the
longest-common-subsequence F-measure (with stemming), on a 0-1 scale.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["caption_metrics"]


def caption_metrics(predicted: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU-1..4 and ROUGE-L of ``predicted[i]`` against ``references[i]``.

    Returns
    -------
    dict
        ``bleu1`` ... ``bleu4`` (0-100) and ``rougeL`` (0-1).
    """
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    predicted, references = list(predicted), list(references)
    if len(predicted) != len(references) or not predicted:
        raise ValueError(f"need one reference per predicted caption (got {len(predicted)} and {len(references)})")
    bad = [i for i, c in enumerate(predicted + references) if not isinstance(c, str)]
    if bad:
        raise ValueError(f"captions must be strings; item {bad[0] % len(predicted)} is not")
    import logging

    log = logging.getLogger("sacrebleu")  # its "forgot to detokenize?" notice on captions that end in " ."
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        out = {f"bleu{n}": float(BLEU(max_ngram_order=n, effective_order=True, lowercase=True)
                                 .corpus_score(predicted, [references]).score) for n in (1, 2, 3, 4)}
    finally:
        log.setLevel(level)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out["rougeL"] = float(sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predicted, references))
                          / len(predicted))
    return out
