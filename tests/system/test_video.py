"""The synthetic video dataset end to end: extract (motion energy over clips, CLIP over frames) ->
delays -> fit with folds by run -> evaluate -> predict, checked against independent references:
pymoten's ``project_stimulus`` over a clip's frames, the voxelwise tutorials' ``Delayer`` (rewritten
in tests/_references.py) applied per run, and himalaya's ``RidgeCV`` with leave-one-run-out folds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests._references import TutorialDelayer

ME_SPEC = "motion-energy:modality=video,size=32,sf=[0,2,4,8],tf=[0,2,4]"
CLIP_SPEC = "clip:arch=brainstore-tiny-clip,pretrained=none"
DELAYS = [1, 2, 3, 4]
ALPHAS = np.logspace(0, 5, 11).tolist()
N_RUNS, TRS = 6, 40


@pytest.fixture(scope="module")
def video(tmp_path_factory, ray_local):
    """The dataset, its per-TR and delayed tables, and one fit with folds = runs (leave one run out)."""
    from brainstore.datasets import open_dataset
    from brainstore.datasets import make_video_dataset
    from brainstore.features import derive_delays, extract
    from brainstore.features.extractors.testing import register_tiny_models
    from brainstore.fitting import FitSpec, fit_encoding_models

    register_tiny_models()
    tmp = tmp_path_factory.mktemp("video")
    root = make_video_dataset(tmp / "data", n_train_runs=N_RUNS, trs_per_run=TRS, n_vertices=240, seed=3,
                              progress=False)
    ds = open_dataset(root)
    store = str(tmp / "store")
    me = extract(root, ME_SPEC, store, progress=False)
    clip = extract(root, CLIP_SPEC, store, progress=False)
    tables = {"me": me.feature, "clip": clip.feature,
              "me_d": derive_delays(store, me.feature, root, DELAYS), "clip_d": derive_delays(store, clip.feature, root, DELAYS)}
    spec = FitSpec(dataset=str(ds.root), alphas=ALPHAS, folds=N_RUNS, models=[
        {"name": "me-nodelay", "features": [tables["me"]]},
        {"name": "me", "features": [tables["me_d"]]},
        {"name": "clip", "features": [tables["clip_d"]]},
        {"name": "me+clip", "features": [tables["me_d"], tables["clip_d"]], "method": "banded"}])
    run = fit_encoding_models(spec, store=store, registry=str(tmp / "reg"), out=tmp / "run", progress=False)
    assert not run.failures, run.failures
    return {"root": root, "ds": ds, "store": store, "tables": tables, "reports": (me, clip), "run": run,
            "registry": str(tmp / "reg")}


def _train_runs(ds):
    return ds.cv_groups("subj01", "train")


@pytest.mark.slow
def test_motion_energy_time_series_equals_pymoten_over_each_clip(video):
    """Per-TR motion energy = pymoten's project_stimulus over the clip's frames, averaged per TR, z-scored."""
    import moten
    from scipy.stats import zscore

    from brainstore.features import FeatureStore

    ds, fs = video["ds"], FeatureStore(video["store"])
    ts = ds.timeseries
    frames = np.load(ts.frames, mmap_mode="r")
    pyr = moten.pyramids.MotionEnergyPyramid(stimulus_vhsize=(32, 32), stimulus_fps=8, temporal_frequencies=[0, 2, 4],
                                             spatial_frequencies=[0, 2, 4, 8],
                                             spatial_directions=[0, 45, 90, 135, 180, 225, 270, 315])
    for clip in (ts.clips[0], ts.clips[-1]):  # a training clip and the test clip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # moten.io imports scipy.misc
            lum = moten.io.imagearray2luminance(np.asarray(frames[clip.first_frame:clip.first_frame + clip.n_frames]),
                                                size=(32, 32))
        per_frame = pyr.project_stimulus(lum, output_nonlinearity=np.log1p)
        per_tr = per_frame.reshape(clip.n_trs, 16, -1).mean(1)  # 8 fps x 2 s = 16 frames per TR
        ref = np.nan_to_num(zscore(per_tr, axis=0, ddof=0))  # constant filters: 0
        got = fs.load(video["tables"]["me"], clip.ids())
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, atol=2e-3 * scale)
    assert video["reports"][0].requested == 7 * TRS and video["reports"][0].written == 7 * TRS


@pytest.mark.slow
def test_delayed_tables_equal_the_tutorial_delayer_per_run(video):
    from brainstore.features import FeatureStore

    ds, fs, t = video["ds"], FeatureStore(video["store"]), video["tables"]
    for c in ds.timeseries.clips:
        X = fs.load(t["clip"], c.ids())
        np.testing.assert_array_equal(fs.load(t["clip_d"], c.ids()), TutorialDelayer(DELAYS).fit_transform(X))
    assert fs.metadata(t["me_d"])["delays"] == "1,2,3,4" and fs.metadata(t["me_d"])["derived_from"] == t["me"]


@pytest.mark.slow
def test_folds_hold_whole_runs_and_delays_beat_no_delays(video):
    from brainstore.fitting import ModelRegistry

    run, ds = video["run"], video["ds"]
    info = ModelRegistry(video["registry"], create=False).record("me/subj01").meta["info"]["lh"]
    runs = _train_runs(ds)
    assert info["n_fit"] == (N_RUNS - 1) * TRS and runs[info["n_fit"] - 1] != runs[info["n_fit"]]  # a run boundary
    nnmc = {m: run.metrics[m]["subj01"]["both"] for m in ("me-nodelay", "me", "clip", "me+clip")}
    # the hemodynamic lag: delayed features predict far better (no delay sees only the TR's own stimulus)
    assert nnmc["me"]["test_nnmc"] > nnmc["me-nodelay"]["test_nnmc"] + 10, nnmc
    assert nnmc["me"]["test_nnmc_roi"]["motion"] > 2 * max(nnmc["me-nodelay"]["test_nnmc_roi"]["motion"], 1)
    # motion energy explains the motion ROI better than random-weight CLIP frames
    assert nnmc["me"]["test_nnmc_roi"]["motion"] > nnmc["clip"]["test_nnmc_roi"]["motion"]
    # banded ridge weighs each space per vertex: it beats its weaker member (its quality against the better one is
    # benchmarks/quality.py --video's figure: measured, at this size, below motion energy alone)
    assert nnmc["me+clip"]["test_nnmc"] > nnmc["clip"]["test_nnmc"]
    assert set(nnmc["me"]["test_nnmc_roi"]) - {"all"} == {"visual", "motion", "categories", "places"}


@pytest.mark.slow
def test_delayed_ridge_agrees_with_himalaya_tutorial_pipeline(video):
    """Our fit (per-run z-scored features, delays per run, folds by run, one alpha per vertex) against
    the tutorial pipeline rebuilt from the undelayed per-TR table: Delayer per run + StandardScaler +
    himalaya RidgeCV with leave-one-run-out folds, the same alphas."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import correlation_score
    from sklearn.preprocessing import StandardScaler

    from brainstore.features import FeatureStore
    from brainstore.fitting import EncodingModel, ModelRegistry
    from brainstore.fitting import subject_stimuli
    from brainstore.scoring import pearson_r

    set_backend("numpy")
    ds, fs, run = video["ds"], FeatureStore(video["store"]), video["run"]
    train, test = subject_stimuli(ds, "subj01", "train"), subject_stimuli(ds, "subj01", "test")
    runs = _train_runs(ds)

    def delayed(ids):  # undelayed rows of each run, delayed within the run
        clips = np.array([i.split("/tr")[0] for i in ids])
        return np.concatenate([TutorialDelayer(DELAYS).fit_transform(fs.load(video["tables"]["me"],
                                                                              [i for i, c in zip(ids, clips) if c == r]))
                               for r in dict.fromkeys(clips)])

    X, Xt = delayed(train), delayed(test)
    Y = np.asarray(ds.responses("subj01", "lh", "train"), dtype=np.float64)
    loro = [(np.flatnonzero(runs != r), np.flatnonzero(runs == r)) for r in dict.fromkeys(runs)]  # leave one run out
    scaler = StandardScaler().fit(X)
    ref = RidgeCV(alphas=np.asarray(ALPHAS), cv=loro, fit_intercept=True,
                  solver_params=dict(score_func=correlation_score, warn=False)).fit(scaler.transform(X), Y)
    ref_pred = ref.predict(scaler.transform(Xt))
    ours = run.test_preds[("me", "subj01")]["lh"]
    est = EncodingModel.load(ModelRegistry(video["registry"], create=False), "me", "subj01")._estimator("lh")
    r = pearson_r(np.asarray(ours, dtype=np.float64), ref_pred)
    same = np.isclose(np.asarray(est.alpha_, dtype=np.float64), ref.best_alphas_, rtol=1e-6)
    # (measured: 99 % of the vertices pick the same alpha, predictions correlate > 0.9999 at the 1st percentile;
    # ours standardizes the features inside each training fold, the reference once on all training rows)
    assert same.mean() > 0.95, same.mean()
    assert np.mean(r > 0.999) > 0.97, np.percentile(r, [1, 5, 50])
    assert np.median(np.abs(ours - ref_pred).max(0) / np.abs(ref_pred).max(0)) < 1e-2


