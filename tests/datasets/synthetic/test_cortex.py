"""Synthetic vertices on the cortex: the fsaverage files the generators write, checked against nilearn's
fsaverage5 meshes (coordinates, faces, sulcal depth) and against pRF centres estimated from the responses."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset, make_dataset, make_video_dataset

N_FS = 163842  # fsaverage vertices per hemisphere
N_FS5 = 10242  # fsaverage5's: the first N_FS5 of fsaverage
FAMILIES = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams")
PATCH_FAMILIES = ("floc-bodies", "floc-faces", "floc-places", "floc-words")


@pytest.fixture(scope="module")
def mesh():
    """nilearn's bundled fsaverage5: pial and sphere coordinates, the edge graph, sulcal depth per hemisphere."""
    from nilearn.datasets import load_fsaverage, load_fsaverage_data
    from scipy.sparse import coo_matrix

    fs = load_fsaverage("fsaverage5")
    sulc = load_fsaverage_data("fsaverage5", data_type="sulcal").data.parts
    out = {}
    for h, part in (("lh", "left"), ("rh", "right")):
        faces = np.asarray(fs["pial"].parts[part].faces)
        e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(N_FS5, N_FS5)).tocsr()
        out[h] = {"pial": np.asarray(fs["pial"].parts[part].coordinates),
                  "sphere": np.asarray(fs["sphere"].parts[part].coordinates),
                  "adj": adj + adj.T, "sulc": np.asarray(sulc[part])}
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One subject, 300 training images of 64 px, ~1,000 vertices per hemisphere, on the cortex (~4 s)."""
    root = tmp_path_factory.mktemp("cortex") / "img"
    return make_dataset(root, n_subjects=1, n_train=300, n_test=10, n_vertices=1000, seed=2, image_size=64,
                        progress=False, workers=1)


def _columns(root, subject, hemi):
    """The measured fsaverage vertices, as the release reads them: where the mask is 1, in ascending order."""
    mask = np.load(root / subject / "roi_masks" / f"{hemi}.all-vertices_fsaverage_space.npy")
    assert mask.shape == (N_FS,) and set(np.unique(mask)) <= {0, 1}
    return np.flatnonzero(mask)


def _prf_estimates(root, hemi, grid=8):
    """pRF centres (x, y in image units, y downward) estimated from the noiseless training responses: the
    correlation-weighted centre of the image cells whose contrast energy (luminance gradient magnitude,
    computed here from the PNGs) drives the vertex."""
    from PIL import Image

    ds = AlgonautsDataset(root)
    energy = []
    for path in ds.image_files("subj01", "train"):
        a = np.asarray(Image.open(path).convert("L"), float) / 255
        gy, gx = np.gradient(a)
        s = a.shape[0] // grid
        energy.append(np.hypot(gx, gy)[: s * grid, : s * grid].reshape(grid, s, grid, s).mean((1, 3)).ravel())
    energy = np.array(energy)
    energy = (energy - energy.mean(0)) / energy.std(0)
    y = np.load(root / "ground_truth" / "subj01" / f"{hemi}_train_noiseless.npy")
    y = (y - y.mean(0)) / np.where(y.std(0) > 0, y.std(0), 1)
    w = np.maximum(energy.T @ y / len(y), 0) ** 4  # cells x vertices
    cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))
    cells = (np.stack([cols.ravel(), rows.ravel()], 1) + 0.5) / grid
    return (w.T @ cells) / np.maximum(w.sum(0), 1e-12)[:, None]


def test_release_files_match_the_columns(small_dataset):
    ds = AlgonautsDataset(small_dataset)
    for s in ds.subjects:
        for h in ("lh", "rh"):
            idx = _columns(small_dataset, s, h)
            n = ds.n_vertices(s, h)
            assert len(idx) == n and idx.max() < N_FS5
            for arr in (ds.responses(s, h, "train"), ds.responses(s, h, "test"),
                        np.load(small_dataset / "ground_truth" / s / f"{h}_pred_test.npy")):
                assert arr.shape[1] == n
            assert ds.noise_ceiling(s, h).shape == (n,)
            for fam in FAMILIES:
                full = np.load(small_dataset / s / "roi_masks" / f"{h}.{fam}_fsaverage_space.npy")
                challenge = np.load(small_dataset / s / "roi_masks" / f"{h}.{fam}_challenge_space.npy")
                assert full.shape == (N_FS,) and np.issubdtype(full.dtype, np.integer)
                np.testing.assert_array_equal(full[idx], challenge)  # column j sits on the j-th marked vertex
                off = np.ones(N_FS, bool)
                off[idx] = False
                assert not full[off].any(), fam
            streams = np.load(small_dataset / s / "roi_masks" / f"{h}.streams_challenge_space.npy")
            assert set(np.unique(streams)) >= {3, 4, 7}
        cortex = ds.cortex(s)  # the reader agrees
        np.testing.assert_array_equal(cortex.vertices["rh"], _columns(small_dataset, s, "rh"))


@pytest.mark.slow
def test_early_visual_cortex_is_on_the_medial_occipital_pole(images, mesh):
    ds = AlgonautsDataset(images)
    for h in ("lh", "rh"):
        pial = mesh[h]["pial"][_columns(images, "subj01", h)]
        prf = ds.roi_labels("subj01", h, "prf-visualrois")[0]
        names = {v: k for k, v in ds.roi_labels("subj01", h, "prf-visualrois")[1].items()}
        ev = pial[prf > 0]
        assert ev[:, 1].mean() < -70, ev[:, 1].mean()  # posterior (the pole is at y ~ -105)
        assert abs(ev[:, 0].mean()) < 22  # medial (the lateral occipital surface is at |x| ~ 40)
        z = {name: pial[prf == lab, 2].mean() for name, lab in names.items() if lab}
        # V1 straddles the calcarine: the dorsal halves above the ventral ones, hV4 below V1v
        assert z["V1d"] > z["V1v"] and z["V2d"] > z["V2v"] and z["V3d"] > z["V3v"] and z["hV4"] < z["V1v"], z
        assert z["V3d"] > z["V1d"] and z["V3v"] < z["V1v"], z  # V2 and V3 beyond V1 on either side
        # V1 follows the calcarine fundus: deeper than the cortex on average
        assert mesh[h]["sulc"][_columns(images, "subj01", h)][prf <= 2].mean() > mesh[h]["sulc"].mean()


@pytest.mark.slow
def test_prf_centres_follow_position(images, mesh):
    """Contralateral hemifield, upper field on the ventral bank, eccentricity growing from the pole."""
    from scipy.stats import spearmanr

    ds = AlgonautsDataset(images)
    for h in ("lh", "rh"):
        est = _prf_estimates(images, h)
        prf = ds.roi_labels("subj01", h, "prf-visualrois")[0]
        ev = prf > 0
        right = est[ev, 0] > 0.5
        assert (right.mean() if h == "lh" else 1 - right.mean()) > 0.9
        ventral, dorsal = np.isin(prf, (1, 3, 5)), np.isin(prf, (2, 4, 6))  # V1v V2v V3v / V1d V2d V3d
        assert (est[ventral, 1] < 0.5).mean() > 0.9 and (est[dorsal, 1] > 0.5).mean() > 0.9
        idx = _columns(images, "subj01", h)
        sphere = mesh[h]["sphere"]
        pole = np.argmin(mesh[h]["pial"][:, 1])
        v13 = (prf > 0) & (prf < 7)
        dist = np.linalg.norm(sphere[idx[v13]] - sphere[pole], axis=1)
        ecc = np.hypot(est[v13, 0] - 0.5, est[v13, 1] - 0.5)
        assert spearmanr(ecc, dist)[0] > 0.5


@pytest.mark.slow
def test_category_rois_are_connected_patches_where_they_belong(images, mesh):
    from scipy.sparse.csgraph import connected_components

    ds = AlgonautsDataset(images)
    for h in ("lh", "rh"):
        idx = _columns(images, "subj01", h)
        pial = mesh[h]["pial"]
        centre = {}
        for fam in PATCH_FAMILIES:
            labels, mapping = ds.roi_labels("subj01", h, fam)
            for lab, name in mapping.items():
                v = idx[labels == lab]
                if lab == 0 or not len(v):
                    continue
                n, _ = connected_components(mesh[h]["adj"][v][:, v], directed=False)
                assert n == 1, (h, name, n)
                centre[name] = pial[v].mean(0)
        x = {k: abs(c[0]) for k, c in centre.items()}
        assert centre["FFA-1"][2] < -5 and centre["FFA-2"][2] < -5 and centre["PPA"][2] < 0  # ventral
        assert x["EBA"] > 35 and x["OFA"] > 30 and x["PPA"] < x["FFA-1"]  # lateral / medial
        assert (x["VWFA-1"] + x["VWFA-2"]) / 2 > (x["FFA-1"] + x["FFA-2"]) / 2  # words lateral to faces
        assert centre["RSC"][0] ** 2 < 20**2 and centre["OPA"][2] > 10  # medial retrosplenial, dorsal occipital


def test_aligned_subjects_share_the_placement(tmp_path):
    root = make_dataset(tmp_path / "a", n_subjects=2, n_train=20, n_test=4, n_vertices=150, image_size=32, seed=1,
                        alignment=0.5, progress=False)
    for h in ("lh", "rh"):
        np.testing.assert_array_equal(_columns(root, "subj01", h), _columns(root, "subj02", h))
        for fam in FAMILIES:
            a, b = (np.load(root / s / "roi_masks" / f"{h}.{fam}_fsaverage_space.npy") for s in ("subj01", "subj02"))
            np.testing.assert_array_equal(a, b)


def test_native_subjects_have_their_own_placement(tmp_path):
    root = make_dataset(tmp_path / "n", n_subjects=2, n_train=20, n_test=4, n_vertices=150, image_size=32, seed=1,
                        progress=False)
    a, b = _columns(root, "subj01", "lh"), _columns(root, "subj02", "lh")
    assert len(a) != len(b) or not np.array_equal(a, b)


def test_more_vertices_than_fsaverage5_stay_native(tmp_path):
    """A hemisphere that may exceed 10,242 vertices: no fsaverage files, the dataset reads as before."""
    root = make_dataset(tmp_path / "big", n_subjects=1, n_train=10, n_test=2, n_vertices=9400, image_size=24,
                        progress=False, workers=1)
    assert not list(root.rglob("*fsaverage_space.npy"))
    ds = AlgonautsDataset(root)
    assert ds.cortex("subj01") is None and ds.n_vertices("subj01", "lh") > 8000


def test_a_full_hemisphere_takes_every_fsaverage5_vertex():
    from brainstore.datasets.synthetic._cortex import CAPACITY, fits, place

    assert CAPACITY == N_FS5 and fits(N_FS5) and not fits(N_FS5 + 1)
    rng = np.random.default_rng(0)
    regions = {"V1": np.arange(0, 1000), "FFA-1": np.arange(1000, 1200), "MT": np.arange(1200, 1500)}
    p = place("rh", regions, N_FS5, rng)
    assert sorted(p.vertex) == list(range(N_FS5))
    ev = np.isfinite(p.cx)
    assert ev.sum() == 1000 and (p.cx[ev] < 0.5).all() and np.isnan(p.cx[1000:]).all()
    with pytest.raises(ValueError, match="do not fit"):
        place("rh", regions, N_FS5 + 1, rng)
    with pytest.raises(ValueError, match="no place known"):
        place("rh", {"V9": np.arange(3)}, 10, rng)


def test_video_dataset_declares_its_vertices(tmp_path, mesh):
    import yaml
    from scipy.sparse.csgraph import connected_components

    from brainstore.datasets import open_dataset

    root = make_video_dataset(tmp_path / "v", n_subjects=2, n_train_runs=2, trs_per_run=10, n_test_repeats=2, fps=2,
                              frame_size=32, n_vertices=400, seed=3, progress=False)
    d = yaml.safe_load((root / "brainstore-dataset.yaml").read_text())
    files = {h: f"space/{{subject}}/{h}.vertices.npy" for h in ("lh", "rh")}
    assert d["space"] == {"surface": "fsaverage", "vertices": files}
    ds = open_dataset(root)
    for s in ("subj01", "subj02"):
        cortex = ds.cortex(s)
        for h in ("lh", "rh"):
            v = np.load(root / "space" / s / f"{h}.vertices.npy")
            n = np.load(root / "responses" / s / f"{h}.npy", mmap_mode="r").shape[1]
            assert v.dtype == np.int64 and v.shape == (n,) and v.max() < N_FS5
            assert (np.diff(v) > 0).all()  # distinct, ascending
            np.testing.assert_array_equal(cortex.vertices[h], v)
            pial = mesh[h]["pial"][v]
            visual = np.load(root / "rois" / s / f"{h}.visual.npy")
            mt = np.load(root / "rois" / s / f"{h}.motion.npy") == 1
            assert pial[visual > 0, 1].mean() < -70 and abs(pial[visual > 0, 0].mean()) < 25
            assert abs(pial[mt, 0].mean()) > 35 and -80 < pial[mt, 1].mean() < -50  # lateral occipitotemporal
            for lab in (1, 2, 3, 4):  # FFA, EBA, cars, animals
                m = v[np.load(root / "rois" / s / f"{h}.categories.npy") == lab]
                assert connected_components(mesh[h]["adj"][m][:, m], directed=False)[0] == 1
