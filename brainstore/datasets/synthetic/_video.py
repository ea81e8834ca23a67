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
and noise. Everything is a deterministic function of the seed. The dataset is built in a temporary
sibling folder and renamed into place at the end: an interrupted run leaves nothing half written.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from .._layout import HEMISPHERES
from .._timeseries import frames_of_tr
from ._images import build_folder

__all__ = ["make_video_dataset", "hrf", "CATEGORIES", "PLACES", "ROI_DEFS"]

CATEGORIES: tuple[str, ...] = ("face", "body", "car", "animal", "text")
PLACES: tuple[str, ...] = ("indoor", "outdoor", "water", "texture")
# family -> (fraction of vertices per label, label -> ROI name); families do not overlap.
ROI_DEFS: dict[str, tuple[float, dict[int, str]]] = {
    "visual": (0.10, {1: "V1", 2: "V2"}),
    "motion": (0.15, {1: "MT"}),
    "categories": (0.05, {1: "FFA", 2: "EBA", 3: "cars", 4: "animals"}),
    "places": (0.08, {1: "PPA"}),
}
_PREFERRED = {1: "face", 2: "body", 3: "car", 4: "animal"}  # category of each `categories` label
_GRID = 8  # retinotopic cells per side for contrast and motion energy
_PIXEL_NOISE = 3.0  # sd of the per-frame pixel noise, grey levels
_WORDS = ("STOP", "TAXI", "BOOK", "NEWS", "EXIT", "CAFE", "OPEN", "BANK", "ZOO", "BUS")
_SKIN = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


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
    for name, v, lo in (("n_subjects", n_subjects, 1), ("n_train_runs", n_train_runs, 2), ("trs_per_run", trs_per_run, 10),
                        ("n_test_repeats", n_test_repeats, 2), ("frame_size", frame_size, 32), ("n_vertices", n_vertices, 100),
                        ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            why = {"n_train_runs": " (cross-validation holds out whole clips)", "trs_per_run": " (the HRF spans 32 s)",
                   "n_test_repeats": " (noise ceilings come from repeats)", "frame_size": " (objects must stay recognizable)",
                   "n_vertices": " (each category ROI holds 5 % of them)"}.get(name, "")
            raise ValueError(f"{name} must be an integer >= {lo}{why}, got {v!r}")
    if not (isinstance(tr, (int, float)) and 0 < tr <= 8):
        raise ValueError(f"tr must be a number of seconds in (0, 8] (the HRF is sampled every TR), got {tr!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0) or tr * fps < 1 - 1e-9:
        raise ValueError(f"fps must be a positive number of frames per second with at least one frame per TR "
                         f"(tr * fps >= 1), got fps={fps!r} with tr={tr!r}")
    params = {"n_subjects": n_subjects, "n_train_runs": n_train_runs, "trs_per_run": trs_per_run,
              "n_test_repeats": n_test_repeats, "tr": float(tr), "fps": fps, "frame_size": frame_size,
              "n_vertices": n_vertices, "seed": seed}

    def fill(tmp: Path) -> None:
        t0 = time.time()
        info = _generate(tmp, progress=progress, **params)
        (tmp / "synthetic.json").write_text(json.dumps({
            "generator": f"{__name__}.make_video_dataset", **params, **info,
            "categories": list(CATEGORIES), "places": list(PLACES), "grid": _GRID, "pixel_noise_sd": _PIXEL_NOISE,
            "seconds": round(time.time() - t0, 2),
        }, indent=2))

    return build_folder(root, overwrite, fill)


# --------------------------------------------------------------------------- clips


def _generate(root: Path, *, n_subjects: int, n_train_runs: int, trs_per_run: int, n_test_repeats: int, tr: float,
              fps: float, frame_size: int, n_vertices: int, seed: int, progress: bool) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    # The last TR's frames end at ceil(trs tr fps) (round() would drop it when trs tr fps is not whole).
    n_frames = frames_of_tr(trs_per_run - 1, fps, tr)[1]
    clips = [f"run-{i + 1:02d}" for i in range(n_train_runs)] + ["test"]
    S = frame_size
    (root / "stimuli").mkdir()
    (root / "truth").mkdir()
    frames = open_memmap(root / "stimuli" / "frames.npy", mode="w+", dtype=np.uint8, shape=(len(clips) * n_frames, S, S, 3))
    starts = np.array([frames_of_tr(k, fps, tr)[0] for k in range(trs_per_run)])
    lat_tr, truth = [], []
    for c, name in enumerate(tqdm(clips, desc="render clips", unit="clip", disable=not progress)):
        out = frames[c * n_frames : (c + 1) * n_frames]
        lat, tab = _render_clip(out, np.random.default_rng([seed, 0, c]), fps)
        counts = np.diff(np.append(starts, n_frames))[:, None]
        lat_tr.append(np.add.reduceat(lat, starts, axis=0) / counts)  # TR averages of the frame latents
        tab["clip"] = [name] * n_frames
        truth.append(tab)
    frames.flush()
    del frames
    lat_all = np.concatenate(lat_tr)  # (clips * trs, latents): training clips in order, then the test clip
    cols = ["clip", "frame", "segment", "category", "place", "speed", "direction", "x", "y", "size"]
    table = {k: sum((t[k] for t in truth), []) if k in ("clip", "category", "place") else np.concatenate([t[k] for t in truth])
             for k in cols}
    arrays = {k: pa.array(v) for k, v in table.items()}
    for k in ("motion_energy", "contrast_energy"):
        v = np.concatenate([t[k] for t in truth]).astype(np.float32)
        arrays[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1])
    pq.write_table(pa.table(arrays), root / "truth" / "frames.parquet")
    _write_csv(root / "clips.csv", {"clip": clips, "first_frame": [c * n_frames for c in range(len(clips))],
                                    "n_frames": [n_frames] * len(clips), "split": ["train"] * n_train_runs + ["test"]})

    # Acquisition runs: each training clip once, then the test clip n_test_repeats times.
    runs = [(name, name, "train") for name in clips[:-1]] + [("test", f"test-{i + 1}", "test") for i in range(n_test_repeats)]
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
    subjects = [f"subj{k + 1:02d}" for k in range(n_subjects)]
    bar = tqdm(total=n_subjects * len(HEMISPHERES), desc="subjects", unit="hemi", disable=not progress)
    for k, subj in enumerate(subjects):
        _write_csv(root / "trials" / f"{subj}.csv", trials)
        srng = np.random.default_rng([seed, 1, k])
        for hemi in HEMISPHERES:
            nv = int(round(n_vertices * srng.uniform(0.9, 1.1)))
            _write_hemisphere(root, subj, hemi, nv, srng, lat_all, len(clips), trs_per_run, run_clip, h)
            bar.update()
    bar.close()
    (root / "brainstore-dataset.yaml").write_text(_description(tr, fps, subjects))
    return {"frames_per_clip": n_frames, "total_frames": len(clips) * n_frames, "n_trials": len(runs) * trs_per_run,
            "roi_fractions": {f: frac * (len(m)) for f, (frac, m) in ROI_DEFS.items()}}


def _write_csv(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    path.parent.mkdir(parents=True, exist_ok=True)
    pcsv.write_csv(pa.table(columns), path)


def _description(tr: float, fps: float, subjects: list[str]) -> str:
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
            "ground_truth: ground_truth\n"
            f"subjects: [{', '.join(subjects)}]\n")


def _render_clip(out: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """Render one clip into ``out`` (n_frames, S, S, 3) uint8; return its per-frame latents and truth columns.

    Latents (n_frames, 5 + 4 + 3 + 2 G**2): category and place one-hots, speed and velocity (vx, vy) in
    frame widths per second, contrast energy and motion energy per cell.
    """
    n, S = out.shape[0], out.shape[1]
    onehot = np.zeros((n, len(CATEGORIES) + len(PLACES)), np.float32)
    motion = np.zeros((n, 3), np.float32)
    tab = {k: np.zeros(n, np.float32) for k in ("speed", "direction", "x", "y", "size")}
    tab["frame"] = np.arange(n, dtype=np.int32)
    tab["segment"] = np.zeros(n, np.int32)
    cat_of, place_of = [""] * n, [""] * n
    a, seg = 0, 0
    while a < n:
        b = min(n, a + max(1, int(round(rng.uniform(2.0, 6.0) * fps))))
        cat, place = int(rng.integers(len(CATEGORIES))), int(rng.integers(len(PLACES)))
        speed = 0.0 if rng.random() < 0.25 else float(rng.uniform(0.05, 0.6)) * S  # pixels per second
        heading = float(rng.uniform(0.0, 360.0))  # degrees, 0 = rightwards, 90 = upwards
        D = int(round(rng.uniform(0.32, 0.45) * S))  # sprite side, pixels
        bg_u8 = _background(PLACES[place], S, rng)
        bg = bg_u8.astype(np.float32)
        rgb, alpha = _sprite(CATEGORIES[cat], D, rng)
        flips = CATEGORIES[cat] in ("car", "animal")  # they face the way they move
        lo, hi = D / 2, S - D / 2
        p0 = rng.uniform(lo, hi, 2)
        t = np.arange(b - a) / fps
        vel = speed * np.array([math.cos(math.radians(heading)), -math.sin(math.radians(heading))])  # image y points down
        pos, sign = _bounce(p0[None] + t[:, None] * vel[None], lo, hi)
        v = sign * vel[None]  # velocity after the bounces, pixels per second (image axes)
        out[a:b] = bg_u8
        xy0 = np.clip(np.round(pos - D / 2), 0, S - D).astype(int)  # sprite corners
        for i in range(b - a):
            x0, y0 = xy0[i]
            spr, al = (rgb[:, ::-1], alpha[:, ::-1]) if flips and v[i, 0] < 0 else (rgb, alpha)
            under = bg[y0 : y0 + D, x0 : x0 + D]
            out[a + i, y0 : y0 + D, x0 : x0 + D] = np.round(under + al * (spr - under)).astype(np.uint8)
        onehot[a:b, cat] = 1.0
        onehot[a:b, len(CATEGORIES) + place] = 1.0
        motion[a:b] = np.column_stack([np.full(b - a, speed), v[:, 0], -v[:, 1]]) / S  # vy upwards positive
        tab["speed"][a:b] = speed
        tab["direction"][a:b] = np.degrees(np.arctan2(-v[:, 1], v[:, 0])) % 360.0 if speed > 0 else heading
        tab["x"][a:b], tab["y"][a:b], tab["size"][a:b] = pos[:, 0] / S, pos[:, 1] / S, D / S
        tab["segment"][a:b] = seg
        cat_of[a:b], place_of[a:b] = [CATEGORIES[cat]] * (b - a), [PLACES[place]] * (b - a)
        a, seg = b, seg + 1
    ce, me = _energies(out)
    noise_rng = np.random.default_rng(rng.integers(2**63))
    for s in range(0, n, 256):  # pixel noise, in chunks (the latents are of the noise-free frames)
        chunk = out[s : s + 256].astype(np.float32)
        chunk += _PIXEL_NOISE * noise_rng.standard_normal(chunk.shape, dtype=np.float32)
        out[s : s + 256] = np.clip(np.round(chunk), 0, 255).astype(np.uint8)
    tab["category"], tab["place"] = cat_of, place_of
    tab["motion_energy"], tab["contrast_energy"] = me, ce
    return np.concatenate([onehot, motion, ce, me], axis=1), tab


def _bounce(p: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``p`` folded into ``[lo, hi]`` (reflection at the edges) and the sign of the velocity."""
    L = max(hi - lo, 1e-9)
    u = np.mod(p - lo, 2 * L)
    return lo + np.where(u <= L, u, 2 * L - u), np.where(u < L, 1.0, -1.0)


def _energies(frames: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Contrast energy and motion energy per retinotopic cell, each (n_frames, G**2) float32.

    Contrast: mean luminance-gradient magnitude in the cell; motion: mean absolute difference of
    luminance from the previous frame (0 for the first frame). Luminance in [0, 1].
    """
    n, S = frames.shape[:2]
    edges = (np.arange(_GRID) * S) // _GRID
    area = np.outer(np.diff(np.append(edges, S)), np.diff(np.append(edges, S))).ravel().astype(np.float32)

    def cells(a: np.ndarray) -> np.ndarray:
        s = np.add.reduceat(np.add.reduceat(a, edges, axis=1), edges, axis=2)
        return s.reshape(len(a), -1) / area

    ce = np.zeros((n, _GRID * _GRID), np.float32)
    me = np.zeros((n, _GRID * _GRID), np.float32)
    prev = None
    for s in range(0, n, chunk):
        lum = frames[s : s + chunk].astype(np.float32) @ (_LUMA / 255.0)
        gy, gx = np.gradient(lum, axis=(1, 2))
        ce[s : s + len(lum)] = cells(np.sqrt(gx**2 + gy**2))
        d = np.abs(np.diff(lum, axis=0, prepend=lum[:1] if prev is None else prev[None]))
        me[s : s + len(lum)] = cells(d)
        prev = lum[-1]
    return ce, me


# --------------------------------------------------------------------------- drawing


def _jitter(rng: np.random.Generator, col: tuple[int, int, int], amount: int = 20) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in col)


def _background(place: str, S: int, rng: np.random.Generator) -> np.ndarray:
    """A static background of a place type, (S, S, 3) uint8 (drawn at twice the size, then reduced)."""
    from PIL import Image, ImageDraw

    W = 2 * S
    img = Image.new("RGB", (W, W))
    d = ImageDraw.Draw(img)
    if place == "indoor":  # a room in perspective: back wall, side walls, ceiling, floor boards, a window or door
        wall = _jitter(rng, [(205, 195, 175), (190, 200, 210), (215, 200, 190), (185, 180, 160)][int(rng.integers(4))])
        x0, x1 = W * rng.uniform(0.22, 0.32), W * rng.uniform(0.68, 0.78)
        y0, y1 = W * rng.uniform(0.15, 0.25), W * rng.uniform(0.58, 0.66)
        d.rectangle([0, 0, W, W], fill=tuple(int(c * 0.85) for c in wall))
        d.polygon([(0, 0), (W, 0), (x1, y0), (x0, y0)], fill=tuple(min(255, int(c * 1.1)) for c in wall))
        floor = _jitter(rng, (140, 95, 55))
        d.polygon([(0, W), (W, W), (x1, y1), (x0, y1)], fill=floor)
        d.rectangle([x0, y0, x1, y1], fill=wall)
        for k in range(1, 8):  # floor boards converging on the back wall
            xb = x0 + (x1 - x0) * k / 8
            d.line([(xb, y1), (xb + (xb - W / 2) * 2.5, W)], fill=tuple(int(c * 0.7) for c in floor), width=2)
        edge = tuple(int(c * 0.6) for c in wall)
        for (xa, ya), (xc, yc) in (((x0, y0), (0, 0)), ((x1, y0), (W, 0)), ((x0, y1), (0, W)), ((x1, y1), (W, W))):
            d.line([(xa, ya), (xc, yc)], fill=edge, width=2)
        d.rectangle([x0, y0, x1, y1], outline=edge, width=2)
        if rng.random() < 0.5:  # window with a cross
            wx, wy, ww = x0 + (x1 - x0) * rng.uniform(0.15, 0.45), y0 + (y1 - y0) * 0.15, (x1 - x0) * 0.35
            d.rectangle([wx, wy, wx + ww, wy + ww * 0.8], fill=(170, 210, 240), outline=(245, 245, 245), width=3)
            d.line([(wx + ww / 2, wy), (wx + ww / 2, wy + ww * 0.8)], fill=(245, 245, 245), width=3)
            d.line([(wx, wy + ww * 0.4), (wx + ww, wy + ww * 0.4)], fill=(245, 245, 245), width=3)
        else:  # door
            dx = x0 + (x1 - x0) * rng.uniform(0.1, 0.65)
            d.rectangle([dx, y0 + (y1 - y0) * 0.3, dx + (x1 - x0) * 0.25, y1], fill=_jitter(rng, (110, 70, 40)))
    elif place == "outdoor":  # sky gradient over a horizon, grass or field, hills, trees, sun
        horizon = int(W * rng.uniform(0.45, 0.65))
        top, low = np.array(_jitter(rng, (80, 140, 225)), float), np.array(_jitter(rng, (195, 222, 245)), float)
        for y in range(horizon):
            d.line([(0, y), (W, y)], fill=tuple(int(c) for c in top + (low - top) * y / max(horizon - 1, 1)))
        ground = _jitter(rng, [(70, 140, 60), (150, 160, 80), (110, 150, 70)][int(rng.integers(3))])
        hill = tuple(int(c * 0.8) for c in ground)
        for _ in range(int(rng.integers(1, 4))):
            cx, w, hgt = W * rng.uniform(0, 1), W * rng.uniform(0.3, 0.7), W * rng.uniform(0.05, 0.15)
            d.pieslice([cx - w / 2, horizon - hgt, cx + w / 2, horizon + hgt], 180, 360, fill=hill)
        d.rectangle([0, horizon, W, W], fill=ground)
        for _ in range(int(rng.integers(0, 4))):
            tx, th = W * rng.uniform(0.05, 0.95), W * rng.uniform(0.12, 0.25)
            d.rectangle([tx - W * 0.012, horizon - th * 0.4, tx + W * 0.012, horizon + 2], fill=(100, 70, 40))
            d.ellipse([tx - th * 0.3, horizon - th, tx + th * 0.3, horizon - th * 0.3], fill=_jitter(rng, (40, 110, 45)))
        if rng.random() < 0.6:
            sx, sy, sr = W * rng.uniform(0.1, 0.9), horizon * rng.uniform(0.15, 0.5), W * 0.06
            d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=(255, 235, 120))
    elif place == "water":  # sky band, a far shore, water with wave stripes denser towards the horizon
        horizon = int(W * rng.uniform(0.28, 0.42))
        top, low = np.array(_jitter(rng, (110, 160, 230)), float), np.array(_jitter(rng, (210, 228, 245)), float)
        for y in range(horizon):
            d.line([(0, y), (W, y)], fill=tuple(int(c) for c in top + (low - top) * y / max(horizon - 1, 1)))
        d.rectangle([0, horizon - W * 0.03, W, horizon], fill=_jitter(rng, (60, 90, 60)))
        deep, near = np.array(_jitter(rng, (40, 100, 165)), float), np.array(_jitter(rng, (20, 60, 120)), float)
        for y in range(horizon, W):
            d.line([(0, y), (W, y)], fill=tuple(int(c) for c in deep + (near - deep) * (y - horizon) / max(W - horizon, 1)))
        crest = _jitter(rng, (150, 195, 235))
        y, k, phase = float(horizon + 3), 0, rng.uniform(0, 2 * np.pi)
        while y < W:
            amp, lam = 1 + (y - horizon) * 0.05, W * (0.15 + 0.25 * (y - horizon) / W)
            xs = np.arange(0, W + 4, 4)
            pts = [(float(x), float(y + amp * np.sin(2 * np.pi * x / lam + phase + k))) for x in xs]
            d.line(pts, fill=crest, width=max(1, int(1 + (y - horizon) / (W * 0.25))))
            y += 3 + (y - horizon) * 0.25
            k += 1
    elif place == "texture":  # no place: a checkerboard, stripes or dots of random colours
        c1 = tuple(int(v) for v in rng.integers(30, 226, 3))
        c2 = tuple(int(v) for v in rng.integers(30, 226, 3))
        d.rectangle([0, 0, W, W], fill=c1)
        kind, step = int(rng.integers(3)), int(W * rng.uniform(0.06, 0.16))
        if kind == 0:
            for i in range(0, W, step):
                for j in range(0, W, step):
                    if (i // step + j // step) % 2:
                        d.rectangle([i, j, i + step - 1, j + step - 1], fill=c2)
        elif kind == 1:
            for i in range(-W, 2 * W, 2 * step):
                d.polygon([(i, 0), (i + step, 0), (i + step - W // 2, W), (i - W // 2, W)], fill=c2)
        else:
            for i in range(step // 2, W, step):
                for j in range(step // 2, W, step):
                    d.ellipse([i - step * 0.3, j - step * 0.3, i + step * 0.3, j + step * 0.3], fill=c2)
    else:  # pragma: no cover - places are closed
        raise ValueError(f"unknown place {place!r}")
    return np.asarray(img.resize((S, S), Image.BOX))


def _sprite(category: str, D: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An object of a category on a transparent square: colour (D, D, 3) and alpha (D, D, 1), float32.

    Drawn at four times the size and reduced (antialiased edges); cars and animals face right.
    """
    from PIL import Image, ImageDraw

    from ._scenes import _font

    W = 4 * D
    img = Image.new("RGBA", (W, W), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    dark = (30, 25, 20, 255)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * W, y0 * W, x1 * W, y1 * W]

    if category == "face":  # skin ellipse, hair, eyes, nose, mouth
        skin = _SKIN[int(rng.integers(len(_SKIN)))] + (255,)
        hair = _jitter(rng, [(40, 25, 15), (110, 70, 30), (200, 170, 90), (20, 20, 20)][int(rng.integers(4))], 10) + (255,)
        d.ellipse(box(0.08, 0.02, 0.92, 0.62), fill=hair)
        d.ellipse(box(0.14, 0.08, 0.86, 0.98), fill=skin, outline=(90, 60, 30, 255), width=max(1, W // 60))
        for ex in (0.34, 0.66):
            d.ellipse(box(ex - 0.09, 0.38, ex + 0.09, 0.5), fill=(250, 250, 250, 255))
            d.ellipse(box(ex - 0.04, 0.4, ex + 0.04, 0.48), fill=dark)
            d.line([(ex - 0.1) * W, 0.33 * W, (ex + 0.1) * W, 0.31 * W], fill=hair, width=max(1, W // 30))
        d.line([0.5 * W, 0.5 * W, 0.46 * W, 0.66 * W, 0.52 * W, 0.67 * W], fill=(120, 70, 40, 255), width=max(1, W // 50))
        d.arc(box(0.32, 0.62, 0.68, 0.84), 20, 160, fill=(170, 40, 40, 255), width=max(1, W // 25))
    elif category == "body":  # stick figure in a pose
        ink = _jitter(rng, [(30, 30, 120), (150, 30, 30), (30, 110, 40), (20, 20, 20)][int(rng.integers(4))], 15) + (255,)
        w = max(2, int(W * 0.07))
        d.ellipse(box(0.4, 0.02, 0.6, 0.2), fill=_SKIN[int(rng.integers(len(_SKIN)))] + (255,))
        d.line([0.5 * W, 0.2 * W, 0.5 * W, 0.58 * W], fill=ink, width=w)
        arm, leg = rng.uniform(-0.12, 0.12, 2), rng.uniform(0.12, 0.25)
        d.line([0.5 * W, 0.28 * W, 0.2 * W, (0.45 + arm[0]) * W], fill=ink, width=w)
        d.line([0.5 * W, 0.28 * W, 0.8 * W, (0.45 + arm[1]) * W], fill=ink, width=w)
        d.line([0.5 * W, 0.58 * W, (0.5 - leg) * W, 0.97 * W], fill=ink, width=w)
        d.line([0.5 * W, 0.58 * W, (0.5 + leg) * W, 0.97 * W], fill=ink, width=w)
    elif category == "car":  # body, cabin with windows, wheels with hubs, headlight
        paint = _jitter(rng, [(200, 30, 35), (30, 80, 190), (240, 200, 30), (230, 230, 230), (40, 40, 45)][int(rng.integers(5))], 15)
        d.polygon([(0.28 * W, 0.48 * W), (0.38 * W, 0.27 * W), (0.68 * W, 0.27 * W), (0.8 * W, 0.48 * W)], fill=paint + (255,))
        d.polygon([(0.33 * W, 0.47 * W), (0.41 * W, 0.31 * W), (0.52 * W, 0.31 * W), (0.52 * W, 0.47 * W)], fill=(170, 210, 240, 255))
        d.polygon([(0.55 * W, 0.47 * W), (0.55 * W, 0.31 * W), (0.66 * W, 0.31 * W), (0.75 * W, 0.47 * W)], fill=(170, 210, 240, 255))
        d.rounded_rectangle(box(0.03, 0.46, 0.97, 0.74), radius=W * 0.05, fill=paint + (255,), outline=dark, width=max(1, W // 80))
        d.rectangle(box(0.9, 0.52, 0.97, 0.58), fill=(255, 240, 150, 255))
        for wx in (0.25, 0.75):
            d.ellipse(box(wx - 0.12, 0.62, wx + 0.12, 0.86), fill=(20, 20, 20, 255))
            d.ellipse(box(wx - 0.05, 0.69, wx + 0.05, 0.79), fill=(170, 170, 170, 255))
    elif category == "animal":  # four-legged: body, head with ear, snout and eye, legs, tail
        fur = _jitter(rng, [(140, 90, 45), (110, 110, 110), (60, 45, 35), (210, 150, 70)][int(rng.integers(4))], 15) + (255,)
        w = max(2, int(W * 0.07))
        for lx in (0.24, 0.36, 0.58, 0.7):
            d.line([lx * W, 0.55 * W, (lx + rng.uniform(-0.04, 0.04)) * W, 0.9 * W], fill=fur, width=w)
        d.line([0.2 * W, 0.45 * W, 0.06 * W, 0.28 * W], fill=fur, width=max(1, w // 2))
        d.ellipse(box(0.15, 0.35, 0.78, 0.62), fill=fur)
        d.ellipse(box(0.66, 0.18, 0.92, 0.44), fill=fur)
        d.polygon([(0.7 * W, 0.24 * W), (0.74 * W, 0.08 * W), (0.8 * W, 0.22 * W)], fill=fur)
        d.ellipse(box(0.84, 0.3, 0.98, 0.4), fill=fur)
        d.ellipse(box(0.94, 0.31, 0.99, 0.36), fill=dark)
        d.ellipse(box(0.78, 0.25, 0.83, 0.3), fill=dark)
    elif category == "text":  # a word on a plate
        plate = _jitter(rng, [(250, 250, 250), (250, 220, 60), (40, 90, 170), (30, 120, 60)][int(rng.integers(4))], 5)
        ink = (0, 0, 0, 255) if sum(plate) > 450 else (255, 255, 255, 255)
        d.rectangle(box(0.0, 0.28, 1.0, 0.72), fill=plate + (255,), outline=dark, width=max(1, W // 60))
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        d.text((W / 2, W / 2), word, fill=ink, font=_font(max(8, int(W * 0.28))), anchor="mm")
    else:  # pragma: no cover - categories are closed
        raise ValueError(f"unknown category {category!r}")
    a = np.asarray(img.resize((D, D), Image.BOX), dtype=np.float32)  # (Pillow resizes RGBA premultiplied)
    return a[..., :3], a[..., 3:] / 255.0


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


def _write_hemisphere(root: Path, subj: str, hemi: str, nv: int, rng: np.random.Generator, lat: np.ndarray,
                      n_clips: int, trs: int, run_clip: np.ndarray, h: np.ndarray) -> None:
    """ROIs, tuning, noiseless BOLD per clip and noisy responses per acquisition run of one hemisphere."""
    labels = _assign_rois(nv, rng)
    rdir = root / "rois" / subj
    rdir.mkdir(parents=True, exist_ok=True)
    for fam, lab in labels.items():
        np.save(rdir / f"{hemi}.{fam}.npy", lab)
    nc, npl, G2 = len(CATEGORIES), len(PLACES), _GRID * _GRID
    cat, place = lat[:, :nc], lat[:, nc : nc + npl]
    speed, vx, vy = (lat[:, nc + npl + i] for i in range(3))
    ce, me = lat[:, nc + npl + 3 : nc + npl + 3 + G2], lat[:, nc + npl + 3 + G2 :]
    vis, mt, cats, ppa = labels["visual"], labels["motion"] > 0, labels["categories"], labels["places"] > 0

    # pRFs on the cell grid (centres and sizes in frame widths): small in V1, larger in V2, large in MT and elsewhere.
    cx, cy = rng.uniform(0.05, 0.95, nv), rng.uniform(0.05, 0.95, nv)
    sigma = rng.uniform(0.2, 0.4, nv)
    sigma[vis == 1] = rng.uniform(0.06, 0.12, (vis == 1).sum())
    sigma[vis == 2] = rng.uniform(0.1, 0.18, (vis == 2).sum())
    sigma[mt] = rng.uniform(0.25, 0.45, mt.sum())
    g = (np.arange(_GRID) + 0.5) / _GRID
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
