"""Whole runs: ``run`` (a pipeline file, stage by stage) and ``demo`` (the end-to-end demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import VERBOSE, AddressOpt, fail, need


def run_cmd(
    pipeline: Path = typer.Argument(..., help="Pipeline file (YAML): dataset, store, registry, extract, fit, evaluate, report, serve."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Force this stage and every later one (extract, fit, evaluate, report, serve)."),
    only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (the stages it reads must be current)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (which stages run, which are current, and why); run nothing."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (over the file's `address:`; default: an embedded local Ray)."),
) -> None:
    """Run extract -> fit -> evaluate -> report -> serve from one YAML; stages whose inputs are unchanged are skipped."""
    from ...datasets import DatasetError
    from ...features import ExtractionError, FeatureStoreError, MissingStimuliError, WeightsNotFoundError
    from ...fitting import RegistryError, SpecError
    from ..pipeline import PipelineError, run_pipeline

    need(pipeline, False, "pipeline file", "`brainstore run` takes a pipeline YAML file")
    try:
        run_pipeline(pipeline, from_stage=from_stage, only=only, dry_run=dry_run, address=address,
                     quiet=not VERBOSE["on"])
    except (PipelineError, SpecError, DatasetError, FeatureStoreError, MissingStimuliError, RegistryError,
            WeightsNotFoundError, ExtractionError, ValueError) as e:
        fail(str(e))


def demo_cmd(
    out: Path = typer.Option(Path("brainstore-demo"), "--out", help="Run folder for the demo's dataset, store and models."),
    subjects: int = typer.Option(2, "--subjects"),
    train: int = typer.Option(600, "--train"),
    test: int = typer.Option(100, "--test"),
    vertices: int = typer.Option(2000, "--vertices"),
    seed: int = typer.Option(0, "--seed"),
    image_extractor: Optional[str] = typer.Option(None, "--image-extractor", help="Image extractor spec (default: CLIP ViT-B/32, OpenAI weights if cached, else random init)."),
    address: Optional[str] = AddressOpt,
    keep_serving: bool = typer.Option(False, "--keep-serving", help="Leave the service up at the end (Ctrl-C stops it)."),
) -> None:
    """End-to-end demo on the synthetic dataset: features -> encoding models -> evaluation -> decoders -> serving (all local)."""
    from ..._paths import check_folder
    from .._demo import run_demo

    try:  # before the dataset is made and Ray starts
        check_folder(out, "demo folder", "--out", create=True, make=False)
    except ValueError as e:
        fail(str(e))
    run_demo(out, n_subjects=subjects, n_train=train, n_test=test, n_vertices=vertices, seed=seed, address=address,
             image_extractor=image_extractor, quiet=not VERBOSE["on"], keep_serving=keep_serving)
