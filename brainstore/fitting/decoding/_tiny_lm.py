"""A tiny local causal LM for the captioner's tests and demo (:func:`make_tiny_lm`): a small GPT-2 and a
word-level tokenizer trained on the given captions, random (recorded as such in its config.json, see
:mod:`._captioner`) or trained for a few steps; nothing is downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._captioner import (RANDOM_INIT_KEY, TRAINED_ON_KEY, _check_captions, _next_token_loss,
                         _quiet_transformers)

__all__ = ["make_tiny_lm", "TINY_SPECIAL_TOKENS"]

#: Special tokens of :func:`make_tiny_lm`'s tokenizer, in id order.
TINY_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def make_tiny_lm(directory: str | Path, captions: Sequence[str], *, trained_steps: int = 0, seed: int = 0,
                 n_layer: int = 2, n_head: int = 2, n_embd: int = 64, n_positions: int = 64,
                 batch_size: int = 32, lr: float = 3e-3, overwrite: bool = False) -> Path:
    """Write a tiny GPT-2 and a word-level tokenizer trained on ``captions`` to ``directory``.

    The tokenizer (``tokenizers`` WordLevel: NFKC + lowercase, whitespace/punctuation split,
    special tokens ``<pad> <bos> <eos> <unk>``) is saved as a ``PreTrainedTokenizerFast``, so
    ``AutoTokenizer.from_pretrained(directory)`` loads it. With ``trained_steps=0`` the LM keeps its
    random initialization and config.json says ``"brainstore_random_init": true``; otherwise it is
    trained as a language model on ``[<bos>] caption [<eos>]`` for ``trained_steps`` AdamW steps and
    config.json records ``brainstore_trained_on`` (the number of captions) and
    ``brainstore_trained_steps``. Returns the directory.
    """
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    captions = _check_captions(captions)
    if isinstance(trained_steps, bool) or not isinstance(trained_steps, int) or trained_steps < 0:
        raise ValueError(f"trained_steps must be an int >= 0; got {trained_steps!r}")
    d = Path(directory).expanduser()
    if d.exists() and (not d.is_dir() or (any(d.iterdir()) and not overwrite)):
        raise ValueError(f"{d} exists and is {'not a folder' if not d.is_dir() else 'not empty'}; choose a new "
                         "directory" + ("" if not d.is_dir() else " or pass overwrite=True"))
    bt = Tokenizer(models.WordLevel(unk_token="<unk>"))
    bt.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    bt.pre_tokenizer = pre_tokenizers.Whitespace()
    bt.train_from_iterator(captions, trainers.WordLevelTrainer(special_tokens=list(TINY_SPECIAL_TOKENS)))
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=bt, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                     unk_token="<unk>", model_max_length=n_positions)
    cfg = tf.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    setattr(cfg, RANDOM_INIT_KEY, trained_steps == 0)
    setattr(cfg, TRAINED_ON_KEY, len(captions) if trained_steps else 0)
    cfg.brainstore_trained_steps = trained_steps
    cfg.brainstore_tokenizer_trained_on = len(captions)
    with torch.random.fork_rng(devices=[]):  # seeded init and dropout, the caller's RNG untouched
        torch.manual_seed(seed)
        model = tf.GPT2LMHeadModel(cfg)
        if trained_steps:
            _train_lm(model, tok, captions, trained_steps, n_positions, batch_size, lr, seed)
    model.eval()
    d.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.save_pretrained(d)
        tok.save_pretrained(d)
    return d


def _train_lm(model: Any, tok: Any, captions: list[str], steps: int, n_positions: int, batch_size: int,
              lr: float, seed: int) -> None:
    """Language-model training of :func:`make_tiny_lm`'s GPT-2 on ``<bos> caption <eos>``."""
    import torch

    bos, eos = tok.bos_token_id, tok.eos_token_id
    toks = [t[:(n_positions - 3) // 2] for t in tok(captions, add_special_tokens=False)["input_ids"]]
    seqs = [[bos] + t + [eos] for t in toks] + [[bos] + t + [eos] + t + [eos] for t in toks]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    attn = (torch.arange(T)[None] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    labels = ids.masked_fill(attn == 0, -100)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        b = torch.randint(len(seqs), (min(batch_size, len(toks)),), generator=gen)
        loss = _next_token_loss(model(input_ids=ids[b], attention_mask=attn[b], use_cache=False).logits, labels[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
