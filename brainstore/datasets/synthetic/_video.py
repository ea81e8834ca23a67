"""Synthetic video fMRI dataset: continuous runs, one movie clip per run (as Nishimoto 2011, Huth 2012).

The generator is a fully known stand-in for a natural-movie experiment:

* clips: training clips ``run-01`` ... ``run-NN`` are each shown once, the ``test`` clip is shown in
  ``n_test_repeats`` separate runs. A clip is a sequence of segments of 2-6 s; in each one object of a
  category (:data:`CATEGORIES`: face, body, car, animal, text) moves at a constant speed over a static
  background of a place type (:data:`PLACES`: indoor, outdoor, water, texture), bouncing off the frame's
  edges. Frames are RGB uint8 with mild pixel noise (sd 3 grey levels);
* per-frame latents: category and place one-hots, speed and velocity, and on a coarse 8 x 8 grid of
  retinotopic cells the contrast energy (mean luminance-gradient magnitude) and a motion-energy proxy
  (mean absolute temporal difference of luminance), both of the noise-free frames; TR ``k`` of a clip
  averages the latents of its frames with time in ``[k tr, (k + 1) tr)`` (frame ``j`` is at ``j / fps``);
* vertices, per hemisphere: early visual (``visual``: V1, V2) pool contrast energy in a Gaussian
  population receptive field with a compressive square root; ``motion`` (MT) pools motion energy in a
  large pRF and is tuned to speed with a preferred direction; ``categories`` (FFA, EBA, cars, animals)
  prefer faces, bodies, cars, animals; ``places`` (PPA) weigh each place type (indoor and outdoor most,
  textures least); every vertex also carries weak mixed tuning to the other latents, and the vertices
  outside the ROIs only that. The drive (TRs x vertices) is z-scored over the experiment's TRs;
* BOLD: each acquisition run's drive is convolved with SPM's canonical double-gamma HRF (:func:`hrf`)
  from rest (zero before the run: causal, so a run's first TR is exactly 0 in the noiseless BOLD), scaled
  to unit variance over the experiment, times ``amp = snr / sqrt(1 + snr**2)``, plus white Gaussian noise
  of sd ``1 / sqrt(1 + snr**2)`` drawn anew for every run (a test repeat differs from another only in
  noise). The per-vertex SNR is log-normal (higher in the ROIs), a few vertices carry (almost) no signal;
* ``ground_truth/subjNN/{lh,rh}_pred_test.npy`` holds the noiseless test BOLD (the oracle, TR order)
  and ``{lh,rh}_train_noiseless.npy`` the noiseless training BOLD in trial order.

Every subject watches the same clips, with its own vertices (``n_vertices`` +-10 %), ROI layout, tuning
and noise. The vertices sit on the cortex (:mod:`._cortex`): each hemisphere's on distinct fsaverage vertices
among fsaverage5's (the first 10,242), ``space/{subject}/{hemi}.vertices.npy`` holding the fsaverage vertex of
every response column (columns in ascending vertex order) and the description declaring ``space:``; V1 and
V2 lie along the calcarine sulcus with pRF centres from position (eccentricity from the occipital pole, polar
angle across the areas, the contralateral hemifield; sizes grow with eccentricity), MT, the category areas
and PPA are compact patches where they usually are. With ``n_vertices`` above 9,311 (a hemisphere may then
exceed 10,242) the dataset stays in native space: no vertex files, no ``space:``. Everything is a
deterministic function of the seed. The dataset is built in a temporary sibling folder and renamed into
place at the end: an interrupted run leaves nothing half written.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._layout import HEMISPHERES
from .._timeseries import frames_of_tr
from ._cortex import Placement, fits
from ._cortex import place as place_vertices
from ._folder import build_folder
from ._movie import CATEGORIES, GRID, PIXEL_NOISE, PLACES, render_clip

__all__ = ["make_video_dataset", "VideoDatasetSpec", "hrf", "CATEGORIES", "PLACES", "ROI_DEFS"]

# family -> (fraction of vertices per label, label -> ROI name); families do not overlap.
ROI_DEFS: dict[str, tuple[float, dict[int, str]]] = {
    "visual": (0.10, {1: "V1", 2: "V2"}),
    "motion": (0.15, {1: "MT"}),
    "categories": (0.05, {1: "FFA", 2: "EBA", 3: "cars", 4: "animals"}),
    "places": (0.08, {1: "PPA"}),
}
_PREFERRED = {1: "face", 2: "body", 3: "car", 4: "animal"}  # category of each `categories` label


def hrf(tr: float, length: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma haemodynamic response sampled every ``tr`` seconds.

    ``h(t) = (g(t; 6) - g(t; 16) / 6) / c`` with ``g(t; k)`` the gamma density of shape ``k`` and unit
    scale (response peak near 5 s, undershoot near 15 s) and ``c`` such that ``h`` integrates to 1 over
    ``[0, length]`` (so a sustained unit drive gives a unit plateau).

    Parameters
    ----------
    tr : float
        Sampling interval, seconds (> 0).
    length : float
        Duration covered, seconds.

    Returns
    -------
    h : array of shape (floor(length / tr) + 1,)
        ``h[j]`` = h(j tr), per second (``h[0]`` = 0).
    """
    from scipy.stats import gamma

    if not (tr > 0 and math.isfinite(tr)):
        raise ValueError(f"tr must be a positive number of seconds, got {tr!r}")
    t = np.arange(int(math.floor(length / tr + 1e-9)) + 1) * float(tr)
    h = gamma.pdf(t, 6) - gamma.pdf(t, 16) / 6.0
    return h / (gamma.cdf(length, 6) - gamma.cdf(length, 16) / 6.0)


