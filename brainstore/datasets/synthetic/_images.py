"""Synthetic benchmark dataset in the exact Algonauts 2023 layout.

The generator is a fair, fully known stand-in for NSD:

* images: procedural scenes (see :mod:`._scenes`) with captions; a share of the training images
  and all test images are seen by every subject (same NSD id, as NSD's shared images);
* early visual vertices (``prf-visualrois``) integrate low-level contrast energy inside a
  Gaussian population receptive field, followed by a compressive nonlinearity (CSS model);
* category-selective vertices (``floc-faces/bodies/places/words``) respond to the scene's
  semantic content (face, body, place, text), plus weaker mixed tuning;
* the remaining vertices mix semantic and coarse low-level tuning;
* ``alignment`` (0 by default): subjects share nothing but the stimulus features, each with its own
  vertex count, ROI layout and tuning (as native-space data). ``alignment = a > 0`` puts every subject in
  one template space, as Algonauts 2023's challenge space within fsaverage: all subjects have the
  template's vertices and ROI labels, pRF centres jittered around the template's by ``0.1 (1 - a)``,
  and semantic weights ``a W_template + sqrt(1 - a**2) W_subject`` (so ``a`` is the correlation of one
  vertex's semantic tuning across subjects); SNR and noise stay individual. Anatomical alignment is
  what lets a model pretrained on other subjects start a new subject's map (``new_adapter_init: mean``);
* noise: per-vertex noise-ceiling SNR drawn from a spread (some vertices near zero), single
  trials of unit variance as NSD's z-scored betas; training responses are the mean of 3 repeats, test images are shown 3 times and their mean is stored;
  noise ceilings follow the ncsnr formula with A = n_test, B = C = 0;
* vertices on the cortex (:mod:`._cortex`): every hemisphere's vertices sit on distinct fsaverage vertices
  (among fsaverage5's, the first 10,242), written as the release does
  (``roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy``, 1 where a vertex sits, and
  ``{lh,rh}.{family}_fsaverage_space.npy``, the ROI labels on all 163,842 vertices), with the response
  columns in ascending fsaverage order. Early visual ROIs lie along the calcarine sulcus
  and their pRF centres follow from position (eccentricity from the occipital pole, polar angle across the
  bands, the contralateral hemifield; sizes grow with eccentricity); category ROIs are compact patches where
  they usually are. Aligned subjects share the template's placement. Datasets of more than 10,242 vertices
  per hemisphere (``n_vertices`` above 9,311, or above 10,242 aligned) do not fit: they stay in the subjects'
  native spaces and write no fsaverage files;
* ``ground_truth/subjNN/{lh,rh}_pred_test.npy`` holds the noiseless test responses (the oracle)
  in the submission layout, so scoring it gives NNMC ~ 100; ``{lh,rh}_train_noiseless.npy`` the
  noiseless training responses (oracle decoders are fitted on them).

Everything is deterministic given the seed. Responses are generated in image chunks and written
to memory-mapped ``.npy`` files, so NSD scale (10,000 images, 20,000 vertices per hemisphere)
fits in a few GB. The dataset is built in a temporary sibling folder and renamed into place at
the end: an interrupted run leaves nothing half written under the target path.
"""

from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...scoring import noise_ceiling_from_ncsnr
from .._layout import HEMISPHERES
from ._cortex import FSAVERAGE_VERTICES, Placement, fits, place, position_of
from ._folder import build_folder
from ._scenes import SEMANTIC_NAMES, low_level_energy, render, sample_scene

__all__ = ["make_dataset", "ImageDatasetSpec", "ROI_DEFS"]

_GRID = 32  # low-level energy map resolution (grid x grid)
_N_REPEATS = 3

