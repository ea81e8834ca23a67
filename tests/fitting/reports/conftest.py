"""A dataset with a cortex, evaluated: the serving registry's encoders scored by ``evaluate`` with their maps.

The small synthetic dataset's subjects are placed by hand when the dataset does not place them itself: each
hemisphere's columns on the occipital fsaverage vertices that fsaverage5 keeps (so the pictures show all of
them), its ROI labels laid there for the outlines."""

from __future__ import annotations

import time

import numpy as np
import pytest

OCCIPITAL_FIRST = None  # fsaverage5 vertices per hemisphere, most posterior first (filled once)


def _posterior_vertices(hemi: str) -> np.ndarray:
    from brainstore.maps import Space, load_meshes

    global OCCIPITAL_FIRST
    if OCCIPITAL_FIRST is None:
        m = load_meshes(Space.fsaverage("fsaverage5"))
        OCCIPITAL_FIRST = {h: np.argsort(m.surfaces[h]["pial"][0][:, 1], kind="stable") for h in ("lh", "rh")}
    return OCCIPITAL_FIRST[hemi]


def occipital_cortex(ds, subject: str):
    """``subject``'s columns on fsaverage (full resolution), on the most posterior fsaverage5 vertices in
    ascending order (as the Algonauts release orders them), with the dataset's ROI families laid on them."""
    from brainstore.datasets import HEMISPHERES
    from brainstore.maps import FSAVERAGE_VERTICES, Cortex, Space

    space = Space.fsaverage("fsaverage")
    vertices = {h: np.sort(_posterior_vertices(h)[: ds.n_vertices(subject, h)]) for h in HEMISPHERES}
    rois = {}
    for h in HEMISPHERES:
        rois[h] = {}
        for fam in ds.roi_families(subject):
            labels, mapping = ds.roi_labels(subject, h, fam)
            full = np.zeros(FSAVERAGE_VERTICES["fsaverage"], np.int32)
            full[vertices[h]] = labels
            rois[h][fam] = (full, mapping)
    return Cortex(space, vertices, rois=rois, source=f"tests: {subject} placed on the occipital pole")


def placed(ds):
    """``ds`` (a dataset object) with a cortex for every subject: its own where it has one."""
    cortices = {s: ds.cortex(s) or occipital_cortex(ds, s) for s in ds.subjects}
    ds.cortex = cortices.get  # this object only
    return ds


@pytest.fixture(scope="session")
def mapped(serving_models, tmp_path_factory) -> dict:
    """`evaluate` of the serving registry's encoders ("img", "both") on the small dataset given a cortex:
    the Evaluation, the dataset object, the seconds evaluate took and those its maps took."""
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import evaluate

    ds = placed(AlgonautsDataset(serving_models["data"]))
    out = tmp_path_factory.mktemp("mapped") / "evaluate"
    start = time.perf_counter()
    ev = evaluate(ds, registry=serving_models["registry"], out=out, models=["img", "both"], progress=False)
    seconds = time.perf_counter() - start
    print(f"\nevaluate with maps: {seconds:.1f} s, of which the maps {ev.maps_info.seconds:.1f} s "
          f"({len(ev.maps)} map files)")
    return {**serving_models, "ds": ds, "ev": ev, "out": out, "seconds": seconds}