@dataclass(frozen=True)
class VideoDatasetSpec:
    """What :func:`make_video_dataset` generates (its arguments of the same names, checked on
    construction; ``tr`` as a float); ``synthetic.json`` records it."""

    n_subjects: int
    n_train_runs: int  # training clips, each shown in one run
    trs_per_run: int  # TRs per clip
    n_test_repeats: int  # runs showing the test clip
    tr: float  # seconds per TR
    fps: float  # frames per second
    frame_size: int  # side of the square RGB frames, pixels
    n_vertices: int  # typical vertices per hemisphere (+-10 % per subject and hemisphere)
    seed: int

    def __post_init__(self):
        for name, lo in (("n_subjects", 1), ("n_train_runs", 2), ("trs_per_run", 10), ("n_test_repeats", 2),
                         ("frame_size", 32), ("n_vertices", 100), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                why = {"n_train_runs": " (cross-validation holds out whole clips)", "trs_per_run": " (the HRF spans 32 s)",
                       "n_test_repeats": " (noise ceilings come from repeats)",
                       "frame_size": " (objects must stay recognizable)",
                       "n_vertices": " (each category ROI holds 5 % of them)"}.get(name, "")
                raise ValueError(f"{name} must be an integer >= {lo}{why}, got {v!r}")
        tr, fps = self.tr, self.fps
        if not (isinstance(tr, (int, float)) and 0 < tr <= 8):
            raise ValueError(f"tr must be a number of seconds in (0, 8] (the HRF is sampled every TR), got {tr!r}")
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0) or tr * fps < 1 - 1e-9:
            raise ValueError(f"fps must be a positive number of frames per second with at least one frame per TR "
                             f"(tr * fps >= 1), got fps={fps!r} with tr={tr!r}")
        object.__setattr__(self, "tr", float(tr))