@pytest.mark.slow
def test_reruns_resume_by_clip_and_predict_serves_trs(video):
    from brainstore.features import FeatureStore, extract
    from brainstore.fitting import ModelRegistry, predict_model

    ds, fs, t = video["ds"], FeatureStore(video["store"]), video["tables"]
    again = extract(video["root"], CLIP_SPEC, video["store"], progress=False)
    assert again.written == 0 and again.already_stored == 7 * TRS
    # a table holding three clips (as a killed job leaves it): the rerun adds the other four, once each
    part = t["clip"] + "-part"
    fs.ensure_table(part, fs.info(t["clip"]).dim, {k: v for k, v in fs.metadata(t["clip"]).items()
                                                   if k not in ("feature_version", "dim", "created")})
    kept = [i for c in ds.timeseries.clips[:3] for i in c.ids()]
    fs.write(part, kept, fs.load(t["clip"], kept), dataset=[ds.name] * len(kept), split=["train"] * len(kept))
    rep = extract(video["root"], CLIP_SPEC, video["store"], version=part, progress=False)
    assert rep.already_stored == 3 * TRS and rep.written == 4 * TRS
    ids = sorted(fs.ids(part))
    assert len(ids) == len(set(ids)) == 7 * TRS
    np.testing.assert_allclose(fs.load(part, ids), fs.load(t["clip"], ids), rtol=1e-5, atol=1e-6)
    # predictions of the registered model for the test TRs equal the fit's
    test = [i for i in ds.stimuli(["subj01"], ("test",)).column("stimulus_id").to_pylist()]
    pred = predict_model(ModelRegistry(video["registry"], create=False), "me", "subj01", None, test)
    np.testing.assert_allclose(pred["lh"], video["run"].test_preds[("me", "subj01")]["lh"], rtol=1e-4, atol=1e-5)


