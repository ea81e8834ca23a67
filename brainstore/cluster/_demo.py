"""``brainstore demo``: the end-to-end run on the embedded default (local, synthetic)."""

from __future__ import annotations

import time
from pathlib import Path

from ._report import console, dataset_table, score_table


def run_demo(out: Path, *, n_subjects: int, n_train: int, n_test: int, n_vertices: int, seed: int,
             address: str | None = None) -> dict:
    """Make (or reuse) the synthetic dataset under ``out`` and score its oracle."""
    from ..datasets import AlgonautsDataset, make_dataset
    from ..fitting._evaluate import score_submission

    t0 = time.time()
    out = Path(out).resolve()
    data = out / "dataset"
    console.rule("[bold]brainstore demo")
    if (data / "synthetic.json").exists():
        console.print(f"reusing synthetic dataset {data}")
    else:
        console.print(f"making synthetic dataset in {data}")
        make_dataset(data, n_subjects=n_subjects, n_train=n_train, n_test=n_test, n_vertices=n_vertices,
                     seed=seed, overwrite=True)
    ds = AlgonautsDataset(data).check(check_images=False)
    console.print(dataset_table(ds.summary()))

    oracle = score_submission(ds, data / "ground_truth")
    rows = [(f"{s} oracle", res["both"]["roi"]) for s, res in oracle.items()]
    console.print(score_table("oracle (noiseless test responses) NNMC per ROI, both hemispheres", rows))
    console.print(f"[green]demo finished in {time.time() - t0:.1f} s[/]; run folder: {out}")
    return {"oracle": {s: r["both"]["roi"] for s, r in oracle.items()}}
