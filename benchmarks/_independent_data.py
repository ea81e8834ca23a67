"""Independent synthetic responses for the decoders' regimes benchmark (``decode.py --regimes``).

brainstore's own generator (:func:`brainstore.datasets.make_dataset`) drives its vertices with the
*scene's* hidden semantic variables (face / body / place / text...) through a softplus, and with the
contrast energy inside Gaussian population receptive fields, with ROI-specific gains and a spread of
noise-ceiling SNRs. The adaptor's defaults were tuned on such data. This module keeps only
make_dataset's stimuli (the images, their captions and the Algonauts release layout: files, shapes,
dtypes, ROI masks) and overwrites every response file with a voxel model of its own:

* a **caption drive** (all-MiniLM-L6-v2 embeddings of the captions, extracted through the feature store
  as ``decode.py`` does) rather than the scene's semantic variables: the centred embeddings' top ``_K``
  principal components, their spectrum flattened (each scaled by its singular value share ** 0.25);
  each voxel reads ``_N_DIRS`` random directions of that space, each through its own nonlinearity,
  mixed by voxel-specific weights: a rectified ``relu(p - t)`` (voxel-specific threshold ``t``), a
  squared ``p**2`` (sign-blind: no linear read-out sees it) and a saturating ``tanh(1.5 p)``;
* an **image drive** read from the pixels, not from the scene description: a random linear mix of the
  4x4 grey-level thumbnail, the mean colour and the contrast;
* an **idiosyncratic drive**: a random linear mix of a per-image random vector (``_N_IDIO`` dimensions,
  the same for every subject) that neither the caption nor the pixel summary carries: repeatable
  signal (it counts in the noise ceiling) that no caption decoder can use, as most of a real voxel's;
* the three drives are z-scored and summed with voxel-specific gains (``_GAINS``: the caption drive
  is about 10 % of the signal variance), the sum z-scored again;
* plus Gaussian noise: the stored responses (means of 3 repeats, as the release) carry noise of
  standard deviation ``noise * m`` relative to a unit-variance signal (``m``: a voxel's multiplier,
  log-normal, median 1), and 5 % of the voxels carry no signal at all;
* ``space="own"``: every subject and hemisphere its own tuning (no voxel correspondence; make_dataset
  with ``alignment=0``: vertex counts differ). ``space="shared"``: one template tuning per hemisphere,
  each subject's drawn as ``0.9 template + sqrt(1 - 0.81) own`` (a voxel's tuning correlated 0.9 across
  subjects) in make_dataset's template vertex space (``alignment=0.9``: same vertices and ROIs); noise
  and silent voxels stay individual.

The noiseless copy (``ground_truth/subjNN/{hemi}_pred_test.npy``, ``{hemi}_train_noiseless.npy``: the
decoders' oracle) and the noise ceilings are rewritten to match. Everything is a deterministic
function of the arguments (numpy streams seeded apart from make_dataset's). ``independent.json``
records the parameters; it is written last, so an interrupted build is redone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

__all__ = ["make_independent_dataset", "caption_table", "SPACES"]

SPACES = ("own", "shared")
_K = 128  # principal components of the caption embeddings the voxels are tuned in
_N_DIRS = 3  # directions per voxel: rectified, squared, saturating
_SHARED_R = 0.9  # correlation of a voxel's tuning across subjects (space "shared")
_SILENT = 0.05  # share of voxels without signal
_N_IDIO = 24  # dimensions of each image's idiosyncratic drive (neither in its caption nor in the pixel summary)
_SPECTRUM = 0.25  # principal components scaled by (singular value share) ** _SPECTRUM (0: whitened, 1: as they are)
# each drive's weight range per voxel (before the sum is z-scored): the caption drive is ~10 % of the signal
# variance. Calibrated (ridge decoder, 2 x 1,000 voxels, top-1 of 300) so that no regime saturates: noise 0.5
# gave about 0.58 / 0.95 / 0.98 at 300 / 1,000 / 3,000 training images, noise 1.5 about 0.03 / 0.11 / 0.20
_GAINS = {"caption": (1.0, 1.0), "image": (0.5, 1.0), "idio": (2.0, 4.0)}
_STREAM = 7331  # numpy seed stream of this generator (make_dataset uses [seed, 1000+k] and [seed, 2000+h])


def caption_table(root: str | Path, store: str | Path) -> str:
    """Extract the captions' all-MiniLM-L6-v2 embeddings of the dataset at ``root`` into ``store`` (the
    ``text`` extractor, as ``decode.py`` does; idempotent) and return the table's name."""
    from brainstore.cluster._quiet import drop_stderr_lines
    from brainstore.cluster._ray import connect
    from brainstore.features import extract

    connect(None)
    with drop_stderr_lines():  # Ray's per-run actor-restart notice (ray#53727), as the CLI does
        rep = extract(Path(root), "text", str(store), progress=False)
    return rep.feature


