"""Probe: can pretraining on other subjects help a new subject with 10 % of its data, on this generator
or on variants of its response model? Plain torch (no Ray), fast, for exploring; last line JSON.

Takes the dataset and caption store of a ``benchmarks/decode.py`` run (``--run DIR``: DIR/data,
DIR/store). ``--variant current`` uses its responses; the other variants rewrite every subject's
responses (same images, captions and vertex counts; written to ``--work``) as subject-specific
sparse random mixtures of a K-dimensional *shared* stimulus code built from the caption's words
(bag of words, z-scored):

* ``lin``: z = BoW @ G (linear);
* ``nonlin``: z = tanh(2 relu(2 BoW @ G1) @ G2) (a two-layer random network);
* ``sin``: z = sin(BoW @ G * gain / sqrt(vocabulary)) (a strongly nonlinear code).

Per-vertex SNR is log-normal around ``--snr`` (as the generator's), 3 repeats averaged. Then, with
the adaptor network of brainstore (AdaptorNet, CLIP + regression loss), it pretrains on all
subjects but the last (20 epochs) and trains the arms on ``--fraction`` of the last subject's
training images: its adapter alone (linear, or factored rank 32, from a random start or, arm
``adapter-mean32``, from the rank-32 SVD of the pretrained adapters' mean, which needs subjects in
one vertex space: ``make-dataset --alignment``; ``zero_shot_mean32`` scores that start untrained;
``--anchor W`` adds an L2 pull toward it), the model from scratch, and a full fine-tune; top-1
brain -> stimulus among 300 test images, 30 draws.

Usage: python benchmarks/fewshot_probe.py --run /tmp/bs-decode-b4 [--variant sin --K 128 --gain 2]
       [--fraction 0.1] [--arms adapter-linear,scratch] [--lr 3e-4 --epochs 40]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np


def rewrite_responses(src: Path, dst: Path, variant: str, K: int, snr: float, gain: float, seed: int = 7) -> None:
    """Copy ``src`` (images linked) to ``dst`` with responses from a shared K-dim code of the captions."""
    import pyarrow.csv as pcsv

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("*.png"))
    subjects = sorted(p.name for p in src.glob("subj*"))
    for s in subjects:
        for a, b in (("training_split", "training_images"), ("test_split", "test_images")):
            shutil.rmtree(dst / s / a / b)
            (dst / s / a / b).symlink_to(src / s / a / b)
    t = pcsv.read_csv(src / "captions.csv").to_pydict()
    caps = {int(re.search(r"nsd-(\d+)", n).group(1)): c for n, c in zip(t["image"], t["caption"])}
    words = lambda c: re.findall(r"[a-z']+", c.lower())  # noqa: E731
    vocab = sorted({w for c in caps.values() for w in words(c)})
    ids = sorted(caps)
    pos = {n: i for i, n in enumerate(ids)}
    bow = np.zeros((len(ids), len(vocab)), np.float32)
    for n, c in caps.items():
        for w in words(c):
            bow[pos[n], vocab.index(w)] += 1
    bow = (bow - bow.mean(0)) / (bow.std(0) + 1e-6)
    rng = np.random.default_rng(seed)
    V = bow.shape[1]
    if variant == "lin":
        z = bow @ rng.normal(0, 1, (V, K))
    elif variant == "nonlin":
        h = np.maximum(bow @ rng.normal(0, 1 / np.sqrt(V), (V, 4 * K)) * 2.0, 0)
        z = np.tanh(h @ rng.normal(0, 1 / np.sqrt(4 * K), (4 * K, K)) * 2.0)
    elif variant == "sin":
        z = np.sin(bow @ rng.normal(0, gain / np.sqrt(V), (V, K)))
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    z = (z - z.mean(0)) / (z.std(0) + 1e-6)
    for k, s in enumerate(subjects):
        srng = np.random.default_rng(100 + k)
        rows = {sp: np.array([pos[int(re.search(r"nsd-(\d+)", p.name).group(1))] for p in
                              sorted((src / s / f"{sp}_split" / f"{sp}_images").glob("*.png"))])
                for sp in ("training", "test")}
        for hemi in ("lh", "rh"):
            nv = np.load(src / s / "training_split" / "training_fmri" / f"{hemi}_training_fmri.npy", mmap_mode="r").shape[1]
            B = srng.normal(0, 1, (K, nv)) * (srng.random((K, nv)) < 0.3)
            ncsnr = np.clip(np.exp(srng.normal(np.log(snr), 0.55, nv)), 0, 3)
            amp, noise_sd = ncsnr / np.sqrt(1 + ncsnr ** 2), 1 / np.sqrt(1 + ncsnr ** 2)
            sig = z @ B
            sig = (sig - sig.mean(0)) / (sig.std(0) + 1e-6)
            for sp in ("training", "test"):
                S = sig[rows[sp]]
                R = amp * S + noise_sd * srng.standard_normal(S.shape) / np.sqrt(3)
                np.save(dst / s / f"{sp}_split" / f"{sp}_fmri" / f"{hemi}_{sp}_fmri.npy", R.astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a benchmarks/decode.py run folder (data/, store/)")
    ap.add_argument("--variant", default="current", choices=("current", "lin", "nonlin", "sin"))
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--snr", type=float, default=0.5)
    ap.add_argument("--gain", type=float, default=2.0)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--arms", default="adapter-linear,adapter-factored32,scratch,finetune")
    ap.add_argument("--lr", type=float, default=3e-4, help="lr of the few-shot arms")
    ap.add_argument("--epochs", type=int, default=40, help="epochs of the few-shot arms")
    ap.add_argument("--anchor", type=float, default=0.0, help="L2-SP weight of the adapter-mean32 arm")
    ap.add_argument("--work", default="/tmp/bs-fewshot-probe")
    args = ap.parse_args()

    import torch
    from torch import nn

    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import response_matrix, select_voxels, subject_stimuli
    from brainstore.fitting.decoding import AdaptorNet, clip_loss, regression_loss
    from brainstore.scoring import retrieval_metrics

    torch.set_num_threads(1)
    run = Path(args.run)
    data = run / "data"
    if args.variant != "current":
        data = Path(args.work) / "data"
        rewrite_responses(run / "data", data, args.variant, args.K, args.snr, args.gain)
    ds, fs = AlgonautsDataset(data), FeatureStore(run / "store", create=False)
    T = fs.names()[0]
    D = {}
    for s in ds.subjects:
        v = select_voxels(ds, s, None)
        D[s] = {"Rtr": response_matrix(ds, s, "train", v), "Rte": response_matrix(ds, s, "test", v),
                "Etr": fs.load(T, subject_stimuli(ds, s, "train")), "Ete": fs.load(T, subject_stimuli(ds, s, "test"))}
    new, others = ds.subjects[-1], ds.subjects[:-1]

    def z(s, n):
        m, sd = D[s]["Rtr"][:n].mean(0), D[s]["Rtr"][:n].std(0) + 1e-6
        return (D[s]["Rtr"][:n] - m) / sd, (D[s]["Rte"] - m) / sd

    def train(net, subjects, nuse, epochs, params, bs=64, lr=3e-4, anchor=0.0):
        params = list(params)
        init = [q.detach().clone() for q in params]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0 if anchor else 1e-2)
        data_ = {s: (torch.from_numpy(z(s, nuse[s])[0]), torch.from_numpy(D[s]["Etr"][:nuse[s]])) for s in subjects}
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            net.train()
            perms = {s: torch.randperm(len(data_[s][0]), generator=g) for s in subjects}
            for st in range(max(1, max(len(p) for p in perms.values()) // bs)):
                loss = 0
                for s in subjects:
                    p = perms[s]
                    idx = p[(st * bs) % len(p):][:bs]
                    idx = idx if len(idx) >= 2 else p[:bs]
                    out, y = net(data_[s][0][idx], s)[T], data_[s][1][idx]
                    loss = loss + 0.8 * clip_loss(out, y, net.logit_scale) + 0.2 * regression_loss(out, y)
                if anchor:  # L2-SP: pulled toward the starting weights, not toward zero
                    loss = loss + anchor * sum(((q - q0) ** 2).sum() for q, q0 in zip(params, init))
                opt.zero_grad()
                loss.backward()
                opt.step()

    def score(net, s, nuse):
        net.eval()
        with torch.no_grad():
            pred = net(torch.from_numpy(z(s, nuse)[1]), s)[T].numpy()
        return retrieval_metrics(pred, D[s]["Ete"], n_candidates=300, n_draws=30)["top1_brain_to_stimulus"]

    t0 = time.time()
    nv = {s: D[s]["Rtr"].shape[1] for s in ds.subjects}
    ntr = {s: len(D[s]["Rtr"]) for s in ds.subjects}
    nf = max(2, int(round(ntr[new] * args.fraction)))
    dims = {T: D[new]["Etr"].shape[1]}
    torch.manual_seed(0)
    pre = AdaptorNet({s: nv[s] for s in others}, dims, latent=512)
    train(pre, others, ntr, 20, pre.parameters())
    res = {"pretrained": {s: round(score(pre, s, ntr[s]), 3) for s in others}}
    print(f"pretrained on {others}: {res['pretrained']} ({time.time() - t0:.0f} s)", flush=True)
    for label in args.arms.split(","):
        torch.manual_seed(1)
        if label == "scratch":
            net = AdaptorNet({new: nv[new]}, dims, latent=512)
            params = list(net.parameters())
        else:
            net = copy.deepcopy(pre)
            if label in ("adapter-factored32", "adapter-mean32"):
                net.adapters[new] = nn.Sequential(nn.Linear(nv[new], 32, bias=False), nn.Linear(32, 512))
            if label == "adapter-mean32":  # start from the mean of the pretrained (linear) adapters, rank 32
                W = np.mean([pre.adapters[s].weight.detach().numpy() for s in others], 0)
                U, S, Vt = np.linalg.svd(W, full_matrices=False)
                with torch.no_grad():
                    net.adapters[new][0].weight.copy_(torch.from_numpy(np.sqrt(S[:32])[:, None] * Vt[:32]))
                    net.adapters[new][1].weight.copy_(torch.from_numpy(U[:, :32] * np.sqrt(S[:32])))
                    net.adapters[new][1].bias.copy_(torch.from_numpy(
                        np.mean([pre.adapters[s].bias.detach().numpy() for s in others], 0)))
                res["zero_shot_mean32"] = round(score(net, new, nf), 3)
            elif label != "adapter-mean32":
                net.add_subject(new, nv[new])
            params = list(net.adapters[new].parameters()) if label.startswith("adapter") else list(net.parameters())
        train(net, [new], {new: nf}, args.epochs, params, bs=32, lr=args.lr,
              anchor=args.anchor if label == "adapter-mean32" else 0.0)
        res[label] = round(score(net, new, nf), 3)
        print(f"{label}: {res[label]} ({time.time() - t0:.0f} s)", flush=True)
    print(json.dumps({"variant": args.variant, "K": args.K, "snr": args.snr, "gain": args.gain,
                      "fraction": args.fraction, "lr": args.lr, "epochs": args.epochs, "new_subject": new,
                      "n_few": nf, **res, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
