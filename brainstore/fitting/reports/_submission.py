"""Writing predictions of a dataset's test split with registered models: :func:`predict` (encoders: the
Algonauts submission layout) and :func:`decode_test` (decoders: decoded embeddings and the top-k
stimuli of the whole target table). ``brainstore predict`` is a thin layer over both."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..._storage import dataset_root, uri_of
from ..decoding import decode_subject, decoder_name, decoding_models, store_top_k
from ..encoding import EncodingModel, best_model, subject_stimuli
from ..registry import NON_ENCODER_KINDS, ModelRegistry, RegistryError, model_base, model_ref, safe_name
from ._report import write_predictions

__all__ = ["predict", "decode_test", "DecodedSubject"]


def _open(dataset, registry):
    from ...datasets import open_dataset

    ds = dataset if not isinstance(dataset, (str, Path)) else open_dataset(dataset_root(dataset))
    reg = registry if isinstance(registry, ModelRegistry) else ModelRegistry(uri_of(registry), create=False)
    return ds, reg


def predict(dataset, *, registry, out: str | Path, model: str | None = None, store=None) -> dict[str, dict]:
    """Write ``OUT/subjNN/{lh,rh}_pred_test.npy`` (float32, test images sorted by file name x vertices) for
    every subject of ``dataset``: the Algonauts 2023 submission layout.

    Parameters
    ----------
    dataset : str, Path or BrainDataset
    registry : URI or ModelRegistry
    out : path
        The output folder (refused before any work when it cannot be created).
    model : str, optional
        The encoding model (default: each subject's best by validation score): ``clip`` (its champion alias
        when set, else its latest version), ``clip@3`` (version 3 of every subject's fit) or ``clip@staging``.
    store : URI or FeatureStore, optional
        The feature store to read embeddings from (default: the one each model was fitted with).

    Returns
    -------
    dict
        ``{subject: {"model": name, "version": "NAME/SUBJECT@V", "files": [paths]}}``.

    Raises
    ------
    RegistryError
        When ``model`` is not an encoding model fitted on ``dataset`` for every subject (the message names the
        models there and ``brainstore fit``).
    """
    from ..._paths import check_folder

    ds, reg = _open(dataset, registry)
    out = check_folder(out, "output folder", "--out", create=True, make=False)
    if model is not None:
        check_encoder_name(reg, model, ds)
    done = {}
    for s in ds.subjects:
        name = model or best_model(reg, s, str(ds.root))
        em = EncodingModel.load(reg, name, s, None if store is None else uri_of(store))
        preds = em.predict(subject_stimuli(ds, s, "test"))
        done[s] = {"model": name, "version": em.record.ref, "files": write_predictions({s: preds}, Path(out))}
    return done


def check_encoder_name(reg: ModelRegistry, model: str, ds) -> None:
    """RegistryError, naming the encoding models there are and `brainstore fit`, unless ``model`` is an encoding
    model fitted on ``ds`` for every one of its subjects."""
    recs = [r for r in reg.list() if r.meta.get("kind") not in NON_ENCODER_KINDS
            and r.meta.get("dataset") == str(ds.root)]
    names = sorted({r.meta.get("model") for r in recs if r.meta.get("model")})
    selected, model = model, model_base(model)  # clip@3: clip, each subject's version 3
    if model not in names:
        close = difflib.get_close_matches(model, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise RegistryError(
            f"no encoding model {model!r} was fitted on {ds.root} in registry {reg.root}; {hint}"
            + (f"encoding models there: {shown} (`brainstore models` lists them); " if names else
               "it holds no encoding model for this dataset; ")
            + f"fit one with `brainstore fit --dataset {ds.root}`, or leave --model out for each subject's best")
    fitted = {r.meta.get("subject") for r in recs if r.meta.get("model") == model}
    lacking = [s for s in ds.subjects if s not in fitted]
    if lacking:
        raise RegistryError(
            f"encoding model {model!r} has no fit for {', '.join(lacking)} (fitted for: "
            f"{', '.join(sorted(x for x in fitted if x))}); fit it for them with `brainstore fit --dataset "
            f"{ds.root}`, or leave --model out for each subject's best")
    for s in ds.subjects:  # the version or alias exists for every subject (the message names those there are)
        reg.resolve(model_ref(selected, s))


@dataclass
class DecodedSubject:
    """One subject's decoded test split (:func:`decode_test`)."""

    subject: str
    model: str
    decoded: Path  # OUT/subjNN/decoded_TABLE.npy, (n_test, dim) float32
    top: Path  # OUT/subjNN/topK_TABLE.json: each test response's K nearest stored stimuli, with cosines
    n_test: int
    dim: int
    candidates: int  # stimuli in the target table
    top1: float  # share of test responses whose own stimulus is the nearest
    topk: float  # ... is among the K nearest
    k: int = 10
    extra: dict = field(default_factory=dict)


def decode_test(dataset, target: str, *, registry, out: str | Path, model: str | None = None, store=None,
                top_k: int = 10) -> list[DecodedSubject]:
    """Decode every subject's test responses into the store table ``target`` and search the whole table.

    Writes ``OUT/subjNN/decoded_TABLE.npy`` (the decoded embeddings) and ``OUT/subjNN/topK_TABLE.json``
    (the K nearest stored stimuli of each test response, LanceDB cosine search over the whole table).

    Parameters
    ----------
    dataset : str, Path or BrainDataset
    target : str
        The store table decoded into.
    registry : URI or ModelRegistry
    out : path
        The output folder.
    model : str, optional
        The decoder or adaptor (default: the ridge decoder into ``target``, else the only model into it).
    store : URI or FeatureStore, optional
        Default: the store the model was fitted with.
    top_k : int
        Stimuli listed per test response.

    Returns
    -------
    list of DecodedSubject
    """
    from ..._paths import check_folder

    ds, reg = _open(dataset, registry)
    out = Path(check_folder(out, "output folder", "--out", create=True, make=False))
    models = decoding_models(reg, ds.root)
    if model is None:
        into = [m for m, i in sorted(models.items()) if target in i["targets"]]
        model = decoder_name(target) if decoder_name(target) in into else (into[0] if len(into) == 1 else None)
        if model is None:
            raise RegistryError(f"no single decoding model into {target!r} was fitted on {ds.root}"
                                + (f"; choose one with --model: {', '.join(into)}" if into else
                                   f"; run `brainstore fit --dataset {ds.root} --decode {target}` first"))
    elif model not in models:
        raise RegistryError(f"no decoder or adaptor named {model!r} was fitted on {ds.root}; decoding models: "
                            f"{', '.join(sorted(models)) or 'none'}")
    subjects = [s for s in ds.subjects if s in models[model]["subjects"] and ds.has_test_responses(s)]
    if not subjects:
        raise RegistryError(f"{model!r} decodes none of the subjects with test responses in {ds.root}")
    tag, cache, done = safe_name(target), {"models": models}, []
    for s in subjects:
        D, fs = decode_subject(reg, model, s, ds, target, None if store is None else uri_of(store), cache=cache)
        ids, sims = store_top_k(fs, target, D, top_k)
        n_stored = len(fs.ids(target))
        truth = subject_stimuli(ds, s, "test")
        sdir = out / s
        sdir.mkdir(parents=True, exist_ok=True)
        np.save(sdir / f"decoded_{tag}.npy", D.astype(np.float32))
        rows = [{"test_row": i, "stimulus_id": t, "top": [{"stimulus_id": a, "cosine": round(float(b), 6)}
                                                           for a, b in zip(row, sim)]}
                for i, (t, row, sim) in enumerate(zip(truth, ids, sims))]
        top = sdir / f"top{top_k}_{tag}.json"
        top.write_text(json.dumps({"model": model, "subject": s, "target": target, "k": top_k,
                                   "candidates": n_stored, "search": "LanceDB, cosine, whole table",
                                   "rows": rows}, indent=1))
        done.append(DecodedSubject(s, model, sdir / f"decoded_{tag}.npy", top, D.shape[0], D.shape[1], n_stored,
                                   float(np.mean([t == row[0] for t, row in zip(truth, ids)])),
                                   float(np.mean([t in row for t, row in zip(truth, ids)])), top_k))
    return done
