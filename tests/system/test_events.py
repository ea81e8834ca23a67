"""Event time series: stimuli presented at onsets within continuous runs (a table of onsets instead
of frames). The per-TR features are checked against hand loops over the events (overlap-weighted
means; Huth et al.'s Lanczos kernel written out term by term) and scipy's z-score; the dataset then
fits like any other (folds by run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import zscore

from tests._references import lanczosfun

TR = 2.0
N_TR = 15
SPEC = "motion-energy:size=32,sf=[0,2,4]"


def _write_events_dataset(root, rng):
    root.mkdir(parents=True)
    n_img = 12
    np.save(root / "images.npy", rng.integers(0, 256, size=(n_img, 32, 32, 3), dtype=np.uint8))
    (root / "stimuli.csv").write_text("stimulus_id,brick_index\n" + "".join(f"img-{i:02d},{i}\n" for i in range(n_img)))
    clips = ["a", "b", "c", "d", "test"]
    (root / "clips.csv").write_text("clip,n_trs\n" + "".join(f"{c},{N_TR}\n" for c in clips))
    rows = []
    for c in clips:
        t = 0.3
        while t < N_TR * TR - 0.5:
            rows.append(f"{c},img-{rng.integers(n_img):02d},{t:.2f},{rng.choice([0.0, 1.0, 3.0])}\n")
            t += rng.uniform(1.0, 4.0)
    (root / "events.csv").write_text("clip,stimulus_id,onset,duration\n" + "".join(rows))
    runs = [("a", "r1", "train"), ("b", "r2", "train"), ("c", "r3", "train"), ("d", "r4", "train"),
            ("test", "t1", "test"), ("test", "t2", "test")]
    (root / "trials.csv").write_text("stimulus_id,split,run,session\n" + "".join(
        f"{c}/tr{k:04d},{sp},{r},s1\n" for c, r, sp in runs for k in range(N_TR)))
    for h in ("lh", "rh"):
        np.save(root / f"{h}.npy", rng.normal(size=(len(runs) * N_TR, 30)).astype(np.float32))
    (root / "brainstore-dataset.yaml").write_text(f"""name: events
timeseries:
  tr: {TR}
  events: events.csv
  clips: clips.csv
stimuli: {{table: stimuli.csv, array: images.npy}}
zscore: run
trials: trials.csv
responses: {{lh: lh.npy, rh: rh.npy}}
noise_ceiling: from_repeats
subjects: [subj01]
""")
    return root


def _events(root):
    import csv

    with open(root / "events.csv") as f:
        return [(r["clip"], r["stimulus_id"], float(r["onset"]), float(r["duration"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_event_time_series_equal_hand_computed_trs_and_fit(tmp_path, ray_local):
    from brainstore.datasets import open_dataset
    from brainstore.features import FeatureStore, derive_delays, derive_event_timeseries, extract
    from brainstore.fitting import FitSpec, fit_encoding_models

    root = _write_events_dataset(tmp_path / "ev", np.random.default_rng(0))
    ds = open_dataset(root)
    assert ds.validate() == [] and ds.is_timeseries and ds.timeseries.kind == "events"
    assert ds.n_images("subj01", "train") == 4 * N_TR and ds.n_images("subj01", "test") == N_TR
    store = str(tmp_path / "store")
    rep = extract(root, SPEC, store, progress=False)
    fs = FeatureStore(store)
    src = fs.metadata(rep.feature)["derived_from"]
    ev = _events(root)
    for clip in ("a", "test"):
        mine = [e for e in ev if e[0] == clip]
        X = fs.load(src, [e[1] for e in mine]).astype(np.float64)
        avg = np.zeros((N_TR, X.shape[1]))
        for k in range(N_TR):
            w = []
            for _, _, on, d in mine:
                if d == 0:
                    w.append(1.0 if math.floor(on / TR) == k else 0.0)
                else:
                    w.append(max(0.0, min((k + 1) * TR, on + d) - max(k * TR, on)))
            if sum(w):
                avg[k] = np.average(X, axis=0, weights=w)
        ids = [f"{clip}/tr{k:04d}" for k in range(N_TR)]
        np.testing.assert_allclose(fs.load(rep.feature, ids), np.nan_to_num(zscore(avg, ddof=0)), atol=1e-4)
        lz = np.array([[lanczosfun(1 / TR, (k + 0.5) * TR - on) for _, _, on, _ in mine] for k in range(N_TR)]) @ X
        name = derive_event_timeseries(store, src, root, resample="lanczos", name="lz")
        np.testing.assert_allclose(fs.load(name, ids), np.nan_to_num(zscore(lz, ddof=0)), atol=1e-4)
    # the presented stimuli are extracted once each; the test clip's are marked test
    st = ds.event_stimuli()
    assert st.num_rows == len({e[1] for e in ev}) == fs.info(src).rows
    assert set(st.filter(np.isin(st.column("stimulus_id").to_pylist(), [e[1] for e in ev if e[0] == "test"]))
               .column("split").to_pylist()) == {"test"}
    # delays and a fit with folds by run, as for video
    d = derive_delays(store, rep.feature, root, [1, 2, 3])
    run = fit_encoding_models(FitSpec(dataset=str(ds.root), folds=4, models=[{"name": "ev", "features": [d]}]),
                              store=store, registry=str(tmp_path / "reg"), out=tmp_path / "run", progress=False)
    assert not run.failures, run.failures
    from brainstore.fitting import ModelRegistry

    info = ModelRegistry(str(tmp_path / "reg"), create=False).record("ev/subj01").meta["info"]["lh"]
    assert info["n_fit"] == 3 * N_TR  # the validation fold is the last training run, whole


def test_event_descriptions_refused_with_the_fix(tmp_path):
    from brainstore.datasets import DatasetError, DescriptionError, open_dataset

    root = _write_events_dataset(tmp_path / "ev", np.random.default_rng(1))
    text = (root / "brainstore-dataset.yaml").read_text()
    (root / "brainstore-dataset.yaml").write_text(text.replace("stimuli: {table: stimuli.csv, array: images.npy}\n", ""))
    with pytest.raises(DescriptionError, match="timeseries.events need stimuli"):
        open_dataset(root)
    (root / "brainstore-dataset.yaml").write_text(text.replace("  events: events.csv\n", "  events: events.csv\n  fps: 8\n"))
    with pytest.raises(DescriptionError, match="fps goes with frames"):
        open_dataset(root)
    (root / "brainstore-dataset.yaml").write_text(text)
    (root / "events.csv").write_text((root / "events.csv").read_text() + "a,img-99,1.0,0\nzz,img-01,1.0,0\na,img-01,99,0\n")
    problems = open_dataset(root).validate()
    assert any("clip 'zz' is not in the clip table" in p for p in problems), problems
    assert any("onset 99" in p and "must be in [0, 30)" in p for p in problems), problems
    (root / "events.csv").write_text("\n".join((root / "events.csv").read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(DatasetError, match="img-99"):
        open_dataset(root).event_stimuli()
