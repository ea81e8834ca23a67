"""Caption generation from embeddings (ClipCap-style prefix on a frozen local causal LM).

The captions come from a small grammar ("a red circle above a blue square"); each caption's
embedding is a random linear image of its slot one-hots (which colour / shape / relation fills
each slot) plus noise, so it carries the caption's content but not its words. The LM is a tiny
GPT-2 trained on the training captions by ``make_tiny_lm``. Held-out captions are combinations
never seen in training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.slow

COLORS = ["red", "green", "blue", "yellow", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]
RELATIONS = ["above", "below", "left of", "right of"]
SLOTS = [COLORS, SHAPES, RELATIONS, COLORS, SHAPES]
N_TRAIN, N_TEST, DIM = 200, 40, 48


def _grammar(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` distinct captions and their (n, DIM) embeddings (slot one-hots -> random projection + noise)."""
    rng = np.random.default_rng(seed)
    combos: list[tuple[int, ...]] = []
    while len(combos) < n:
        c = tuple(int(rng.integers(len(s))) for s in SLOTS)
        if c not in combos:
            combos.append(c)
    captions = [f"a {COLORS[a]} {SHAPES[b]} {RELATIONS[r]} a {COLORS[c]} {SHAPES[d]}" for a, b, r, c, d in combos]
    offsets = np.cumsum([0] + [len(s) for s in SLOTS[:-1]])
    onehot = np.zeros((n, sum(len(s) for s in SLOTS)))
    for i, c in enumerate(combos):
        onehot[i, offsets + np.array(c)] = 1.0
    W = rng.normal(size=(onehot.shape[1], DIM))
    return captions, onehot @ W + 0.3 * rng.normal(size=(n, DIM))


@pytest.fixture(scope="module")
def torch_one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and immune to other processes' load
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    captions, E = _grammar(N_TRAIN + N_TEST, seed=0)
    return {"train": (captions[:N_TRAIN], E[:N_TRAIN]), "test": (captions[N_TRAIN:], E[N_TRAIN:])}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, data, torch_one_thread):
    from brainstore.fitting.decoding._tiny_lm import make_tiny_lm

    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny-gpt2", data["train"][0], trained_steps=300, seed=0)


@pytest.fixture(scope="module")
def trained(tiny_lm, data):
    """(captioner, the LM's parameters loaded independently before training)."""
    import transformers

    from brainstore.fitting.decoding._captioner import train_captioner

    before = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm, local_files_only=True).state_dict()
    captions, E = data["train"]
    cap = train_captioner(E, captions, lm=tiny_lm, prefix_len=8, epochs=20, batch_size=16, lr=3e-3, seed=0,
                          progress=False)
    return cap, before


