"""Datasets: ``make-dataset`` (a synthetic one) and ``info`` (summary and problems)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ._common import fail


def make_dataset_cmd(
    out: Path = typer.Argument(..., help="Folder to create (Algonauts 2023 layout)."),
    subjects: int = typer.Option(2, "--subjects", help="Number of subjects."),
    train: int = typer.Option(600, "--train", help="Training images per subject."),
    test: int = typer.Option(100, "--test", help="Test images (shared by all subjects, shown 3 times)."),
    vertices: Optional[int] = typer.Option(None, "--vertices", help="Typical vertices per hemisphere (+-10 % per subject; default 2000, video 600)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the dataset is a deterministic function of it."),
    image_size: int = typer.Option(256, "--image-size", help="Image side in pixels (NSD: 425)."),
    alignment: float = typer.Option(0.0, "--alignment", help="0: each subject in its own vertex space. In (0, 1]: "
                                    "all subjects in one template space (same vertices and ROIs), a vertex's tuning "
                                    "correlated this much across subjects."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
    kind: str = typer.Option("image", "--kind", help="image: the Algonauts-layout image dataset; video: continuous "
                             "runs (video fMRI: clips, HRF-convolved BOLD per TR, a test clip repeated)."),
    runs: int = typer.Option(6, "--runs", help="Video: training runs (one clip each)."),
    trs: int = typer.Option(50, "--trs", help="Video: TRs per run."),
    repeats: int = typer.Option(3, "--repeats", help="Video: runs showing the test clip."),
    tr: float = typer.Option(2.0, "--tr", help="Video: seconds per TR."),
    fps: int = typer.Option(8, "--fps", help="Video: frames per second."),
) -> None:
    """Write a synthetic benchmark dataset (stimuli, fMRI, ROIs, noise ceilings, oracle): images in the
    Algonauts layout, or --kind video: a described time-series dataset."""
    from ...datasets import make_dataset, make_video_dataset, open_dataset
    from .._console import console, dataset_table

    if kind not in ("image", "video"):
        fail(f"--kind {kind!r} is not one of image, video")
    try:
        if kind == "video":
            root = make_video_dataset(out, n_subjects=subjects, n_train_runs=runs, trs_per_run=trs,
                                      n_test_repeats=repeats, tr=tr, fps=fps,
                                      n_vertices=vertices or 600, seed=seed, overwrite=overwrite)
        else:
            root = make_dataset(out, n_subjects=subjects, n_train=train, n_test=test, n_vertices=vertices or 2000,
                                seed=seed, image_size=image_size, alignment=alignment, overwrite=overwrite)
    except (FileExistsError, ValueError) as e:
        fail(str(e))
    console.print(dataset_table(open_dataset(root).summary()))


def info_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder (Algonauts layout), dataset description file (.yaml) or manifest file."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check the whole dataset and list problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarize a dataset: subjects, image counts, vertices, ROIs, noise ceilings; list every problem (exit 1)."""
    from ...datasets import DatasetError, DatasetValidationError, is_description, open_dataset, read_manifest
    from .._console import console, dataset_table, named_roi_table

    try:
        if dataset.is_file() and not is_description(dataset):
            table = read_manifest(dataset)
            counts = table.group_by(["modality", "split"]).aggregate([("stimulus_id", "count")]).to_pylist()
            if as_json:
                print(json.dumps({"manifest": str(dataset), "rows": table.num_rows, "counts": counts}, indent=2))
                return
            from rich.table import Table

            t = Table(title=f"manifest {dataset}: {table.num_rows} stimuli")
            for c in ("modality", "split", "stimuli"):
                t.add_column(c)
            for c in sorted(counts, key=lambda c: (c["modality"], str(c["split"]))):
                t.add_row(c["modality"], str(c["split"] or "-"), str(c["stimulus_id_count"]))
            console.print(t)
            return
        if not dataset.exists():
            fail(f"dataset {dataset} does not exist; `brainstore info` takes a dataset folder (Algonauts layout), "
                  "a dataset description file (.yaml) or a manifest file (.parquet/.csv)")
        try:
            ds = open_dataset(dataset)
        except DatasetValidationError as e:  # a description that does not parse: its problems, listed
            summary, problems = {"root": str(dataset.absolute()), "subjects": {}}, e.problems
        else:
            summary = ds.summary()
            problems = ds.validate() if validate else []
    except DatasetError as e:
        fail(str(e))
    if as_json:
        print(json.dumps({**summary, "problems": problems}, indent=2))
    else:
        if summary["subjects"]:
            console.print(dataset_table(summary))
            console.print(named_roi_table(summary))
        if validate or problems:
            console.print("[green]valid[/]" if not problems else f"[red]{len(problems)} problem(s):[/]")
            for p in problems:
                console.print(f"  - {escape(p)}")
    if problems:
        raise typer.Exit(code=1)