def make_video_dataset(
    root: str | Path,
    *,
    n_subjects: int = 1,
    n_train_runs: int = 6,
    trs_per_run: int = 50,
    n_test_repeats: int = 3,
    tr: float = 2.0,
    fps: float = 8,
    frame_size: int = 64,
    n_vertices: int = 600,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic video fMRI dataset (a described dataset) to ``root`` and return its path.

    Parameters
    ----------
    root : path
        Target folder; must not exist (or be empty) unless ``overwrite``.
    n_subjects : int
        Subjects ``subj01`` ...; all watch the same clips.
    n_train_runs : int
        Training clips (``run-01`` ...), each shown in one run.
    trs_per_run : int
        TRs per clip (every run shows one whole clip).
    n_test_repeats : int
        Runs showing the ``test`` clip (``test-1`` ...); their noise differs, nothing else.
    tr : float
        Seconds per TR.
    fps : float
        Frames per second; a clip has ``ceil(trs_per_run * tr * fps)`` frames.
    frame_size : int
        Side of the square RGB frames, pixels.
    n_vertices : int
        Typical vertices per hemisphere; each subject/hemisphere varies by +-10 %.
    seed : int
        Everything (clips, ROIs, tuning, noise) is a deterministic function of the seed.
    overwrite : bool
        Replace a non-empty ``root``.
    progress : bool
        Show progress bars.

    Returns
    -------
    root : Path
        The dataset folder, holding ``brainstore-dataset.yaml``.
    """
    spec = VideoDatasetSpec(n_subjects, n_train_runs, trs_per_run, n_test_repeats, tr, fps, frame_size, n_vertices,
                            seed)

    def fill(tmp: Path) -> None:
        t0 = time.time()
        info = _generate(tmp, spec, progress)
        (tmp / "synthetic.json").write_text(json.dumps({
            "generator": "brainstore.datasets.make_video_dataset", **asdict(spec), **info,
            "categories": list(CATEGORIES), "places": list(PLACES), "grid": GRID, "pixel_noise_sd": PIXEL_NOISE,
            "seconds": round(time.time() - t0, 2),
        }, indent=2))

    return build_folder(root, overwrite, fill)


def _generate(root: Path, spec: VideoDatasetSpec, progress: bool) -> dict:
    from tqdm.auto import tqdm

    tr, trs_per_run = spec.tr, spec.trs_per_run
    # The last TR's frames end at ceil(trs tr fps) (round() would drop it when trs tr fps is not whole).
    n_frames = frames_of_tr(trs_per_run - 1, spec.fps, tr)[1]
    clips = [f"run-{i + 1:02d}" for i in range(spec.n_train_runs)] + ["test"]
    lat_all = _render_clips(root, spec, clips, n_frames, progress)
    _write_csv(root / "clips.csv", {"clip": clips, "first_frame": [c * n_frames for c in range(len(clips))],
                                    "n_frames": [n_frames] * len(clips),
                                    "split": ["train"] * spec.n_train_runs + ["test"]})

    # Acquisition runs: each training clip once, then the test clip n_test_repeats times.
    runs = ([(name, name, "train") for name in clips[:-1]]
            + [("test", f"test-{i + 1}", "test") for i in range(spec.n_test_repeats)])
    trials = {"stimulus_id": [], "session": [], "run": [], "split": [], "onset": []}
    for clip, run, split in runs:
        for k in range(trs_per_run):
            trials["stimulus_id"].append(f"{clip}/tr{k:04d}")
            trials["session"].append("ses-01")
            trials["run"].append(run)
            trials["split"].append(split)
            trials["onset"].append(round(k * tr, 6))
    run_clip = np.array([clips.index(clip) for clip, _, _ in runs])
    h = hrf(tr) * tr  # Riemann weights: BOLD[k] = sum_j h(j tr) tr drive[k - j]
    subjects = [f"subj{k + 1:02d}" for k in range(spec.n_subjects)]
    on_cortex = fits(int(round(spec.n_vertices * 1.1)))  # the largest hemisphere fits fsaverage5
    bar = tqdm(total=spec.n_subjects * len(HEMISPHERES), desc="subjects", unit="hemi", disable=not progress)
    for k, subj in enumerate(subjects):
        _write_csv(root / "trials" / f"{subj}.csv", trials)
        srng = np.random.default_rng([spec.seed, 1, k])
        for hemi in HEMISPHERES:
            nv = int(round(spec.n_vertices * srng.uniform(0.9, 1.1)))
            _write_hemisphere(root, subj, hemi, nv, srng, lat_all, len(clips), trs_per_run, run_clip, h, on_cortex)
            bar.update()
    bar.close()
    (root / "brainstore-dataset.yaml").write_text(_description(tr, spec.fps, subjects, on_cortex))
    return {"frames_per_clip": n_frames, "total_frames": len(clips) * n_frames, "n_trials": len(runs) * trs_per_run,
            "roi_fractions": {f: frac * (len(m)) for f, (frac, m) in ROI_DEFS.items()}}


def _render_clips(root: Path, spec: VideoDatasetSpec, clips: list[str], n_frames: int, progress: bool) -> np.ndarray:
    """Render every clip into ``stimuli/frames.npy`` and its per-frame truth into ``truth/frames.parquet``;
    return the latents averaged per TR, (clips * trs, latents): training clips in order, then the test clip."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    S = spec.frame_size
    (root / "stimuli").mkdir()
    (root / "truth").mkdir()
    frames = open_memmap(root / "stimuli" / "frames.npy", mode="w+", dtype=np.uint8, shape=(len(clips) * n_frames, S, S, 3))
    starts = np.array([frames_of_tr(k, spec.fps, spec.tr)[0] for k in range(spec.trs_per_run)])
    lat_tr, truth = [], []
    for c, name in enumerate(tqdm(clips, desc="render clips", unit="clip", disable=not progress)):
        out = frames[c * n_frames : (c + 1) * n_frames]
        lat, tab = render_clip(out, np.random.default_rng([spec.seed, 0, c]), spec.fps)
        counts = np.diff(np.append(starts, n_frames))[:, None]
        lat_tr.append(np.add.reduceat(lat, starts, axis=0) / counts)  # TR averages of the frame latents
        tab["clip"] = [name] * n_frames
        truth.append(tab)
    frames.flush()
    del frames
    cols = ["clip", "frame", "segment", "category", "place", "speed", "direction", "x", "y", "size"]
    table = {k: sum((t[k] for t in truth), []) if k in ("clip", "category", "place") else np.concatenate([t[k] for t in truth])
             for k in cols}
    arrays = {k: pa.array(v) for k, v in table.items()}
    for k in ("motion_energy", "contrast_energy"):
        v = np.concatenate([t[k] for t in truth]).astype(np.float32)
        arrays[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1])
    pq.write_table(pa.table(arrays), root / "truth" / "frames.parquet")
    return np.concatenate(lat_tr)


