"""Caption generation from (decoded) embeddings: a ClipCap-style prefix for a frozen local causal LM.

An embedding (a caption's sentence embedding, a CLIP embedding, or one decoded from fMRI
responses by :mod:`._ridge_decoders` or :mod:`._adaptor`) is L2-normalized (decoded and true
embeddings live at different scales; only the direction is used) and mapped by ClipCap's MLP mapping (``d -> hidden -> prefix_len
* n_embd``, tanh between) to ``prefix_len`` input embeddings of a causal language model, which
continues that prefix with a caption (greedy decoding, up to EOS).

The LM is any ``transformers`` ``AutoModelForCausalLM`` saved with its tokenizer in a local
directory (``save_pretrained``; ``local_files_only``, nothing is downloaded). It stays frozen
(eval mode, ``requires_grad=False``): only the projection is trained, by teacher forcing on
(embedding, caption) pairs. The input is ``[prefix ; caption tokens + EOS]`` and the loss is the
cross-entropy on the caption tokens and EOS (prefix and padding positions are labelled -100).

Registered as ``kind: captioner`` (:meth:`Captioner.save` / :meth:`Captioner.load`): the
projection's tensors (``proj.*``) only, and JSON meta naming the LM directory, its config name,
the sha256 of its weights (loading refuses an LM whose weights changed), prefix length, dims and
``lm_pretrained``.

Random weights never pass for a pretrained LM: a directory whose ``config.json`` holds
``"brainstore_random_init": true`` (written by :func:`make_tiny_lm` with ``trained_steps=0``) has
an untrained LM; it is recorded as ``lm_pretrained: false`` and said in one stderr line by
:func:`train_captioner` and :meth:`Captioner.load`. For any other directory the weights are read
from files, which cannot show whether they were ever trained (``lm_weights_note`` says so).

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import ModelRecord, ModelRegistry, RegistryError, register_loader

__all__ = ["CAPTIONER_KIND", "RANDOM_INIT_KEY", "TRAINED_ON_KEY", "Captioner", "train_captioner", "lm_info"]

#: ``kind`` of registered captioners.
CAPTIONER_KIND = "captioner"
#: config.json key marking an LM directory whose weights are random (``true``).
RANDOM_INIT_KEY = "brainstore_random_init"
#: config.json key: number of captions :func:`make_tiny_lm` trained the LM on (0: not trained).
TRAINED_ON_KEY = "brainstore_trained_on"
_PROJ = "proj."


def _detokenize(text: str, tokenizer: Any) -> str:
    """Undo the spaces a decoder-less (word-level) tokenizer puts around punctuation: ``"hat ."`` ->
    ``"hat."``, ``"' cafe '"`` -> ``"'cafe'"``; text from tokenizers with a decoder is left as is."""
    import re

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.decoder is not None:
        return text
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)
    return re.sub(r"(['\"])\s+([^'\"]*?)\s+\1", r"\1\2\1", text)


# ---------------------------------------------------------------------------------------------- inputs
def _check_embeddings(embeddings: Any, n: int | None = None, what: str = "embeddings") -> np.ndarray:
    """(n, d) float32, finite, non-zero rows; one-line ValueErrors naming the shape otherwise."""
    try:
        E = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError):
        shape = getattr(embeddings, "shape", None)
        raise ValueError(f"{what} must be a numeric 2-D array (n, dim); got {type(embeddings).__name__}"
                         + (f" of shape {tuple(shape)}" if shape is not None else "")) from None
    if E.ndim != 2 or E.shape[0] == 0 or E.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (n, dim); got shape {E.shape}")
    if n is not None and E.shape[0] != n:
        raise ValueError(f"{what} of shape {E.shape} has {E.shape[0]} rows but {n} captions were given; "
                         "need one caption per embedding row")
    bad = np.flatnonzero(~np.isfinite(E).all(axis=1))
    if bad.size:
        raise ValueError(f"{what} of shape {E.shape} hold NaN or inf values in {bad.size} row(s) (first: row "
                         f"{bad[0]}); give finite embeddings")
    zero = np.flatnonzero(np.linalg.norm(E, axis=1) == 0)
    if zero.size:
        raise ValueError(f"{what} of shape {E.shape} have {zero.size} all-zero row(s) (first: row {zero[0]}); "
                         "they have no direction to L2-normalize")
    return (E / np.linalg.norm(E, axis=1, keepdims=True)).astype(np.float32)


def _check_captions(captions: Any) -> list[str]:
    if isinstance(captions, (str, bytes)) or not hasattr(captions, "__iter__"):
        raise ValueError(f"captions must be a list of strings; got {type(captions).__name__}")
    captions = [str(c) if isinstance(c, np.str_) else c for c in captions]
    bad = [i for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"captions must be non-empty strings; {len(bad)} are not (first: item {bad[0]}: "
                         f"{captions[bad[0]]!r})")
    if not captions:
        raise ValueError("captions is empty; need at least one (embedding, caption) pair")
    return captions


def _positive(**kw: Any) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"{k} must be a positive number; got {v!r}")


# ---------------------------------------------------------------------------------------------- the LM
def _missing_lm(path: Path, why: str, fix: str):
    from ...features import WeightsNotFoundError

    return WeightsNotFoundError(f"caption LM {why}: {path}; {fix}", [str(path)])


_LM_FIX = ("pass lm=<a local directory written by save_pretrained() holding a causal LM and its tokenizer> "
           "(nothing is downloaded; make_tiny_lm() writes a tiny one)")


def lm_info(lm: str | Path) -> dict[str, Any]:
    """What :func:`train_captioner` records about an LM directory (reads config.json; no torch).

    Returns
    -------
    dict
        ``lm_dir`` (absolute), ``lm_name`` (config ``_name_or_path``, else the folder name),
        ``lm_model_type``, ``lm_architectures``, ``lm_weights_sha256`` (the weight files),
        ``lm_pretrained`` (False when config.json has ``"brainstore_random_init": true``),
        ``lm_trained_on`` (captions :func:`make_tiny_lm` trained it on, else None) and ``lm_weights_note``.

    Raises
    ------
    WeightsNotFoundError
        The directory, its config.json or its weight files are missing (the message names the path).
    """
    from ..._provenance import sha256_files
    from ...features import hf_weight_files

    p = Path(lm).expanduser()
    if not p.is_dir():
        raise _missing_lm(p, "directory not found", _LM_FIX)
    if not (p / "config.json").is_file():
        raise _missing_lm(p / "config.json", "directory has no config.json", _LM_FIX)
    weights = hf_weight_files(p)
    if not weights:
        raise _missing_lm(p, "directory has no weight files (model*.safetensors / pytorch_model*.bin)", _LM_FIX)
    try:
        cfg = json.loads((p / "config.json").read_text())
    except ValueError as e:
        raise ValueError(f"caption LM config {p / 'config.json'} is not valid JSON ({e})") from None
    random = bool(cfg.get(RANDOM_INIT_KEY, False))
    trained_on = cfg.get(TRAINED_ON_KEY) or None
    if random:
        note = f"config.json has {RANDOM_INIT_KEY}: true: RANDOM weights, a pipeline check, not a language model"
    elif trained_on:
        note = (f"a toy LM trained by make_tiny_lm on {trained_on} captions for "
                f"{cfg.get('brainstore_trained_steps')} steps, not a pretrained model")
    else:
        note = "weights read from files; files cannot show whether they were ever trained"
    return {"lm_dir": str(p.resolve()), "lm_name": str(cfg.get("_name_or_path") or cfg.get("name_or_path") or p.name),
            "lm_model_type": cfg.get("model_type"), "lm_architectures": cfg.get("architectures"),
            "lm_weights_sha256": sha256_files(weights), "lm_pretrained": not random, "lm_trained_on": trained_on,
            "lm_weights_note": note}


def _announce_random(info: dict) -> None:
    """The one stderr line for an LM with random weights (house rule: said on screen, not as a warning)."""
    if not info["lm_pretrained"]:
        print(f"brainstore note: caption LM {info['lm_dir']} has RANDOM weights ({RANDOM_INIT_KEY}: true in its "
              "config.json): its captions check the pipeline, not a pretrained model; recorded as "
              "lm_pretrained: false", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading/saving bars and info logs off for the duration (restored after)."""
    import transformers as tf

    log = tf.utils.logging
    bar, level = log.is_progress_bar_enabled(), log.get_verbosity()
    log.disable_progress_bar()
    log.set_verbosity_error()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bar:
            log.enable_progress_bar()