def make_independent_dataset(root: str | Path, store: str | Path, *, space: str = "own", noise: float = 1.0,
                             n_subjects: int = 2, n_train: int = 3000, n_test: int = 300, n_vertices: int = 1000,
                             seed: int = 0, image_size: int = 32) -> tuple[Path, str]:
    """Write the dataset to ``root`` (reused when ``independent.json`` records the same arguments) and its
    caption table to ``store``.

    Parameters
    ----------
    space : "own" or "shared"
        Each subject its own tuning, or one template tuning correlated 0.9 across subjects.
    noise : float
        Noise standard deviation of the stored responses relative to the signal's (median voxel).
    n_subjects, n_train, n_test, n_vertices, seed, image_size
        make_dataset's arguments of the same names (stimuli, layout, vertex counts).

    Returns
    -------
    (Path, str)
        The dataset folder and the caption table's name.
    """
    from brainstore.datasets import make_dataset

    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, not {space!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    root = Path(root).expanduser().resolve()
    params = {"space": space, "noise": float(noise), "n_subjects": n_subjects, "n_train": n_train, "n_test": n_test,
              "n_vertices": n_vertices, "seed": seed, "image_size": image_size,
              "model": {"pcs": _K, "spectrum": _SPECTRUM, "directions_per_voxel": _N_DIRS, "idio_dims": _N_IDIO,
                        "gains": {k: list(v) for k, v in _GAINS.items()}, "silent_share": _SILENT,
                        "shared_correlation": _SHARED_R}}  # a changed model is a new dataset
    marker = root / "independent.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return root, caption_table(root, store)
    t0 = time.time()
    make_dataset(root, n_subjects=n_subjects, n_train=n_train, n_test=n_test, n_vertices=n_vertices, seed=seed,
                 image_size=image_size, alignment=_SHARED_R if space == "shared" else 0.0, progress=False,
                 # one process: no fork of a driver that holds LanceDB's runtime (lancedb warns of deadlocks)
                 workers=1, overwrite=(root / "synthetic.json").exists())  # only ever replaces a generated dataset
    table = caption_table(root, store)
    _rewrite_responses(root, store, table, params)
    made = json.loads((root / "synthetic.json").read_text())
    (root / "synthetic.json").write_text(json.dumps({**made, "responses_replaced_by": marker.name}, indent=2))
    marker.write_text(json.dumps({
        "generator": "benchmarks/_independent_data.py (make_dataset's stimuli, its own voxel model)",
        "params": params, "caption_table": table, "seconds": round(time.time() - t0, 2)}, indent=2))
    return root, table


def _rewrite_responses(root: Path, store, table: str, params: dict) -> None:
    """Overwrite every subject's responses, oracle and noise ceilings with this module's voxel model."""
    from brainstore.datasets import HEMISPHERES, open_dataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import subject_stimuli

    ds = open_dataset(root)
    st = ds.stimuli()
    paths = dict(zip(st.column("stimulus_id").to_pylist(), st.column("path").to_pylist()))
    ids = sorted(paths)
    row = {s: i for i, s in enumerate(ids)}
    Z = _caption_space(FeatureStore(str(store), create=False).load(table, ids))
    # linear drives: the pixel summary, and each image's idiosyncratic drive (shared by the subjects: a
    # property of the image that neither its caption nor the summary carries, as most of real voxels' signal)
    linear = {"image": _image_features([paths[s] for s in ids]),
              "idio": np.random.default_rng([params["seed"], _STREAM, 3]).standard_normal((len(ids), _N_IDIO))}
    seed, shared = params["seed"], params["space"] == "shared"
    templates = {h: _raw_tuning(np.random.default_rng([seed, _STREAM, 1, i]), ds.n_vertices(ds.subjects[0], h),
                                linear) for i, h in enumerate(HEMISPHERES)} if shared else {}
    for k, subject in enumerate(ds.subjects):
        rows = {split: np.array([row[s] for s in subject_stimuli(ds, subject, split)]) for split in ("train", "test")}
        for i, hemi in enumerate(HEMISPHERES):
            rng = np.random.default_rng([seed, _STREAM, 2, k, i])
            raw = _raw_tuning(rng, ds.n_vertices(subject, hemi), linear)
            if shared:
                raw = {key: _SHARED_R * templates[hemi][key] + np.sqrt(1 - _SHARED_R**2) * v for key, v in raw.items()}
            out = _responses(Z, linear, rows, raw, rng, params["noise"])
            _write(root, subject, hemi, out)


def _caption_space(E: np.ndarray) -> np.ndarray:
    """(n_images, _K): the centred embeddings' top principal components, each of standard deviation
    (its variance share) ** 0.25 relative to the first (a flattened spectrum)."""
    Ec = np.asarray(E, np.float64) - E.mean(0)
    U, s, _ = np.linalg.svd(Ec, full_matrices=False)
    k = min(_K, len(s))
    return (U[:, :k] * np.sqrt(len(Ec)) * (s[:k] / s[0]) ** _SPECTRUM).astype(np.float32)


def _image_features(paths: list[str]) -> np.ndarray:
    """(n_images, 20) from the pixels, z-scored: 4x4 grey thumbnail, mean R, G, B, grey contrast."""
    from PIL import Image

    out = np.zeros((len(paths), 20), np.float32)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"), np.float32) / 255.0
        grey = rgb.mean(2)
        h, w = grey.shape
        thumb = grey[: h - h % 4, : w - w % 4].reshape(4, h // 4, 4, w // 4).mean((1, 3))
        out[i] = np.concatenate([thumb.ravel(), rgb.mean((0, 1)), [grey.std()]])
    return (out - out.mean(0)) / np.maximum(out.std(0), 1e-6)


def _raw_tuning(rng: np.random.Generator, nv: int, linear: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A hemisphere's tuning as standard normal draws (mixed across subjects as they are; mapped to
    parameters in :func:`_responses`): caption directions, their mixture and threshold, and for each
    linear drive (``linear``: name -> images x features) a read-out and a gain."""
    raw = {"dirs": rng.standard_normal((_N_DIRS, _K, nv)), "mix": rng.standard_normal((_N_DIRS, nv)),
           "thr": rng.standard_normal(nv)}
    for name, F in linear.items():
        raw[f"{name}_w"], raw[f"{name}_gain"] = rng.standard_normal((F.shape[1], nv)), rng.standard_normal(nv)
    return raw


def _zscore(a: np.ndarray) -> np.ndarray:
    return (a - a.mean(0)) / np.maximum(a.std(0), 1e-9)


def _gain(name: str, g: np.ndarray) -> np.ndarray:
    lo, hi = _GAINS[name]
    return lo + (hi - lo) / (1 + np.exp(-1.7 * g))  # a standard normal draw mapped into (lo, hi)


def _responses(Z: np.ndarray, linear: dict[str, np.ndarray], rows: dict[str, np.ndarray], raw: dict,
               rng: np.random.Generator, noise: float) -> dict[str, np.ndarray]:
    """Noisy and noiseless responses of one hemisphere (images x voxels, by split) and its noise ceiling;
    statistics over the subject's images (train and test), as make_dataset."""
    from brainstore.scoring import noise_ceiling_from_ncsnr

    r = np.concatenate([rows["train"], rows["test"]])
    d = raw["dirs"][:, : Z.shape[1]]
    p = [_zscore(Z[r] @ d[j]) for j in range(_N_DIRS)]  # images x voxels, each
    w = np.exp(0.8 * raw["mix"])
    w /= w.sum(0)
    t = 0.5 * raw["thr"]
    f = w[0] * np.maximum(p[0] - t, 0) + w[1] * p[1] ** 2 + w[2] * np.tanh(1.5 * p[2])
    s = _gain("caption", 0.0) * _zscore(f)
    for name, F in linear.items():
        s = s + _gain(name, raw[f"{name}_gain"]) * _zscore(F[r] @ raw[f"{name}_w"])
    s = _zscore(s)
    nv = s.shape[1]
    silent = rng.random(nv) < _SILENT
    s[:, silent] = 0.0
    sd = noise * np.exp(0.25 * rng.standard_normal(nv))  # noise sd of the stored (3-repeat mean) responses
    scale = 1.0 / np.sqrt((~silent) + sd**2 + 1e-12)  # unit-variance responses, as NSD's z-scored betas
    y = (s + sd * rng.standard_normal(s.shape)) * scale
    n_tr = len(rows["train"])
    # single trials carry noise sd * sqrt(3): ncsnr = signal sd / that (0 where silent)
    ncsnr = np.where(silent, 0.0, 1.0 / np.maximum(sd * np.sqrt(3), 1e-9))
    return {"train": y[:n_tr], "test": y[n_tr:], "train_noiseless": (s * scale)[:n_tr],
            "test_noiseless": (s * scale)[n_tr:], "nc": noise_ceiling_from_ncsnr(ncsnr, n_three=len(rows["test"]))}


def _write(root: Path, subject: str, hemi: str, out: dict[str, np.ndarray]) -> None:
    """Overwrite the release's files of one hemisphere with ``out``, each in the shape and dtype make_dataset wrote."""
    sdir, gt = root / subject, root / "ground_truth" / subject
    files = {"train": sdir / "training_split" / "training_fmri" / f"{hemi}_training_fmri.npy",
             "test": sdir / "test_split" / "test_fmri" / f"{hemi}_test_fmri.npy",
             "nc": sdir / "test_split" / "noise_ceiling" / f"{hemi}_noise_ceiling.npy",
             "train_noiseless": gt / f"{hemi}_train_noiseless.npy", "test_noiseless": gt / f"{hemi}_pred_test.npy"}
    for key, path in files.items():
        old = np.load(path, mmap_mode="r")
        new = np.asarray(out[key]).astype(old.dtype)
        if new.shape != old.shape:
            raise RuntimeError(f"{path}: make_dataset wrote {old.shape}, the independent model made {new.shape}")
        del old
        np.save(path, new)