def _write_csv(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    path.parent.mkdir(parents=True, exist_ok=True)
    pcsv.write_csv(pa.table(columns), path)


def _description(tr: float, fps: float, subjects: list[str], on_cortex: bool = False) -> str:
    def fam(f: str) -> str:
        mapping = ", ".join(f"{k}: {v}" for k, v in ROI_DEFS[f][1].items())
        # (quoted: a "{" inside a flow mapping's plain scalar is not YAML)
        return f'  {f}: {{lh: "rois/{{subject}}/lh.{f}.npy", rh: "rois/{{subject}}/rh.{f}.npy", mapping: {{{mapping}}}}}\n'

    return ("# Synthetic video fMRI (brainstore make-dataset --kind video): continuous runs, one clip per run\n"
            "name: synthetic-video\n"
            "timeseries:\n"
            f"  tr: {float(tr)!r}            # seconds\n"
            f"  fps: {fps:g}             # frames per second of stimuli/frames.npy\n"
            "  frames: {array: stimuli/frames.npy}\n"
            "  clips: clips.csv\n"
            "zscore: run\n"
            "trials: trials/{subject}.csv\n"
            "responses:\n"
            "  lh: responses/{subject}/lh.npy\n"
            "  rh: responses/{subject}/rh.npy\n"
            "rois:\n" + "".join(fam(f) for f in ROI_DEFS) +
            "noise_ceiling: from_repeats\n"
            + ("space:\n"
               "  surface: fsaverage\n"
               '  vertices: {lh: "space/{subject}/lh.vertices.npy", rh: "space/{subject}/rh.vertices.npy"}\n'
               if on_cortex else "") +
            "ground_truth: ground_truth\n"
            f"subjects: [{', '.join(subjects)}]\n")


# --------------------------------------------------------------------------- vertices


def _assign_rois(nv: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ROI labels per family (families do not overlap; each label a contiguous block of a permutation)."""
    order = rng.permutation(nv)
    labels, start = {}, 0
    for fam, (frac, mapping) in ROI_DEFS.items():
        labels[fam] = np.zeros(nv, np.int32)
        for lab in mapping:
            n = max(1, int(round(frac * nv)))
            labels[fam][order[start : start + n]] = lab
            start += n
    return labels


def _rois_on_cortex(root: Path, subj: str, hemi: str, nv: int, rng: np.random.Generator, on_cortex: bool):
    """ROI labels (:func:`_assign_rois`), written; with ``on_cortex`` the vertices placed on fsaverage
    (:func:`._cortex.place`), put in ascending vertex order and their vertices written too. Returns the labels
    and the placement (None in native space)."""
    labels, placed = _assign_rois(nv, rng), None
    if on_cortex:
        regions = {name: np.flatnonzero(labels[fam] == lab)
                   for fam, (_, m) in ROI_DEFS.items() for lab, name in m.items()}
        placed = place_vertices(hemi, regions, nv, rng)
        order = np.argsort(placed.vertex)
        labels = {fam: lab[order] for fam, lab in labels.items()}
        placed = Placement(placed.vertex[order], placed.cx[order], placed.cy[order], placed.ecc[order])
        (root / "space" / subj).mkdir(parents=True, exist_ok=True)
        np.save(root / "space" / subj / f"{hemi}.vertices.npy", placed.vertex.astype(np.int64))
    (root / "rois" / subj).mkdir(parents=True, exist_ok=True)
    for fam, lab in labels.items():
        np.save(root / "rois" / subj / f"{hemi}.{fam}.npy", lab)
    return labels, placed


def _prfs(nv: int, rng: np.random.Generator, labels: dict[str, np.ndarray], placed: Placement | None) -> tuple:
    """pRF centres and sizes on the cell grid (frame widths): small in V1, larger in V2, large in MT and
    elsewhere; on the cortex V1 and V2 centres come from position and their sizes grow with eccentricity."""
    vis, mt = labels["visual"], labels["motion"] > 0
    cx, cy = rng.uniform(0.05, 0.95, nv), rng.uniform(0.05, 0.95, nv)
    sigma = rng.uniform(0.2, 0.4, nv)
    for lab, (lo, hi) in ((1, (0.06, 0.12)), (2, (0.1, 0.18))):
        m = vis == lab
        sigma[m] = rng.uniform(lo, hi, m.sum())
        if placed is not None:  # 70 % eccentricity, 30 % the draw
            sigma[m] = lo + (hi - lo) * (0.7 * placed.ecc[m] + 0.3 * (sigma[m] - lo) / (hi - lo))
    sigma[mt] = rng.uniform(0.25, 0.45, mt.sum())
    if placed is not None:
        ev = np.isfinite(placed.cx)
        cx[ev], cy[ev] = placed.cx[ev], placed.cy[ev]
    return cx, cy, sigma


def _write_hemisphere(root: Path, subj: str, hemi: str, nv: int, rng: np.random.Generator, lat: np.ndarray,
                      n_clips: int, trs: int, run_clip: np.ndarray, h: np.ndarray, on_cortex: bool = False) -> None:
    """ROIs (and with ``on_cortex`` the vertices on fsaverage), tuning, noiseless BOLD per clip and noisy
    responses per acquisition run of one hemisphere."""
    labels, placed = _rois_on_cortex(root, subj, hemi, nv, rng, on_cortex)
    nc, npl, G2 = len(CATEGORIES), len(PLACES), GRID * GRID
    cat, place = lat[:, :nc], lat[:, nc : nc + npl]
    speed, vx, vy = (lat[:, nc + npl + i] for i in range(3))
    ce, me = lat[:, nc + npl + 3 : nc + npl + 3 + G2], lat[:, nc + npl + 3 + G2 :]
    vis, mt, cats, ppa = labels["visual"], labels["motion"] > 0, labels["categories"], labels["places"] > 0

    cx, cy, sigma = _prfs(nv, rng, labels, placed)
    g = (np.arange(GRID) + 0.5) / GRID
    gx, gy = np.meshgrid(g, g)
    d2 = (gx.ravel()[:, None] - cx[None]) ** 2 + (gy.ravel()[:, None] - cy[None]) ** 2
    W_prf = np.exp(-d2 / (2 * sigma[None] ** 2))
    W_prf /= W_prf.sum(0, keepdims=True)

    # Gains of the low-level terms and weights over categories and places: weak and mixed by default.
    g_ce, g_me, g_mo = (np.abs(rng.normal(0, 0.3, nv)) for _ in range(3))
    W_cat = rng.normal(0, 0.35, (nc, nv)) * (rng.random((nc, nv)) < 0.5)
    W_pl = rng.normal(0, 0.35, (npl, nv)) * (rng.random((npl, nv)) < 0.5)
    roi = (vis > 0) | mt | (cats > 0) | ppa
    W_cat[:, roi] *= 0.3
    W_pl[:, roi] *= 0.3
    m = vis > 0
    g_ce[m], g_me[m], g_mo[m] = rng.uniform(0.8, 1.2, m.sum()), rng.uniform(0.1, 0.3, m.sum()), 0.05
    g_ce[mt], g_me[mt], g_mo[mt] = 0.15, rng.uniform(0.6, 1.0, mt.sum()), rng.uniform(0.5, 0.9, mt.sum())
    for lab, name in _PREFERRED.items():
        m = cats == lab
        W_cat[CATEGORIES.index(name), m] = rng.uniform(0.8, 1.4, m.sum())
        g_ce[m], g_me[m], g_mo[m] = 0.2, 0.1, 0.05
    for name, (lo, hi) in {"indoor": (0.7, 1.3), "outdoor": (0.7, 1.3), "water": (0.4, 1.0), "texture": (-0.3, 0.1)}.items():
        W_pl[PLACES.index(name), ppa] = rng.uniform(lo, hi, ppa.sum())
    g_ce[ppa], g_me[ppa], g_mo[ppa] = 0.25, 0.1, 0.05
    pref_dir = rng.uniform(0, 2 * np.pi, nv)
    dir_sel = np.where(mt, rng.uniform(0.3, 0.8, nv), 0.0)

    def z(x: np.ndarray) -> np.ndarray:
        sd = x.std(0)
        return np.where(sd > 1e-12, (x - x.mean(0)) / np.where(sd > 1e-12, sd, 1.0), 0.0)

    mo = speed[:, None] + dir_sel * (vx[:, None] * np.cos(pref_dir) + vy[:, None] * np.sin(pref_dir))
    drive = (g_ce * z(np.sqrt(ce @ W_prf)) + g_me * z(np.sqrt(me @ W_prf)) + g_mo * z(mo)
             + z(cat) @ W_cat + z(place) @ W_pl)
    drive = z(drive).reshape(n_clips, trs, nv)  # z-scored over the experiment's TRs: rest = the mean drive

    # Causal convolution per clip (every run starts from rest), unit variance over the experiment.
    bold = np.zeros_like(drive)
    for j, hj in enumerate(h[:trs]):
        bold[:, j:] += hj * drive[:, : trs - j]
    bold /= np.maximum(bold.reshape(-1, nv).std(0), 1e-12)

    # Per-vertex SNR (signal sd / noise sd of one TR): log-normal, higher in the ROIs; a few vertices carry none.
    log_mu = np.full(nv, np.log(0.35))
    log_mu[vis > 0], log_mu[mt], log_mu[cats > 0], log_mu[ppa] = np.log(1.0), np.log(0.9), np.log(0.8), np.log(0.8)
    snr = np.exp(rng.normal(log_mu, 0.55))
    dead = rng.random(nv) < 0.05
    snr[dead] = rng.uniform(0.0, 0.05, dead.sum())
    snr = np.clip(snr, 0.0, 3.0)
    amp, noise_sd = snr / np.sqrt(1 + snr**2), 1.0 / np.sqrt(1 + snr**2)
    clean = (amp * bold).astype(np.float32)
    noise = rng.standard_normal((len(run_clip), trs, nv), dtype=np.float32) * noise_sd.astype(np.float32)
    resp = (clean[run_clip] + noise).reshape(-1, nv)

    for d in ("responses", "ground_truth"):
        (root / d / subj).mkdir(parents=True, exist_ok=True)
    np.save(root / "responses" / subj / f"{hemi}.npy", resp.astype(np.float32))
    np.save(root / "ground_truth" / subj / f"{hemi}_pred_test.npy", clean[-1])
    np.save(root / "ground_truth" / subj / f"{hemi}_train_noiseless.npy", clean[:-1].reshape(-1, nv))

