"""The ``brainstore`` command line.

Heavy libraries (torch, ray, lancedb, open_clip, transformers) are imported inside the commands
that need them, so ``brainstore --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="brainstore",
    help="Feature store, fitting and serving for brain encoding / decoding models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

HOME = Path(os.environ.get("BRAINSTORE_HOME", ".brainstore"))
DEFAULT_STORE = str(HOME / "features")
DEFAULT_REGISTRY = str(HOME / "models")

StoreOpt = typer.Option(DEFAULT_STORE, "--store", help="Feature store URI (a local folder by default).")
RegistryOpt = typer.Option(DEFAULT_REGISTRY, "--registry", help="Model registry URI (a local folder by default).")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (default: an embedded local Ray).")


def _fail(msg: str) -> None:
    from ._report import console

    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code=2)


@app.command("make-dataset")
def make_dataset_cmd(
    out: Path = typer.Argument(..., help="Folder to create (Algonauts 2023 layout)."),
    subjects: int = typer.Option(2, "--subjects", help="Number of subjects."),
    train: int = typer.Option(600, "--train", help="Training images per subject."),
    test: int = typer.Option(100, "--test", help="Test images (shared by all subjects, shown 3 times)."),
    vertices: int = typer.Option(2000, "--vertices", help="Typical vertices per hemisphere (+-10 % per subject)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the dataset is a deterministic function of it."),
    image_size: int = typer.Option(256, "--image-size", help="Image side in pixels (NSD: 425)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
) -> None:
    """Write the synthetic benchmark dataset (images, captions, fMRI, ROIs, noise ceilings, oracle)."""
    from ..datasets import AlgonautsDataset, make_dataset
    from ._report import console, dataset_table

    try:
        root = make_dataset(out, n_subjects=subjects, n_train=train, n_test=test, n_vertices=vertices,
                            seed=seed, image_size=image_size, overwrite=overwrite)
    except (FileExistsError, ValueError) as e:
        _fail(str(e))
    console.print(dataset_table(AlgonautsDataset(root).summary()))


@app.command("info")
def info_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder (Algonauts layout) or manifest file."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Check the whole dataset and list problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarize a dataset: subjects, image counts, vertices, ROIs, noise ceilings."""
    from ..datasets import AlgonautsDataset, DatasetError, read_manifest
    from ._report import console, dataset_table

    try:
        if dataset.is_file():
            table = read_manifest(dataset)
            counts = table.group_by(["modality", "split"]).aggregate([("stimulus_id", "count")]).to_pylist()
            console.print_json(json.dumps({"manifest": str(dataset), "rows": table.num_rows, "counts": counts}))
            return
        ds = AlgonautsDataset(dataset)
        summary = ds.summary()
        problems = ds.validate() if validate else []
    except DatasetError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps({**summary, "problems": problems}, indent=2))
    else:
        console.print(dataset_table(summary))
        if validate:
            console.print("[green]valid[/]" if not problems else f"[red]{len(problems)} problem(s):[/]")
            for p in problems:
                console.print(f"  - {p}")
    if problems:
        raise typer.Exit(code=1)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("brainstore-demo"), "--out", help="Run folder for the demo's dataset, store and models."),
    subjects: int = typer.Option(2, "--subjects"),
    train: int = typer.Option(600, "--train"),
    test: int = typer.Option(100, "--test"),
    vertices: int = typer.Option(2000, "--vertices"),
    seed: int = typer.Option(0, "--seed"),
    address: Optional[str] = AddressOpt,
) -> None:
    """End-to-end demo on the synthetic dataset (everything local)."""
    from ._demo import run_demo

    run_demo(out, n_subjects=subjects, n_train=train, n_test=test, n_vertices=vertices, seed=seed, address=address)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