def test_timeseries_inputs_refused_with_the_fix(tmp_path):
    from brainstore.datasets import open_dataset
    from brainstore.datasets import make_video_dataset
    from brainstore.features import derive_delays
    from brainstore.features._timeseries import timeseries_extractor
    from brainstore.features import get_extractor

    root = make_video_dataset(tmp_path / "v", n_train_runs=2, trs_per_run=10, n_test_repeats=2, n_vertices=100,
                              progress=False)
    ds = open_dataset(root)
    assert ds.validate() == []
    with pytest.raises(ValueError, match="fps=15 but the dataset's frames are at 8 fps"):
        timeseries_extractor(get_extractor("motion-energy:modality=video,fps=15"), 8.0)
    assert timeseries_extractor(get_extractor("motion-energy:modality=video"), 8.0).options["fps"] == 8
    with pytest.raises(ValueError, match="cannot make a feature time series"):
        timeseries_extractor(get_extractor("text"), 8.0)
    from brainstore.features import FeatureStore

    FeatureStore(tmp_path / "store")
    with pytest.raises(Exception, match="feature table 'nope' is not in"):
        derive_delays(str(tmp_path / "store"), "nope", root)


def test_docs_video_example_is_a_valid_description(tmp_path):
    """The docs' video example parses, and its fields are those make-dataset --kind video writes."""
    import yaml
    from pathlib import Path

    from brainstore.datasets import DescribedDataset
    from brainstore.datasets import make_video_dataset

    readme = (Path(__file__).resolve().parents[2] / "docs" / "datasets.md").read_text()
    block = readme.split("## Video fMRI: continuous runs", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "brainstore-dataset.yaml").write_text(block)
    ds = DescribedDataset(tmp_path)
    assert ds.is_timeseries and ds.spec.timeseries.tr == 2.0 and ds.spec.zscore == "run"
    assert ds.subjects == ["subj01", "subj02"] and ds.roi_families("subj01") == ["motion", "places"]
    made = yaml.safe_load((make_video_dataset(tmp_path / "v", n_train_runs=2, trs_per_run=10, n_test_repeats=2,
                                              n_vertices=100, progress=False) / "brainstore-dataset.yaml").read_text())
    assert set(yaml.safe_load(block)) == set(made)


