"""One entry point for a whole fit spec: :func:`fit` fits, scores and registers its encoding models (with
their report) and then its decoding models, from a spec object, a spec file, or a dataset alone (the
default spec over the store's usable tables). ``brainstore fit`` is a thin layer over it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._storage import dataset_root, uri_of
from ._spec import FitSpec, load_spec
from .decoding import check_decoder_specs, fit_decoder
from .encoding import FitRun, default_spec, fit_encoding_models

__all__ = ["fit", "FitResult", "as_fit_spec"]


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes
    ----------
    spec : the fit spec that ran (the default one when a dataset was given).
    encoders : the encoding models' run (None when the spec has no ``models``).
    report : :func:`~.reports.write_report`'s summary of the encoders (rows, files), or None.
    decoders : one run per decoding model of the spec, in order (``DecodeRun`` or ``AdaptorRun``).
    notes : why the default spec left tables out (empty for a given spec).
    """

    spec: FitSpec
    encoders: FitRun | None = None
    report: dict | None = None
    decoders: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[dict]:
        """Every failed fit: encoders' ``{subject, hemi, model, error}`` and decoders' ``{subject, model, error}``."""
        out = list(self.encoders.failures) if self.encoders else []
        return out + [f for d in self.decoders for f in getattr(d, "failures", [])]


def as_fit_spec(what, *, store, registry, include_random: bool = False,
                notes: list[str] | None = None) -> FitSpec:
    """The :class:`FitSpec` of ``what``: a FitSpec, a dict of its fields, a spec file (``.yaml``/``.yml``), or
    a dataset (a path or a dataset object) for the default spec over ``store``'s usable tables (``notes``
    receives why a table was left out)."""
    if isinstance(what, FitSpec):
        return what
    if isinstance(what, dict):
        return FitSpec(**what)
    root = dataset_root(what)
    if Path(root).suffix in (".yaml", ".yml") and _is_fit_spec_file(Path(root)):
        return load_spec(root)
    return default_spec(root, uri_of(store), uri_of(registry), include_random=include_random, notes=notes)


def _is_fit_spec_file(path: Path) -> bool:
    """A YAML file is a fit spec when it is not a dataset description (whose keys include ``responses``)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return True  # load_spec says what is wrong with it
    return not (isinstance(doc, dict) and ("responses" in doc or "timeseries" in doc))


def fit(what, *, store, registry, out: str | Path | None = None, include_random: bool = False,
        progress: bool = True) -> FitResult:
    """Fit, evaluate and register every model of a fit spec: encoders for every subject x hemisphere, their
    report, then each decoder.

    Parameters
    ----------
    what : FitSpec, dict, spec file path, dataset path or dataset object
        What to fit; a dataset alone means the default spec (ridge per usable feature table, banded ridge
        on their union, the per-ROI best and the ensemble), as ``brainstore fit --dataset``.
    store, registry : URI or FeatureStore / ModelRegistry
        Where features are read and models go (a spec's own ``store`` / ``registry`` win).
    out : path, optional
        The run folder (default ``<registry>/_runs/fit-TIME``); decoders go to ``out/decoder-N-METHOD``.
    include_random : bool
        Default spec: also fit tables made with random weights.
    progress : bool
        Show progress bars.

    Returns
    -------
    FitResult
        The spec, the encoders' run and report, the decoders' runs; ``failures`` lists every failed fit.
    """
    notes: list[str] = []
    spec = as_fit_spec(what, store=store, registry=registry, include_random=include_random, notes=notes)
    store_uri, reg_uri = spec.store or uri_of(store), spec.registry or uri_of(registry)
    if spec.decoders:  # decoder targets and ROIs are checked before any model is fitted
        check_decoder_specs(spec, store_uri)
    result = FitResult(spec, notes=notes)
    if spec.models:
        from ..datasets import open_dataset
        from .reports import write_report

        run = fit_encoding_models(spec, store=store_uri, registry=reg_uri, out=out, progress=progress)
        result.encoders = run
        if run.metrics:
            result.report = write_report(run.metrics, run.kinds, run.test_preds, open_dataset(spec.dataset), run.run_dir)
    subjects = None if spec.subjects == "all" else list(spec.subjects)
    for i, d in enumerate(spec.decoders):
        sub_out = Path(out) / f"decoder-{i + 1}-{d.method}" if out is not None else None
        try:
            result.decoders.append(fit_decoder(d, dataset=spec.dataset, store=store_uri, registry=reg_uri,
                                               out=sub_out, subjects=subjects, progress=progress))
        except ValueError as e:  # (dataset, store and registry errors are ValueErrors) name the decoder
            raise ValueError(f"decoders[{i}] ({d.method} into {d.target}): {e}") from e
    return result