def _default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_lm(lm_dir: str, device: str) -> tuple[Any, Any]:
    """The frozen LM (float32, eval, no gradients) and its tokenizer, from local files only."""
    import torch
    import transformers as tf

    from ...features import hub_offline

    with hub_offline(), _quiet_transformers():
        try:
            model, info = tf.AutoModelForCausalLM.from_pretrained(lm_dir, local_files_only=True, dtype=torch.float32,
                                                                  output_loading_info=True)
            tok = tf.AutoTokenizer.from_pretrained(lm_dir, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"caption LM {lm_dir} could not be loaded as a transformers causal LM with its "
                             f"tokenizer ({msg}); {_LM_FIX}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"caption LM {lm_dir}: weights missing for {missing[:5]} ({len(missing)} keys); refusing "
                         "to use randomly initialised parameters")
    if tok.eos_token_id is None and getattr(model.config, "eos_token_id", None) is None:
        raise ValueError(f"caption LM {lm_dir}: neither its tokenizer nor its config names an EOS token; "
                         "captions need one to end")
    model.requires_grad_(False)
    return model.eval().to(device), tok


def _eos_id(tok: Any, lm: Any) -> int:
    eos = tok.eos_token_id if tok.eos_token_id is not None else lm.config.eos_token_id
    return int(eos[0] if isinstance(eos, (list, tuple)) else eos)