@pytest.mark.slow
def test_pipeline_on_the_video_dataset_makes_delayed_tables_and_fits_them(video, tmp_path, small_dataset):
    """`brainstore run` on a time-series dataset: extract makes the per-TR table and its delayed table
    (on the fixture's store: its clips are stored, the delayed table is rebuilt), fit and evaluate use
    them; the scores equal the library fit's of the same spec."""
    import json

    from brainstore.cluster.pipeline import load_pipeline, run_pipeline
    from brainstore.features import FeatureStore

    me, me_d = video["tables"]["me"], video["tables"]["me_d"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""dataset: {video['root']}
store: {video['store']}
registry: {tmp_path / 'reg'}
extract:
  - spec: "{ME_SPEC}"
    delays: [1, 2, 3, 4]
fit:
  alphas: {ALPHAS}
  folds: {N_RUNS}
  models:
    - name: me
      features: [{me_d}]
evaluate:
  maps: false
report:
  html: false
""")
    pipe = load_pipeline(path)
    assert pipe.tables == [me] and pipe.delayed == [me_d]
    res = run_pipeline(path)
    assert res["ran"] == ["extract", "fit", "evaluate"]
    fs = FeatureStore(video["store"])
    assert set(fs.names()) >= {me, me_d} and fs.info(me_d).rows == 7 * TRS
    state = json.loads((tmp_path / "pipeline-run" / "pipeline-state.json").read_text())
    assert set(state["stages"]["extract"]["outputs"]["tables"]) == {me, me_d}
    metrics = json.loads((tmp_path / "pipeline-run" / "evaluate" / "metrics.json").read_text())["metrics"]
    ours = metrics["me"]["subj01"]["both"]["test_nnmc"]
    assert ours == pytest.approx(video["run"].metrics["me"]["subj01"]["both"]["test_nnmc"], rel=1e-4)
    # settings of per-stimulus extraction on a time series, and `delays:` on a dataset with one row per
    # stimulus, are refused, naming the line and the field
    odd = tmp_path / "odd.yaml"
    odd.write_text(path.read_text().replace("    delays: [1, 2, 3, 4]\n", "    delays: [1, 2, 3, 4]\n    limit: 5\n"))
    with pytest.raises(Exception, match=r"odd.yaml line 7: extract\[0\]\.limit does not apply to a time-series"):
        load_pipeline(odd)
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace(str(video["root"]), str(small_dataset)))
    with pytest.raises(Exception, match=r"bad.yaml line 6: extract\[0\]\.delays is for time-series"):
        load_pipeline(bad)


@pytest.mark.slow
def test_ridge_decoder_on_the_video_dataset(video, tmp_path, small_dataset):
    """Decoders run on a time series as on images (folds by run): responses -> per-TR motion energy, retrieval
    among the test clip's TRs."""
    from brainstore.fitting import fit_decoders

    dec = fit_decoders(video["root"], video["tables"]["me"], store=video["store"], registry=video["registry"],
                       folds=N_RUNS, out=tmp_path / "dec", n_candidates=TRS, n_draws=5, progress=False)
    assert not dec.failures, dec.failures
    m = next(iter(dec.metrics.values()))["subj01"]
    assert m["chance"] == pytest.approx(1 / TRS) and m["n_items"] == TRS and m["n_train"] == N_RUNS * TRS
    assert abs(m["two_way"] - 0.5) < 0.15  # chance: nothing decoded from the same TR (measured 0.47)
    # measured: a same-TR decoder finds nothing here (alpha at the grid's top, CV R^2 ~ 0, two-way ~ 0.5, the
    # oracle's too): TR t's BOLD reflects the stimulus of TRs t-2..t-3 (the HRF), not TR t's
    assert m["cv_r2"] < 0.01
    # decoding TR t from the BOLD of TRs t+1..t+4 finds it
    ddec = fit_decoders(video["root"], video["tables"]["me"], store=video["store"], registry=video["registry"],
                        name="dec-delayed", folds=N_RUNS, out=tmp_path / "dec2", n_candidates=TRS, n_draws=5,
                        progress=False, response_delays=DELAYS)
    assert not ddec.failures, ddec.failures
    d = ddec.metrics["dec-delayed"]["subj01"]
    assert d["cv_r2"] > 0.05 and d["two_way"] > 0.8 and d["top1_brain_to_stimulus"] > 5 / TRS, d
    assert d["oracle_two_way"] >= d["two_way"] - 0.05
    # the registered decoder applies its delays itself: the dataset's test responses decode to the fit's output
    from brainstore.datasets import split_tr_id
    from brainstore.fitting import Decoder, ModelRegistry
    from brainstore.fitting import response_matrix

    dec = Decoder.load(ModelRegistry(video["registry"], create=False), "dec-delayed/subj01")
    assert dec.response_delays == DELAYS
    got = dec.decode(response_matrix(video["ds"], "subj01", "test", dec.voxels))  # one run: the test clip
    np.testing.assert_allclose(got, np.load(tmp_path / "dec2" / "decoded" / "dec-delayed" / "subj01_test.npy"),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="response_delays are for time-series datasets"):
        fit_decoders(small_dataset, video["tables"]["me"], store=video["store"], registry=video["registry"],
                     response_delays=DELAYS, progress=False)