def test_tiny_lm_directory(tiny_lm, data):
    """AutoTokenizer / AutoModelForCausalLM load it; the tokenizer was trained on the captions; config says trained."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_lm, local_files_only=True)
    words = {w for c in data["train"][0] for w in c.split()}
    assert set(tok.get_vocab()) == words | {"<pad>", "<bos>", "<eos>", "<unk>"}
    assert tok.decode(tok("a red star", add_special_tokens=False)["input_ids"]) == "a red star"
    cfg = json.loads((tiny_lm / "config.json").read_text())
    assert cfg["brainstore_random_init"] is False and cfg["brainstore_trained_on"] == N_TRAIN
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"]) == (2, 2, 64, 64)
    assert cfg["vocab_size"] == len(tok)


def test_generation_carries_the_embedding_content(trained, data, tiny_lm):
    import torch

    from brainstore.scoring import caption_metrics

    cap, before = trained
    truth, E = data["test"]
    gen = cap.generate(E)
    assert len(gen) == N_TEST and all(isinstance(g, str) for g in gen)
    own = caption_metrics(gen, truth)
    shuffled = caption_metrics(gen, truth[1:] + truth[:1])  # a derangement: nobody keeps their caption
    # the grammar shares "a" and the relations, so shuffled BLEU-1 is ~45; copying content lifts it far above
    assert own["bleu1"] > shuffled["bleu1"] + 25, (own, shuffled)
    assert own["rougeL"] > shuffled["rougeL"] + 0.25, (own, shuffled)
    # independent of the metric code: unseen combinations (1 in 3600 by chance) are reproduced word for word
    exact = np.mean([g == t for g, t in zip(gen, truth)])
    assert exact >= 0.4, list(zip(gen, truth))[:5]
    # decoded embeddings live at another scale: only the direction counts
    assert cap.generate(0.1 * E[:8]) == gen[:8]
    # the frozen LM is bit-identical to the files it was loaded from, and those files did not change
    after = cap.lm.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k].cpu(), before[k]) for k in before)
    assert not any(p.requires_grad for p in cap.lm.parameters()) and not cap.lm.training
    assert cap.meta()["lm_weights_sha256"] == hashlib.sha256((tiny_lm / "model.safetensors").read_bytes()).hexdigest()
    losses = cap.meta()["training"]["loss_per_epoch"]
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0]


def test_generate_batches_and_token_limit(trained, data):
    cap, _ = trained
    E = data["test"][1][:6]
    whole = cap.generate(E)
    assert cap.generate(E, batch_size=4) == whole  # a batch gives what each item gives alone
    assert [cap.generate(E[i:i + 1])[0] for i in range(6)] == whole
    short = cap.generate(E, max_new_tokens=3)
    assert all(len(s.split()) <= 3 for s in short) and [w.split()[:3] for w in whole] == [s.split() for s in short]


def test_registry_round_trip(trained, data, tiny_lm, tmp_path):
    from brainstore.fitting import ModelRegistry
    from brainstore.fitting.decoding._captioner import Captioner

    cap, _ = trained
    reg = ModelRegistry(tmp_path / "reg")
    rec = cap.save(reg, "captioner/tiny", extra_meta={"target": "captions-minilm"})
    files = sorted(p.name for p in rec.path.iterdir())
    assert files == ["model.json", "model.safetensors"]
    meta = json.loads((rec.path / "model.json").read_text())
    assert meta["kind"] == "captioner" and meta["target"] == "captions-minilm"
    assert meta["lm_dir"] == str(tiny_lm.resolve()) and meta["lm_pretrained"] is True
    assert (meta["prefix_len"], meta["embed_dim"], meta["n_embd"]) == (8, DIM, 64)
    # only the projection is saved: d -> hidden -> prefix_len * n_embd
    h = meta["hidden"]
    shapes = {k: tuple(v["shape"]) for k, v in meta["tensors"].items()}
    assert shapes == {"proj.0.weight": (h, DIM), "proj.0.bias": (h,), "proj.2.weight": (8 * 64, h),
                      "proj.2.bias": (8 * 64,)}

    loaded = Captioner.load(ModelRegistry(tmp_path / "reg", create=False), "captioner/tiny")
    E = data["test"][1]
    assert loaded.generate(E) == cap.generate(E)
    assert loaded.meta()["lm_weights_sha256"] == cap.meta()["lm_weights_sha256"]

    # a moved LM: named with the fix; lm= points to the new place
    moved = tmp_path / "moved-lm"
    shutil.copytree(tiny_lm, moved)
    reg.save("captioner/elsewhere", cap.tensors(), {**cap.meta(), "lm_dir": str(tmp_path / "gone")})
    with pytest.raises(FileNotFoundError) as ei:
        Captioner.load(reg, "captioner/elsewhere")
    msg = str(ei.value)
    assert "\n" not in msg and str(tmp_path / "gone") in msg and "lm=" in msg and "train_captioner" in msg
    assert Captioner.load(reg, "captioner/elsewhere", lm=moved).generate(E[:4]) == cap.generate(E[:4])

    # an LM whose weights changed since training is refused
    other = tmp_path / "other-lm"
    shutil.copytree(tiny_lm, other)
    from safetensors.numpy import load_file, save_file

    w = load_file(other / "model.safetensors")
    k = sorted(w)[0]
    w[k] = w[k] + 1
    save_file(w, other / "model.safetensors", metadata={"format": "pt"})
    from brainstore.fitting import RegistryError

    with pytest.raises(RegistryError, match="not the one it was trained on"):
        Captioner.load(reg, "captioner/tiny", lm=other)


def test_random_init_lm_is_recorded_and_said_once(tmp_path, data, tiny_lm, capfd, torch_one_thread):
    from brainstore.fitting import ModelRegistry
    from brainstore.fitting.decoding._captioner import Captioner, train_captioner
    from brainstore.fitting.decoding._tiny_lm import make_tiny_lm

    captions, E = data["train"]
    rnd = make_tiny_lm(tmp_path / "random-lm", captions[:50], trained_steps=0, seed=1)
    cfg = json.loads((rnd / "config.json").read_text())
    assert cfg["brainstore_random_init"] is True and cfg["brainstore_trained_on"] == 0
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap = train_captioner(E[:50], captions[:50], lm=rnd, prefix_len=2, epochs=1, progress=False)
    err = capfd.readouterr().err
    assert err.count("RANDOM weights") == 1 and str(rnd.resolve()) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not [str(w.message) for w in caught]  # said on screen, not as a warning
    assert cap.meta()["lm_pretrained"] is False and "RANDOM" in cap.meta()["lm_weights_note"]
    reg = ModelRegistry(tmp_path / "reg")
    cap.save(reg, "random")
    assert json.loads((reg.record("random").path / "model.json").read_text())["lm_pretrained"] is False
    capfd.readouterr()
    Captioner.load(reg, "random")
    assert capfd.readouterr().err.count("RANDOM weights") == 1

    # the trained LM: no notice, nothing on stderr at all, no warning, lm_pretrained true
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap2 = train_captioner(E[:50], captions[:50], lm=tiny_lm, prefix_len=2, epochs=1, progress=False)
        cap2.generate(E[:2])
    assert capfd.readouterr().err == ""
    assert not [str(w.message) for w in caught]
    assert cap2.meta()["lm_pretrained"] is True and cap2.meta()["lm_trained_on"] == N_TRAIN


def test_caption_metrics_on_generated_captions():
    from brainstore.scoring import caption_metrics

    same = caption_metrics(["a red circle above a blue star"], ["a red circle above a blue star"])
    assert same["bleu1"] == pytest.approx(100) and same["bleu4"] == pytest.approx(100)
    assert same["rougeL"] == pytest.approx(1.0)
    none = caption_metrics(["green cross"], ["a red circle above a blue star"])
    assert none["bleu1"] == 0 and none["rougeL"] == 0
    with pytest.raises(ValueError, match="one reference per"):
        caption_metrics(["a"], ["a", "b"])


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_bad_inputs(tmp_path, data, tiny_lm, trained):
    from brainstore.fitting.decoding._captioner import train_captioner

    captions, E = data["train"]
    kw = dict(lm=tiny_lm, epochs=1, progress=False)
    with pytest.raises(ValueError) as ei:
        train_captioner(E[0], captions[:1], **kw)
    assert "(48,)" in _one_line(ei) and "2-D" in _one_line(ei)
    with pytest.raises(ValueError) as ei:
        train_captioner(E[:10], captions[:9], **kw)
    assert "(10, 48)" in _one_line(ei) and "9 captions" in _one_line(ei)
    bad = E[:10].copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError) as ei:
        train_captioner(bad, captions[:10], **kw)
    assert "(10, 48)" in _one_line(ei) and "NaN" in _one_line(ei) and "row 3" in _one_line(ei)
    with pytest.raises(ValueError) as ei:
        train_captioner(E[:2], ["a red star", ""], **kw)
    assert "item 1" in _one_line(ei)
    with pytest.raises(ValueError) as ei:
        train_captioner(E[:2], captions[:2], lm=tiny_lm, prefix_len=0)
    assert "prefix_len" in _one_line(ei)
    missing = tmp_path / "no-such-lm"
    with pytest.raises(FileNotFoundError) as ei:
        train_captioner(E[:2], captions[:2], lm=missing, progress=False)
    assert str(missing) in _one_line(ei)
    not_lm = tmp_path / "empty"
    not_lm.mkdir()
    with pytest.raises(FileNotFoundError) as ei:
        train_captioner(E[:2], captions[:2], lm=not_lm, progress=False)
    assert "config.json" in _one_line(ei)
    with pytest.raises(ValueError) as ei:  # 8 + 60 positions > the LM's 64
        train_captioner(E[:2], captions[:2], lm=tiny_lm, prefix_len=60, progress=False)
    assert "64 positions" in _one_line(ei)

    cap, _ = trained
    with pytest.raises(ValueError) as ei:
        cap.generate(np.ones((3, 20)))
    assert "48" in _one_line(ei) and "(3, 20)" in _one_line(ei)
    with pytest.raises(ValueError) as ei:
        cap.generate(np.ones(48))
    assert "(48,)" in _one_line(ei)
    with pytest.raises(ValueError) as ei:
        cap.generate(np.full((2, 48), np.inf))
    assert "(2, 48)" in _one_line(ei)
    with pytest.raises(ValueError) as ei:
        cap.generate(np.zeros((2, 48)))
    assert "all-zero" in _one_line(ei)
    with pytest.raises(ValueError) as ei:
        cap.generate(E[:1], max_new_tokens=100)
    assert "max_new_tokens" in _one_line(ei) and "64" in _one_line(ei)


def test_import_does_not_pull_torch():
    import subprocess
    import sys

    code = ("import sys, brainstore.fitting.decoding._captioner as c; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; "
            "print(c.CAPTIONER_KIND)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "captioner", out.stderr


def test_word_level_output_is_detokenized():
    """A decoder-less (word-level) tokenizer's spaced punctuation is joined back; others are untouched."""
    from types import SimpleNamespace

    from brainstore.fitting.decoding._captioner import _detokenize

    word_level = SimpleNamespace(backend_tokenizer=SimpleNamespace(decoder=None))
    assert _detokenize("a sign reading ' cafe ' on the left , near a hat .", word_level) == \
        "a sign reading 'cafe' on the left, near a hat."
    bpe = SimpleNamespace(backend_tokenizer=SimpleNamespace(decoder=object()))
    assert _detokenize("a hat .", bpe) == "a hat ."