def _max_positions(lm: Any) -> int | None:
    n = getattr(lm.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def _n_embd(lm: Any) -> int:
    return int(lm.get_input_embeddings().weight.shape[1])


def _next_token_loss(logits: Any, labels: Any) -> Any:
    """Mean cross-entropy of ``logits[:, i]`` against ``labels[:, i + 1]`` over labels != -100."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def _projection(d: int, hidden: int, out: int) -> Any:
    """ClipCap's MLP mapping: Linear(d, hidden) -> tanh -> Linear(hidden, out)."""
    from torch import nn

    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, out))


# ---------------------------------------------------------------------------------------------- model
class Captioner:
    """A trained prefix projection on a frozen causal LM: embeddings -> captions.

    Made by :func:`train_captioner` or :meth:`load`; saved with :meth:`save` (or
    ``registry.save(name, cap.tensors(), cap.meta())``).
    """

    def __init__(self, projection: Any, lm: Any, tokenizer: Any, meta: dict, device: str = "cpu"):
        self.projection = projection.to(device).eval()
        self.lm = lm
        self.tokenizer = tokenizer
        self.device = device
        self._meta = dict(meta)

    def __repr__(self) -> str:
        m = self._meta
        return (f"Captioner(dim={m['embed_dim']}, prefix_len={m['prefix_len']}, lm={m['lm_dir']!r}, "
                f"lm_pretrained={m['lm_pretrained']})")

    @property
    def embed_dim(self) -> int:
        return int(self._meta["embed_dim"])

    @property
    def prefix_len(self) -> int:
        return int(self._meta["prefix_len"])

    def meta(self) -> dict:
        """The JSON description saved in the registry (``kind: captioner``)."""
        return json.loads(json.dumps(self._meta))

    def tensors(self) -> dict[str, np.ndarray]:
        """The projection's weights (``proj.0.weight`` ...), float32; the LM is not copied."""
        return {_PROJ + k: v.detach().cpu().numpy().astype(np.float32)
                for k, v in self.projection.state_dict().items()}

    def save(self, registry: ModelRegistry | str | Path, name: str, extra_meta: dict | None = None) -> ModelRecord:
        """Register the captioner as ``name`` (``extra_meta``, e.g. the embedding table, is merged into its meta)."""
        reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
        return reg.save(name, self.tensors(), {**(extra_meta or {}), **self.meta()})

    def prefix(self, embeddings: np.ndarray) -> Any:
        """(n, prefix_len, n_embd) torch tensor: the LM input embeddings an embedding is mapped to."""
        return self._project(self._check(embeddings))

    def _check(self, embeddings: Any) -> np.ndarray:
        E = _check_embeddings(embeddings)
        if E.shape[1] != self.embed_dim:
            raise ValueError(f"captioner takes {self.embed_dim}-dimensional embeddings (expected shape "
                             f"(n, {self.embed_dim})); got shape {E.shape}")
        return E

    def _project(self, E: np.ndarray) -> Any:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(E)).to(self.device)
        return self.projection(x).view(len(E), self.prefix_len, -1)

    def predict(self, embeddings: np.ndarray, **kwargs) -> list[str]:
        """The registry's convention for :meth:`generate`: ``(n, dim)`` decoded embeddings -> ``n`` captions."""
        return self.generate(embeddings, **kwargs)

    def generate(self, embeddings: np.ndarray, max_new_tokens: int = 20, batch_size: int = 64) -> list[str]:
        """Greedy captions, one per embedding row (each stops at the LM's EOS or after ``max_new_tokens``)."""
        import torch

        _positive(max_new_tokens=max_new_tokens, batch_size=batch_size)
        E = self._check(embeddings)
        n_pos = _max_positions(self.lm)
        if n_pos is not None and self.prefix_len + max_new_tokens > n_pos:
            raise ValueError(f"prefix_len {self.prefix_len} + max_new_tokens {max_new_tokens} exceeds the LM's "
                             f"{n_pos} positions; lower max_new_tokens to at most {n_pos - self.prefix_len}")
        eos = _eos_id(self.tokenizer, self.lm)
        out: list[str] = []
        with torch.inference_mode():
            for s in range(0, len(E), batch_size):
                x = self._project(E[s:s + batch_size])
                res = self.lm(inputs_embeds=x, use_cache=True)
                past, logits = res.past_key_values, res.logits[:, -1]
                done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
                steps = []
                for _ in range(max_new_tokens):
                    nxt = torch.where(done, torch.full_like(done, eos, dtype=torch.long), logits.argmax(-1))
                    steps.append(nxt)
                    done |= nxt == eos
                    if bool(done.all()) or len(steps) == max_new_tokens:
                        break
                    res = self.lm(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
                    past, logits = res.past_key_values, res.logits[:, -1]
                ids = torch.stack(steps, 1).cpu().tolist()
                for row in ids:
                    row = row[:row.index(eos)] if eos in row else row
                    out.append(_detokenize(self.tokenizer.decode(row, skip_special_tokens=True).strip(),
                                           self.tokenizer))
        return out

    @classmethod
    def load(cls, registry: ModelRegistry | str | Path, name: str, *, lm: str | Path | None = None,
             device: str | None = None) -> "Captioner":
        """Rebuild a registered captioner, reloading its LM from the recorded directory (or ``lm``, if it moved).

        Raises
        ------
        WeightsNotFoundError
            The LM directory is gone (named, with the fix).
        RegistryError
            Not a captioner, or the LM's weights changed since training (sha256).
        """
        import torch

        reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry, create=False)
        state, rec = reg.load_arrays(name)
        meta = rec.meta
        if meta.get("kind") != CAPTIONER_KIND:
            raise RegistryError(f"model {name!r} is a {meta.get('kind')!r} model, not a captioner")
        where = Path(lm) if lm is not None else Path(meta["lm_dir"])
        if not where.is_dir():
            raise _missing_lm(where, f"directory of captioner {name!r} is gone",
                              f"put the LM it was trained on ({meta.get('lm_name')}, weights sha256 "
                              f"{str(meta.get('lm_weights_sha256'))[:12]}...) back there, pass lm=<its new "
                              "location> to Captioner.load, or retrain with train_captioner(..., lm=<a directory>)")
        info = lm_info(where)
        if info["lm_weights_sha256"] != meta.get("lm_weights_sha256"):
            raise RegistryError(
                f"captioner {name!r}: the LM in {info['lm_dir']} is not the one it was trained on (weights sha256 "
                f"{info['lm_weights_sha256'][:12]}..., model.json records {str(meta.get('lm_weights_sha256'))[:12]}...); "
                "restore that LM or retrain the captioner on this one")
        _announce_random(info)
        device = _default_device(device)
        model, tok = _load_lm(info["lm_dir"], device)
        proj = _projection(int(meta["embed_dim"]), int(meta["hidden"]), int(meta["prefix_len"]) * int(meta["n_embd"]))
        proj.load_state_dict({k[len(_PROJ):]: torch.from_numpy(np.ascontiguousarray(v))
                              for k, v in state.items() if k.startswith(_PROJ)})
        return cls(proj, model, tok, {**meta, "lm_dir": info["lm_dir"]}, device)