# family -> (fraction of vertices, label -> ROI name) as in the Algonauts 2023 release.
ROI_DEFS: dict[str, tuple[float, dict[int, str]]] = {
    "prf-visualrois": (0.25, {0: "Unknown", 1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}),
    "floc-bodies": (0.06, {0: "Unknown", 1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"}),
    "floc-faces": (0.06, {0: "Unknown", 1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"}),
    "floc-places": (0.06, {0: "Unknown", 1: "OPA", 2: "PPA", 3: "RSC"}),
    "floc-words": (0.05, {0: "Unknown", 1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"}),
}
_STREAMS = {0: "Unknown", 1: "early", 2: "midventral", 3: "midlateral", 4: "midparietal", 5: "ventral", 6: "lateral", 7: "parietal"}
# Semantic feature driving each category family.
_PREFERRED = {"floc-faces": "face", "floc-bodies": "body", "floc-places": "place", "floc-words": "text"}
# pRF size range (fraction of the image) per visual area label.
_PRF_SIGMA = {1: (0.03, 0.06), 2: (0.03, 0.06), 3: (0.05, 0.09), 4: (0.05, 0.09), 5: (0.07, 0.13), 6: (0.07, 0.13), 7: (0.1, 0.2)}


@dataclass(frozen=True)
class ImageDatasetSpec:
    """What :func:`make_dataset` generates (its arguments of the same names, checked on construction);
    ``synthetic.json`` records it."""

    n_subjects: int
    n_train: int  # training images per subject
    n_test: int  # test images, shared by all subjects
    n_vertices: int  # typical vertices per hemisphere (+-10 % per subject and hemisphere)
    seed: int
    image_size: int  # side of the square PNGs
    shared_train_fraction: float  # of each subject's training images, seen by every subject
    alignment: float  # 0: native vertex spaces; in (0, 1]: one template space

    def __post_init__(self):
        if self.n_subjects < 1 or self.n_train < 10 or self.n_test < 2 or self.n_vertices < 50:
            raise ValueError("need n_subjects >= 1, n_train >= 10, n_test >= 2 and n_vertices >= 50")
        if not 0.0 <= self.alignment <= 1.0:
            raise ValueError(f"alignment must be in [0, 1] (0: native spaces, 1: identical tuning), got {self.alignment}")


def make_dataset(
    root: str | Path,
    *,
    n_subjects: int = 2,
    n_train: int = 600,
    n_test: int = 100,
    n_vertices: int = 2000,
    seed: int = 0,
    image_size: int = 256,
    shared_train_fraction: float = 0.3,
    alignment: float = 0.0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic Algonauts-layout dataset to ``root`` and return its path.

    Parameters
    ----------
    root : path
        Target folder; must not exist (or be empty) unless ``overwrite``.
    n_subjects, n_train, n_test : int
        Subjects, training images per subject and test images (shared by all subjects).
    n_vertices : int
        Typical vertices per hemisphere; each subject/hemisphere varies by +-10 %. Up to 9,311 (aligned:
        10,242) the vertices sit on fsaverage and the fsaverage files are written; above, the dataset stays
        in native space (no fsaverage files).
    seed : int
        Everything (scenes, ROIs, tuning, noise) is a deterministic function of the seed.
    image_size : int
        Side of the square PNGs (NSD: 425).
    shared_train_fraction : float
        Fraction of each subject's training images that every subject sees.
    alignment : float
        0 (default): each subject's own vertices, ROI layout and tuning. In (0, 1]: every subject in one
        template vertex space (same vertices and ROIs; ``alignment`` = across-subject correlation of a
        vertex's semantic tuning; see the module docstring).
    workers : int, optional
        Processes used to render images (default: up to 4, one per core).
    """
    spec = ImageDatasetSpec(n_subjects, n_train, n_test, n_vertices, seed, image_size, shared_train_fraction, alignment)

    def fill(tmp: Path) -> None:
        t0 = time.time()
        _generate(tmp, spec, workers, progress)
        fields = asdict(spec)
        (tmp / "synthetic.json").write_text(json.dumps({
            "generator": "brainstore.datasets.make_dataset", "seed": fields.pop("seed"), **fields,
            "repeats": _N_REPEATS, "seconds": round(time.time() - t0, 2),
        }, indent=2))

    return build_folder(root, overwrite, fill)


def _render_one(args: tuple[int, int, int]) -> tuple[bytes, np.ndarray, np.ndarray, str]:
    nsd_id, seed, size = args
    rng = np.random.default_rng([seed, nsd_id])
    scene = sample_scene(rng)
    img = render(scene, size=size, seed=int(rng.integers(2**31)))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), low_level_energy(img, _GRID), scene.semantics(), scene.caption()


def _generate(root: Path, spec: ImageDatasetSpec, workers: int | None, progress: bool) -> None:
    n_subj, n_test, seed = spec.n_subjects, spec.n_test, spec.seed
    test_ids, train_ids = _choose_images(spec)
    all_ids = np.unique(np.concatenate([test_ids, *train_ids]))
    pos = {int(n): i for i, n in enumerate(all_ids)}
    pngs, energy, sem, captions = _render_all(all_ids, seed, spec.image_size, workers, progress)
    sem_z = (sem - sem.mean(0)) / np.maximum(sem.std(0), 1e-6)

    # on the cortex unless the largest hemisphere (+10 %; aligned: exactly n_vertices) does not fit fsaverage5
    on_cortex = fits(spec.n_vertices if spec.alignment > 0 else int(round(spec.n_vertices * 1.1)))
    # aligned subjects: one template per hemisphere (vertices, ROIs, pRF centres and sizes, semantic weights)
    templates = {h: _template(spec.n_vertices, len(SEMANTIC_NAMES), np.random.default_rng([seed, 2000 + i]),
                              h if on_cortex else None)
                 for i, h in enumerate(HEMISPHERES)} if spec.alignment > 0 else {}
    cap_rows = []
    for k in range(n_subj):
        subj = f"subj{k + 1:02d}"
        sdir = root / subj
        for split, split_ids, top, sub, prefix in (
            ("train", train_ids[k], "training_split", "training_images", "train"),
            ("test", test_ids, "test_split", "test_images", "test"),
        ):
            folder = sdir / top / sub
            folder.mkdir(parents=True)
            for i, n in enumerate(split_ids):
                name = f"{prefix}-{i + 1:04d}_nsd-{int(n):05d}.png"
                (folder / name).write_bytes(pngs[pos[int(n)]])
                cap_rows.append((name, captions[pos[int(n)]]))
        srng = np.random.default_rng([seed, 1000 + k])
        features = _Features(energy, sem_z, np.array([pos[int(n)] for n in train_ids[k]]),
                             np.array([pos[int(n)] for n in test_ids]))
        for hemi in HEMISPHERES:
            nv = int(round(spec.n_vertices * srng.uniform(0.9, 1.1)))
            if templates:
                nv = spec.n_vertices
            _write_hemisphere(sdir, hemi, nv, srng, features, templates.get(hemi), spec.alignment, on_cortex)

    # Captions keyed by file name (names embed the NSD id, so one name = one image).
    import pyarrow as pa
    import pyarrow.csv as pcsv

    uniq = dict(cap_rows)
    pcsv.write_csv(pa.table({"image": list(uniq), "caption": list(uniq.values())}), root / "captions.csv")


def _choose_images(spec: ImageDatasetSpec) -> tuple[np.ndarray, list[np.ndarray]]:
    """NSD ids of the test images (shared by all subjects) and of each subject's training images (a
    ``shared_train_fraction`` of them shared), sorted."""
    rng = np.random.default_rng(spec.seed)
    n_test = spec.n_test
    n_shared = int(round(spec.n_train * spec.shared_train_fraction))
    n_unique = spec.n_train - n_shared
    total = n_test + n_shared + spec.n_subjects * n_unique
    if total > 73000:
        raise ValueError(f"{total} distinct images requested; NSD ids stop at 73,000")
    ids = rng.choice(73000, size=total, replace=False)
    test_ids = np.sort(ids[:n_test])
    shared_ids = ids[n_test : n_test + n_shared]
    train_ids = [
        np.sort(np.concatenate([shared_ids, ids[n_test + n_shared + k * n_unique : n_test + n_shared + (k + 1) * n_unique]]))
        for k in range(spec.n_subjects)
    ]
    return test_ids, train_ids


def _render_all(all_ids: np.ndarray, seed: int, size: int, workers: int | None, progress: bool):
    """Render each distinct image once: PNG bytes, low-level energy, semantic features, captions."""
    from tqdm.auto import tqdm

    energy = np.zeros((len(all_ids), _GRID * _GRID), np.float32)
    sem = np.zeros((len(all_ids), len(SEMANTIC_NAMES)), np.float32)
    pngs: list[bytes] = [b""] * len(all_ids)
    captions: list[str] = [""] * len(all_ids)
    jobs = [(int(n), seed, size) for n in all_ids]
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="render scenes", unit="img", disable=not progress)
    if n_workers > 1 and len(jobs) > 200:
        with ProcessPoolExecutor(n_workers) as ex:
            results = ex.map(_render_one, jobs, chunksize=32)
            for i, res in enumerate(results):
                pngs[i], energy[i], sem[i], captions[i] = res
                bar.update()
    else:
        for i, job in enumerate(jobs):
            pngs[i], energy[i], sem[i], captions[i] = _render_one(job)
            bar.update()
    bar.close()
    return pngs, energy, sem, captions


def _assign_rois(nv: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random ROI labels per family (families do not overlap), and the streams labels."""
    order = rng.permutation(nv)
    labels = {fam: np.zeros(nv, np.int32) for fam in ROI_DEFS}
    start = 0
    for fam, (frac, mapping) in ROI_DEFS.items():
        n = int(round(frac * nv))
        idx = order[start : start + n]
        n_lab = len(mapping) - 1
        labels[fam][idx] = 1 + (np.arange(n) * n_lab) // max(n, 1)  # contiguous blocks per label
        start += n
    streams = np.zeros(nv, np.int32)
    prf = labels["prf-visualrois"]
    streams[(prf >= 1) & (prf <= 4)] = 1  # V1, V2 -> early
    streams[prf >= 5] = 2  # V3, hV4 -> midventral
    streams[labels["floc-faces"] > 0] = 5
    streams[labels["floc-places"] > 0] = 5
    streams[labels["floc-words"] > 0] = 5
    streams[labels["floc-bodies"] > 0] = 6
    rest = order[start:]
    streams[rest] = rng.choice([3, 4, 7], size=len(rest))
    return labels, streams


def _rois_on_cortex(nv: int, rng: np.random.Generator, hemi: str | None):
    """ROI labels and streams (:func:`_assign_rois`) and, with ``hemi``, the vertices placed on fsaverage
    (:func:`._cortex.place`) and put in ascending fsaverage order: the streams of vertices outside the
    category ROIs then follow position (a third each, as drawn: the lowest midlateral, the others midparietal
    if posterior, else parietal). Without ``hemi`` (native space) the placement is None."""
    labels, streams = _assign_rois(nv, rng)
    if hemi is None:
        return labels, streams, None
    regions = {name: np.flatnonzero(labels[fam] == lab)
               for fam, (_, mapping) in ROI_DEFS.items() for lab, name in mapping.items() if lab}
    p = place(hemi, regions, nv, rng)
    order = np.argsort(p.vertex)
    labels = {fam: lab[order] for fam, lab in labels.items()}
    streams = streams[order]
    p = Placement(p.vertex[order], p.cx[order], p.cy[order], p.ecc[order])
    rest = np.flatnonzero(np.isin(streams, (3, 4, 7)))
    pos = position_of(hemi, p.vertex[rest])
    by_z = rest[np.argsort(pos[:, 2], kind="stable")]
    low, high = by_z[: len(rest) // 3], by_z[len(rest) // 3 :]
    streams[low] = 3
    by_y = high[np.argsort(position_of(hemi, p.vertex[high])[:, 1], kind="stable")]
    streams[by_y[: len(high) // 2]], streams[by_y[len(high) // 2 :]] = 4, 7
    return labels, streams, p


def _raw_tuning(nv: int, n_sem: int, rng: np.random.Generator, labels: dict[str, np.ndarray],
                placed: Placement | None = None):
    """pRF centres and sizes, and sparse semantic weights (before the category ROIs' preferences). On the
    cortex, early visual pRF centres come from position and sizes grow with eccentricity (in each area's range)."""
    prf = labels["prf-visualrois"]
    cx, cy = rng.uniform(0.05, 0.95, nv), rng.uniform(0.05, 0.95, nv)
    sigma = rng.uniform(0.15, 0.35, nv)  # coarse low-level tuning outside early visual cortex
    for lab, (lo, hi) in _PRF_SIGMA.items():
        m = prf == lab
        sigma[m] = rng.uniform(lo, hi, m.sum())
        if placed is not None:  # 70 % eccentricity, 30 % the draw
            sigma[m] = lo + (hi - lo) * (0.7 * placed.ecc[m] + 0.3 * (sigma[m] - lo) / (hi - lo))
    if placed is not None:
        ev = np.isfinite(placed.cx)
        cx[ev], cy[ev] = placed.cx[ev], placed.cy[ev]
    W_sem = (rng.normal(0, 0.35, (n_sem, nv)) * (rng.random((n_sem, nv)) < 0.5)).astype(np.float32)
    return cx, cy, sigma, W_sem


def _template(nv: int, n_sem: int, rng: np.random.Generator, hemi: str | None) -> dict:
    """The shared vertex space of aligned subjects: ROI labels, placement (``hemi``: on the cortex) and raw tuning."""
    labels, streams, placed = _rois_on_cortex(nv, rng, hemi)
    cx, cy, sigma, W_sem = _raw_tuning(nv, n_sem, rng, labels, placed)
    return {"labels": labels, "streams": streams, "placed": placed, "cx": cx, "cy": cy, "sigma": sigma, "W_sem": W_sem}


@dataclass(frozen=True)
class _Features:
    """What a subject's responses are made of: the images' low-level energy and z-scored semantic
    features (rows: distinct images), and the rows of the subject's training and test images."""

    energy: np.ndarray  # (images, grid**2) float32
    sem_z: np.ndarray  # (images, semantic features) float32
    rows_train: np.ndarray
    rows_test: np.ndarray


def _write_hemisphere(sdir: Path, hemi: str, nv: int, rng: np.random.Generator, features: _Features,
                      template: dict | None = None, alignment: float = 0.0, on_cortex: bool = False) -> None:
    """ROI masks (with ``on_cortex`` also on fsaverage), responses (training, test), the oracle and the noise
    ceiling of one hemisphere."""
    labels, streams, placed, cx, cy, sigma, W_sem = _vertex_tuning(nv, features.sem_z.shape[1], rng, template,
                                                                   alignment, hemi if on_cortex else None)
    _write_roi_masks(sdir / "roi_masks", hemi, labels, streams, placed)
    # Tuning: low-level pRF weights (pixels x vertices) and semantic weights (features x vertices).
    yy, xx = np.mgrid[0:_GRID, 0:_GRID]
    centres = (np.stack([xx.ravel(), yy.ravel()], 1) + 0.5) / _GRID
    d2 = (centres[:, :1] - cx[None]) ** 2 + (centres[:, 1:] - cy[None]) ** 2
    W_low = np.exp(-d2 / (2 * sigma[None] ** 2)).astype(np.float32)
    W_low /= W_low.sum(0, keepdims=True)
    low_gain, sem_gain, ncsnr = _gains_and_snr(nv, rng, labels, W_sem)
    signal, s_mu, s_sd = _signal(features, W_low, W_sem, low_gain, sem_gain)
    # Single-trial responses have unit variance (as NSD's z-scored betas): signal amplitude a and
    # noise sd b with a / b = ncsnr and a**2 + b**2 = 1.
    amp = (ncsnr / np.sqrt(1 + ncsnr**2)).astype(np.float32)
    noise_sd = (1.0 / np.sqrt(1 + ncsnr**2)).astype(np.float32)

    from numpy.lib.format import open_memmap

    rows_train, rows_test = features.rows_train, features.rows_test
    train_dir = sdir / "training_split" / "training_fmri"
    test_dir = sdir / "test_split" / "test_fmri"
    nc_dir = sdir / "test_split" / "noise_ceiling"
    gt_dir = sdir.parent / "ground_truth" / sdir.name
    for d in (train_dir, test_dir, nc_dir, gt_dir):
        d.mkdir(parents=True, exist_ok=True)
    out_train = open_memmap(train_dir / f"{hemi}_training_fmri.npy", mode="w+", dtype=np.float32, shape=(len(rows_train), nv))
    out_test = open_memmap(test_dir / f"{hemi}_test_fmri.npy", mode="w+", dtype=np.float32, shape=(len(rows_test), nv))
    out_gt = open_memmap(gt_dir / f"{hemi}_pred_test.npy", mode="w+", dtype=np.float32, shape=(len(rows_test), nv))
    out_gt_train = open_memmap(gt_dir / f"{hemi}_train_noiseless.npy", mode="w+", dtype=np.float32,
                               shape=(len(rows_train), nv))
    for rows, out, gt in ((rows_train, out_train, out_gt_train), (rows_test, out_test, out_gt)):
        for start in range(0, len(rows), 1024):
            s = amp * (signal(rows[start : start + 1024]) - s_mu) / s_sd
            noise = rng.standard_normal((_N_REPEATS,) + s.shape, dtype=np.float32).mean(0)
            out[start : start + len(s)] = s + noise_sd * noise
            gt[start : start + len(s)] = s
    for arr in (out_train, out_test, out_gt, out_gt_train):
        arr.flush()
    del out_train, out_test, out_gt, out_gt_train
    nc = noise_ceiling_from_ncsnr(ncsnr, n_three=len(rows_test))
    np.save(nc_dir / f"{hemi}_noise_ceiling.npy", nc.astype(np.float32))


def _vertex_tuning(nv: int, n_sem: int, rng: np.random.Generator, template: dict | None, alignment: float,
                   hemi: str | None = None):
    """ROI labels, streams, placement (``hemi``: on the cortex, else None), pRF centres and sizes and semantic
    weights of a hemisphere: its own, or the template's vertices, ROIs and placement with tuning shared by
    ``alignment`` (see the module docstring)."""
    if template is None:
        labels, streams, placed = _rois_on_cortex(nv, rng, hemi)
        cx, cy, sigma, W_sem = _raw_tuning(nv, n_sem, rng, labels, placed)
    else:  # the template's vertices and ROIs; tuning = shared + individual
        labels, streams, placed = template["labels"], template["streams"], template["placed"]
        _, _, _, W_own = _raw_tuning(nv, n_sem, rng, labels)
        jitter = 0.1 * (1.0 - alignment)
        cx = np.clip(template["cx"] + rng.normal(0, jitter, nv), 0.02, 0.98)
        cy = np.clip(template["cy"] + rng.normal(0, jitter, nv), 0.02, 0.98)
        sigma = template["sigma"]
        W_sem = (alignment * template["W_sem"] + np.sqrt(1.0 - alignment**2) * W_own).astype(np.float32)
    return labels, streams, placed, cx, cy, sigma, W_sem


def _write_roi_masks(roi_dir: Path, hemi: str, labels: dict[str, np.ndarray], streams: np.ndarray,
                     placed: Placement | None = None) -> None:
    """The release's ROI files: labels per vertex and the pickled label -> name mappings; with a placement,
    the vertices' mask and the labels on fsaverage (``fsaverage[vertex] = label``, 0 elsewhere; uint8, the
    labels being small, so that 163,842 values weigh 160 kB a file)."""
    roi_dir.mkdir(exist_ok=True)
    for fam, lab, mapping in [(f, labels[f], m) for f, (_, m) in ROI_DEFS.items()] + [("streams", streams, _STREAMS)]:
        np.save(roi_dir / f"{hemi}.{fam}_challenge_space.npy", lab)
        np.save(roi_dir / f"mapping_{fam}.npy", np.array(mapping, dtype=object), allow_pickle=True)
        if placed is not None:
            full = np.zeros(FSAVERAGE_VERTICES, np.uint8)
            full[placed.vertex] = lab
            np.save(roi_dir / f"{hemi}.{fam}_fsaverage_space.npy", full)
    if placed is not None:
        mask = np.zeros(FSAVERAGE_VERTICES, np.uint8)
        mask[placed.vertex] = 1
        np.save(roi_dir / f"{hemi}.all-vertices_fsaverage_space.npy", mask)


def _gains_and_snr(nv: int, rng: np.random.Generator, labels: dict[str, np.ndarray], W_sem: np.ndarray):
    """Low-level and semantic gains per vertex (early visual: low-level; category ROIs: their category,
    set in ``W_sem`` in place) and the noise-ceiling SNR per vertex."""
    prf = labels["prf-visualrois"]
    low_gain = np.full(nv, 0.6, np.float32)
    sem_gain = np.ones(nv, np.float32)
    early = prf > 0
    low_gain[early], sem_gain[early] = 1.0, 0.15
    log_mu = np.full(nv, np.log(0.35))
    log_mu[early] = np.log(0.9)
    for fam, feat in _PREFERRED.items():
        m = labels[fam] > 0
        W_sem[:, m] *= 0.4
        W_sem[SEMANTIC_NAMES.index(feat), m] = rng.uniform(0.8, 1.4, m.sum())
        low_gain[m] = 0.25
        log_mu[m] = np.log(0.75)
    ncsnr = np.exp(rng.normal(log_mu, 0.55))
    ncsnr[rng.random(nv) < 0.05] = rng.uniform(0.0, 0.05)  # a few vertices carry (almost) no signal
    ncsnr = np.clip(ncsnr, 0.0, 3.0)
    return low_gain, sem_gain, ncsnr


def _signal(features: _Features, W_low: np.ndarray, W_sem: np.ndarray, low_gain: np.ndarray, sem_gain: np.ndarray):
    """``signal(rows)`` (images x vertices: the compressive low-level and the rectified semantic drive, each
    normalized over the subject's images) and its mean and standard deviation over those images."""
    energy, sem_z = features.energy, features.sem_z

    def signal(rows: np.ndarray) -> np.ndarray:
        low = np.sqrt(energy[rows] @ W_low)  # compressive spatial summation
        low = (low - low_mu) / low_sd
        sem = sem_z[rows] @ W_sem
        sem = np.log1p(np.exp(sem))  # softplus: responses rectify
        sem = (sem - sem_mu) / sem_sd
        return low_gain * low + sem_gain * sem

    nv = W_low.shape[1]
    # Normalization statistics over this subject's images (train + test), in chunks.
    all_rows = np.concatenate([features.rows_train, features.rows_test])
    acc = np.zeros((4, nv))
    for start in range(0, len(all_rows), 1024):
        r = all_rows[start : start + 1024]
        low = np.sqrt(energy[r] @ W_low)
        sem = np.log1p(np.exp(sem_z[r] @ W_sem))
        acc += [low.sum(0), (low.astype(np.float64) ** 2).sum(0), sem.sum(0), (sem.astype(np.float64) ** 2).sum(0)]
    n = len(all_rows)
    low_mu, sem_mu = acc[0] / n, acc[2] / n
    low_sd = np.sqrt(np.maximum(acc[1] / n - low_mu**2, 1e-12))
    sem_sd = np.sqrt(np.maximum(acc[3] / n - sem_mu**2, 1e-12))
    low_mu, low_sd, sem_mu, sem_sd = (a.astype(np.float32) for a in (low_mu, low_sd, sem_mu, sem_sd))
    # The combined signal is rescaled to unit variance so that ncsnr = 1 / noise sd.
    acc2 = np.zeros((2, nv))
    for start in range(0, len(all_rows), 1024):
        s = signal(all_rows[start : start + 1024]).astype(np.float64)
        acc2 += [s.sum(0), (s**2).sum(0)]
    s_mu = (acc2[0] / n).astype(np.float32)
    s_sd = np.sqrt(np.maximum(acc2[1] / n - (acc2[0] / n) ** 2, 1e-12)).astype(np.float32)
    return signal, s_mu, s_sd