# ---------------------------------------------------------------------------------------------- training
def train_captioner(embeddings: np.ndarray, captions: Sequence[str], *, lm: str | Path, prefix_len: int = 10,
                    hidden: int | None = None, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
                    max_tokens: int = 32, seed: int = 0, device: str | None = None,
                    progress: bool = True) -> Captioner:
    """Train a prefix projection from ``embeddings`` to ``captions`` on the frozen LM in directory ``lm``.

    Parameters
    ----------
    embeddings : (n, d) array
        One embedding per caption (L2-normalized here).
    captions : list of str
        The target captions (tokenized without the tokenizer's special tokens, cut to ``max_tokens``
        tokens, then EOS).
    lm : path
        A local directory with a transformers causal LM and its tokenizer (``save_pretrained``).
    prefix_len : int
        Number of LM input embeddings the projection makes.
    hidden : int, optional
        Hidden width of the MLP mapping; ClipCap's ``prefix_len * n_embd // 2`` by default.
    epochs, batch_size, lr, seed
        AdamW on the projection only, batches reshuffled every epoch (seeded).
    device : str, optional
        ``cuda`` when available, else ``cpu``.
    progress : bool
        A tqdm bar over epochs.

    Returns
    -------
    Captioner
        Its :meth:`~Captioner.meta` records the LM (``lm_dir``, ``lm_name``, weights sha256,
        ``lm_pretrained``), the dims, the settings and the loss per epoch.
    """
    captions = _check_captions(captions)
    E = _check_embeddings(embeddings, len(captions))
    _positive(prefix_len=prefix_len, epochs=epochs, batch_size=batch_size, lr=lr, max_tokens=max_tokens)
    if hidden is not None:
        _positive(hidden=hidden)
    info = lm_info(lm)
    _announce_random(info)

    import torch

    from ..._provenance import package_versions

    t0 = time.time()
    device = _default_device(device)
    model, tok = _load_lm(info["lm_dir"], device)
    eos, n_embd = _eos_id(tok, model), _n_embd(model)
    tokens, mask, labels = _caption_tokens(tok, model, captions, max_tokens, eos, prefix_len)
    hidden = int(hidden or max(1, prefix_len * n_embd // 2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = _projection(E.shape[1], hidden, prefix_len * n_embd).to(device)
    history = _train_prefix(proj, model, torch.from_numpy(E), tokens, mask, labels, prefix_len=prefix_len,
                            n_embd=n_embd, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                            progress=progress)
    meta = {
        "kind": CAPTIONER_KIND, "method": "clipcap-mlp-prefix", **info,
        "prefix_len": int(prefix_len), "embed_dim": int(E.shape[1]), "hidden": hidden, "n_embd": n_embd,
        "embedding_normalization": "l2 (each row divided by its norm before the projection)",
        "lm_frozen": True, "eos_token_id": eos,
        "training": {"n_captions": len(captions), "epochs": int(epochs), "batch_size": int(batch_size),
                     "lr": float(lr), "optimizer": "AdamW", "max_tokens": int(max_tokens), "seed": int(seed),
                     "loss": "cross-entropy on caption tokens + EOS (teacher forcing)",
                     "loss_per_epoch": history, "final_loss": history[-1], "device": device,
                     "seconds": round(time.time() - t0, 3)},
        "library_versions": package_versions("torch", "transformers", "tokenizers"),
    }
    return Captioner(proj, model, tok, meta, device)


def _caption_tokens(tok: Any, model: Any, captions: Sequence[str], max_tokens: int, eos: int, prefix_len: int):
    """The captions as token ids (cut to ``max_tokens``, then EOS; padded with EOS), their attention mask and
    their labels (-100 on padding): three ``(n, longest)`` long tensors."""
    import torch

    ids = [t[:max_tokens] + [eos] for t in tok(captions, add_special_tokens=False)["input_ids"]]
    longest = max(map(len, ids))
    n_pos = _max_positions(model)
    if n_pos is not None and prefix_len + longest > n_pos:
        raise ValueError(f"prefix_len {prefix_len} + the longest caption ({longest} tokens with EOS) exceeds the "
                         f"LM's {n_pos} positions; lower prefix_len or max_tokens")
    tokens = torch.full((len(ids), longest), eos, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, t in enumerate(ids):
        tokens[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = 1
    return tokens, mask, tokens.masked_fill(mask == 0, -100)


def _train_prefix(proj: Any, model: Any, X: Any, tokens: Any, mask: Any, labels: Any, *, prefix_len: int,
                  n_embd: int, epochs: int, batch_size: int, lr: float, seed: int, device: str,
                  progress: bool) -> list[float]:
    """Teacher-forced AdamW epochs of the projection only (the LM frozen), batches reshuffled every epoch
    (seeded); the mean loss per caption token of each epoch."""
    import torch
    from tqdm.auto import tqdm

    lengths = mask.sum(1)
    opt = torch.optim.AdamW(proj.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    wte = model.get_input_embeddings()
    history: list[float] = []
    bar = tqdm(range(epochs), desc="train captioner (epochs)", unit="epoch", disable=not progress)
    proj.train()
    for _ in bar:
        total, count = 0.0, 0
        for b in torch.randperm(len(tokens), generator=gen).split(batch_size):
            T = int(lengths[b].max())
            tk, mk, lb = tokens[b, :T].to(device), mask[b, :T].to(device), labels[b, :T].to(device)
            pre = proj(X[b].to(device)).view(len(b), prefix_len, n_embd)
            with torch.no_grad():
                emb = wte(tk)
            ones = torch.ones((len(b), prefix_len), dtype=mk.dtype, device=device)
            logits = model(inputs_embeds=torch.cat([pre, emb], 1), attention_mask=torch.cat([ones, mk], 1),
                           use_cache=False).logits
            loss = _next_token_loss(logits, torch.cat([torch.full_like(ones, -100), lb], 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            k = int(mk.sum())
            total, count = total + float(loss.detach()) * k, count + k
        history.append(total / count)
        bar.set_postfix(loss=f"{history[-1]:.3f}")
    bar.close()
    proj.eval()
    return history


@register_loader(CAPTIONER_KIND)
def _load_captioner(reg: ModelRegistry, name: str, store) -> Captioner:
    return Captioner.load(reg, name)
