"""Fit specifications (pydantic, loaded from YAML): what to fit, on which features, how."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .ridge import check_gammas

__all__ = ["AdaptorParams", "SearchParams", "SEARCH_SPACE", "DomainAdaptationParams", "DecoderSpec", "ModelSpec", "EnsembleSpec", "PerRoiSpec", "FitSpec", "MLPParams", "BandedParams", "load_spec", "SpecError"]


class SpecError(ValueError):
    """A fit specification is invalid (the message names the field)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLPParams(_Strict):
    hidden: int = 512  # hidden units per layer
    n_layers: int = 1  # hidden layers
    dropout: float = 0.2  # dropout after each hidden layer
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    epochs: int = 60  # maximum epochs (early stopping on a validation split)
    batch_size: int = 128  # samples per step
    cosine_weight: float = 0.5  # weight of the (1 - cosine) loss beside MSE
    seed: int = 0  # torch seed


class DomainAdaptationParams(_Strict):
    """Domain adaptation on unlabeled responses (seed 002 after DANCE, Saito et al. 2020): neighborhood
    clustering over a memory bank and entropy separation, weighted ``lam * supervised + (1 - lam) * (NC + ES)``.

    Decoders have no classes, so the classifier head g decides over pseudo-classes: the ``n_classes``
    k-means clusters (seeded) of the labeled subjects' training embeddings of the first target table.
    """

    lam: float = Field(0.95, gt=0, lt=1)  # lam * supervised + (1 - lam) * DA (0.95: DANCE's eta = 0.05 relative weight)
    tau: float = Field(0.5, gt=0)  # temperature of the neighborhood-clustering similarities (seed 002: 0.5)
    n_classes: int = Field(32, ge=2)  # C: k-means pseudo-classes of the labeled training embeddings
    margin: float = Field(0.5, ge=0)  # m: entropy separation acts where |H(p) - rho| > m (DANCE: 0.5)
    rho: Optional[float] = Field(None, ge=0)  # entropy threshold; None: log(C) / 2 (DANCE)
    memory: Optional[int] = Field(None, ge=2)  # N: target samples per adapt subject in the bank (None: all)
    classifier_temperature: float = Field(0.05, gt=0)  # g is a cosine classifier: logits = cos / T (DANCE: 0.05)

    def resolved_rho(self) -> float:
        """rho, or DANCE's default log(C) / 2."""
        return float(self.rho) if self.rho is not None else float(np.log(self.n_classes) / 2)


class AdaptorParams(_Strict):
    """Adaptor decoder settings: per-subject adapters, shared residual-MLP backbone, one head per target.

    Adapters: "linear" (``Linear(n_vox, latent)``), "lowrank" (linear plus a rank-``rank`` nonlinear
    residual, seed 002) or "factored" (``Linear(n_vox, rank, bias=False) -> Linear(rank, latent)``, a
    low-rank linear map: ``n_vox * rank + rank * latent + latent`` parameters). With ``init_from``, the
    pretrained subjects keep the adapters they were trained with; subjects the pretrained model lacks
    get ``new_adapter`` / ``new_rank`` (None: ``adapter`` / ``rank``), freshly initialized
    (``new_adapter_init: random``) or started from the pretrained subjects' adapters averaged vertex by
    vertex (``mean``: for subjects in one anatomical vertex space, as Algonauts' challenge space; a
    factored new adapter takes the best rank-``new_rank`` approximation of the mean map).
    """

    adapter: Literal["linear", "lowrank", "factored"] = "linear"  # per-subject map into the shared latent
    rank: int = Field(64, ge=1)  # lowrank: rank of the nonlinear residual; factored: rank of the linear map
    new_adapter: Optional[Literal["linear", "lowrank", "factored"]] = None  # with init_from: subjects it lacks
    new_rank: Optional[int] = Field(None, ge=1)  # with init_from: rank of the new subjects' adapters
    new_adapter_init: Literal["random", "mean"] = "random"  # with init_from: start of the new subjects' adapters
    latent: int = Field(512, ge=8)  # width of the shared latent and backbone
    n_blocks: int = Field(2, ge=0)  # residual MLP blocks of the backbone
    dropout: float = Field(0.1, ge=0, lt=1)
    contrastive: Literal["clip", "softclip", "bimixco"] = "clip"  # bimixco: mixup-contrastive, then softclip
    mixco_fraction: float = Field(0.33, ge=0, le=1)  # with bimixco: share of the epochs that use it
    temperature: float = Field(0.05, gt=0)  # initial temperature of the contrastive logits (learned)
    beta: float = Field(0.8, ge=0, le=1)  # beta * contrastive + (1 - beta) * regression (MSE + l1_weight * L1)
    l1_weight: float = Field(0.1, ge=0)
    lr: float = Field(3e-4, gt=0)  # AdamW
    weight_decay: float = Field(1e-2, ge=0)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=2)  # per subject and worker (contrastive negatives come from the batch)
    # last share of each subject's training images (by stimulus): early stopping, the search, the ridge comparison
    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    # stop after this many epochs without a better validation top-1 (None: train every epoch); the model kept is
    # always the best epoch's
    patience: Optional[int] = Field(8, ge=1)
    # a later epoch is kept over the kept one when better on validation by more than this (None: one standard error
    # of the kept figure over the validation rankings; 0: any gain)
    min_delta: Optional[float] = Field(None, ge=0)
    # start from the ridge decoder: its map (fitted on the training rows, fixed) plus the network, whose heads start
    # at zero, so the start decodes as ridge does and is judged too (epoch -1). None: on when trained from scratch
    # (off for transfer and domain adaptation)
    ridge_base: Optional[bool] = None
    # keep only epochs (and search trials) that are nowhere below the ridge decoder on the same validation rows, in
    # either direction and for any subject, by more than min_delta (None: one standard error of ridge's figure);
    # the start with ridge_base is ridge itself. Applies when the ridge is compared (from scratch, no domain
    # adaptation); when no epoch holds it, the best of them is kept and the fit reports that it did not
    ridge_floor: bool = True
    seed: int = 0
    # domain adaptation on the unlabeled responses of fit_adaptor(adapt_subjects=...); None: off
    domain_adaptation: Optional[DomainAdaptationParams] = None


#: The settings an adaptor search varies by default, and their choices (the spec's own settings are the first trial).
SEARCH_SPACE: dict[str, list] = {
    "adapter": ["linear", "lowrank"], "rank": [32, 128],  # the adapters: kind and rank
    "latent": [256, 512, 1024], "n_blocks": [0, 1, 2],  # width and depth of the shared backbone
    "dropout": [0.0, 0.1, 0.3], "weight_decay": [1e-3, 1e-2, 1e-1], "lr": [1e-4, 3e-4, 1e-3],
    "beta": [0.5, 0.8, 0.95],  # the loss weights: contrastive against regression
    "ridge_base": [True, False],  # the ridge start, or the network alone (what wins where subjects share a space)
}


class SearchParams(_Strict):
    """A Ray Tune search over an adaptor's settings on the validation split (``val_fraction``), with ASHA.

    Trials train the adaptor with its Ray Train worker loop (in the trial's process, or as Ray Train runs
    with ``workers`` > 1); the first trial is the spec's own settings, the others are
    drawn (seeded) from ``space``. ASHA stops trials whose validation top-1 trails at its rungs (``grace``
    epochs, then x ``reduction``); every trial stops early by ``patience`` and keeps its best epoch. The
    search stops at ``trials`` or ``time_budget_s``. One trial at a time (``concurrent: 1``) makes the
    search deterministic by seed (ASHA compares a trial with those before it at each rung); more run faster
    on a larger cluster, ASHA's stops then depend on the order results arrive in. A killed search, started
    again on the same run folder, resumes: finished trials are kept, the unfinished one resumes from its
    last epoch.
    """

    trials: int = Field(8, ge=1)  # trials in all (the spec's own settings included)
    time_budget_s: Optional[float] = Field(None, gt=0)  # the whole search's wall time (None: no limit)
    grace: int = Field(4, ge=1)  # ASHA: epochs every trial gets before its first comparison
    reduction: int = Field(3, ge=2)  # ASHA: 1 / reduction of the trials go on at each rung
    concurrent: int = Field(1, ge=1)  # trials at once (1: deterministic)
    # Ray Train workers per trial: 1 trains in the trial's own process (no worker group to start); more: each
    # trial is a Ray Train run (DDP, GPUs when the cluster has them)
    workers: int = Field(1, ge=1)
    cpus: Optional[int] = Field(None, ge=1)  # with workers 1: CPUs (torch threads) per trial (None: the cluster's / concurrent)
    seed: int = 0  # the draws of settings
    # {AdaptorParams field: choices} varied by the search (None: SEARCH_SPACE)
    space: Optional[dict[str, list]] = None

    @field_validator("space")
    @classmethod
    def _space(cls, v):
        if v is None:
            return v
        for k, choices in v.items():
            if k not in AdaptorParams.model_fields or k in ("seed", "domain_adaptation", "val_fraction"):
                raise ValueError(f"search space field {k!r} is not an adaptor setting the search can vary; "
                                 f"choose among {', '.join(sorted(SEARCH_SPACE))} and the other AdaptorParams fields")
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"search space field {k!r}: give a non-empty list of choices, not {choices!r}")
            for c in choices:
                AdaptorParams(**{k: c})  # each choice valid for the field (an error names it)
        return v

    def resolved_space(self) -> dict[str, list]:
        return dict(self.space) if self.space is not None else {k: list(c) for k, c in SEARCH_SPACE.items()}


class BandedParams(_Strict):
    """Banded ridge settings: candidate weightings of the feature spaces (one band per table)."""

    # candidate band weightings: None (the defaults, 5 for 2 bands and 4 x bands + 1 for more: uniform,
    # each band alone, weightings in between), a number of default candidates, or the weights themselves (one row per candidate, summing to 1)
    gammas: Optional[int | list[list[float]]] = None


class ModelSpec(_Strict):
    """A base model: one regression from concatenated feature versions to every vertex."""

    name: str  # model name in the registry (unique within the spec)
    features: list[str] = Field(min_length=1)  # feature versions (store tables), concatenated in this order
    method: Literal["ridge", "mlp", "banded"] = "ridge"  # one alpha per vertex, MLP projector, or banded ridge
    mlp: Optional[MLPParams] = None  # MLP settings (method: mlp)
    banded: Optional[BandedParams] = None  # banded ridge settings (method: banded; one band per feature table)

    @model_validator(mode="after")
    def _method(self):
        if self.method == "banded" and len(self.features) < 2:
            raise ValueError(f"model {self.name!r}: method banded needs two or more feature tables (one band each)")
        if self.mlp is not None and self.method != "mlp":
            raise ValueError(f"model {self.name!r}: 'mlp' settings given but method is {self.method!r}")
        if self.banded is not None and self.method != "banded":
            raise ValueError(f"model {self.name!r}: 'banded' settings given but method is {self.method!r}")
        if self.banded is not None and self.banded.gammas is not None:
            try:  # checked here, before any work: one band per feature table
                check_gammas(self.banded.gammas, len(self.features))
            except ValueError as e:
                raise ValueError(f"model {self.name!r}: banded.gammas: {e} (one weight per feature table: "
                                 f"{len(self.features)})") from None
        return self

    def params(self) -> dict | None:
        """The method's settings as a dict (None for ridge)."""
        sub = {"mlp": self.mlp, "banded": self.banded}.get(self.method)
        return sub.model_dump() if sub is not None else ({} if self.method != "ridge" else None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "\\:*?\"<>|") or v.startswith((".", "/")):
            raise ValueError(f"model name {v!r} must be non-empty and use no \\ : * ? \" < > | nor start with . or /")
        return v


class PerRoiSpec(_Strict):
    """Vertices of each ROI take the predictions of one base model (by rules, or chosen on held-out data)."""

    name: str  # model name
    default: str  # base model for vertices outside every rule / ROI
    # ROI -> base model, in priority order (a vertex in several ROIs follows the first rule naming it);
    # an ROI is a family (prf-visualrois, floc-faces, ..., streams) or a named ROI (V1v, FFA-1, PPA, ...)
    rules: dict[str, str] = Field(default_factory=dict)
    # ignore `rules` and pick, per ROI, the member with the best validation score (held-out fold)
    choose_by_cv: bool = False
    roi_level: Literal["family", "named"] = "family"  # choose_by_cv per reported ROI family or per named ROI
    members: list[str] = Field(default_factory=list)  # candidates when choose_by_cv (default: all base models)

    @model_validator(mode="after")
    def _rules_or_choice(self):
        if self.choose_by_cv and self.rules:
            raise ValueError(f"per_roi {self.name!r}: give rules or choose_by_cv, not both")
        return self


class EnsembleSpec(_Strict):
    """Average of the predictions of several fitted models."""

    name: str  # model name
    members: list[str] = Field(min_length=2)  # models averaged (base, per-ROI or other ensembles)
    weights: Optional[list[float]] = None  # default: equal weights

    @model_validator(mode="after")
    def _weights(self):
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ValueError(f"ensemble {self.name!r}: {len(self.weights)} weights for {len(self.members)} members")
        return self


class DecoderSpec(_Strict):
    """A decoding model `brainstore fit` trains from the spec's responses into a store table."""

    target: str  # store table decoded into (CLIP image or text, captions, any table)
    # a ridge decoder per subject, one adaptor over all subjects, or auto: the adaptor (searched) against ridge on
    # the same validation split, keeping the winner
    method: Literal["ridge", "adaptor", "auto"] = "ridge"
    name: Optional[str] = None  # registry name (default decoder-ridge-TABLE / adaptor-TABLE)
    rois: Optional[list[str]] = None  # ROIs or ROI families whose vertices are read (default: all)
    alphas: Optional[list[float]] = None  # ridge: alpha grid (default logspace(0, 7, 15))
    # ridge on a time series: decode TR t from the responses of TRs t + d (the BOLD its stimulus drives)
    response_delays: Optional[list[int]] = None
    adaptor: Optional[AdaptorParams] = None  # adaptor settings (method: adaptor)
    workers: int = Field(2, ge=1)  # adaptor: Ray Train workers
    # adaptor transfer: start from a registered adaptor (name/shared), train all or only the adapters of
    # the spec's subjects, on the first `fraction` of their training images
    init_from: Optional[str] = None
    trainable: Literal["all", "adapter"] = "all"
    fraction: float = Field(1.0, gt=0, le=1)
    # adaptor domain adaptation: subjects whose unlabeled responses join training (with adaptor.domain_adaptation)
    adapt_subjects: Optional[list[str]] = None
    # adaptor / auto: the Ray Tune search of the adaptor's settings (default: 8 trials; null: train the settings
    # as given). Transfer (init_from) and domain adaptation train as given unless a search is set.
    search: Optional[SearchParams] = Field(default_factory=SearchParams)

    @model_validator(mode="after")
    def _method(self):
        if self.method == "ridge" and self.search is not None and "search" in self.model_fields_set:
            raise ValueError(f"decoder into {self.target!r}: 'search' settings need method: adaptor or auto")
        if "search" not in self.model_fields_set and (self.method == "ridge" or self.init_from or self.adapt_subjects):
            self.search = None  # the default search is for adaptors trained from scratch
        if self.method == "auto" and (self.init_from or self.adapt_subjects):
            raise ValueError(f"decoder into {self.target!r}: method auto compares adaptors trained from scratch with "
                             "ridge; use method: adaptor for transfer (init_from) or domain adaptation")
        if self.method != "ridge" and self.search is not None and (self.adaptor or AdaptorParams()).val_fraction == 0:
            raise ValueError(f"decoder into {self.target!r}: a search needs a validation split: set "
                             "adaptor.val_fraction > 0 or search: null")
        if self.method == "ridge" and self.adaptor is not None:
            raise ValueError(f"decoder into {self.target!r}: 'adaptor' settings need method: adaptor")
        if self.method != "ridge" and self.response_delays is not None:
            raise ValueError(f"decoder into {self.target!r}: response_delays are for method: ridge")
        adaptor_only = [k for k in ("init_from", "adapt_subjects") if getattr(self, k) is not None]
        adaptor_only += [k for k, d in (("trainable", "all"), ("fraction", 1.0)) if getattr(self, k) != d]
        if self.method == "ridge" and adaptor_only:
            raise ValueError(f"decoder into {self.target!r}: {', '.join(adaptor_only)} need method: adaptor")
        if self.method == "adaptor" and self.alphas is not None:
            raise ValueError(f"decoder into {self.target!r}: 'alphas' are for method: ridge")
        if self.alphas is not None and (not self.alphas or any(a <= 0 for a in self.alphas)):
            raise ValueError(f"decoder into {self.target!r}: alphas must be a non-empty list of positive numbers")
        return self


class FitSpec(_Strict):
    """Everything `brainstore fit` needs; YAML keys are these field names."""

    dataset: str  # dataset folder (Algonauts layout)
    store: Optional[str] = None  # feature store URI (CLI --store when absent)
    registry: Optional[str] = None  # model registry URI (CLI --registry when absent)
    subjects: list[str] | Literal["all"] = "all"  # subjects to fit
    hemispheres: list[Literal["lh", "rh"]] = ["lh", "rh"]  # hemispheres to fit
    alphas: list[float] = Field(default_factory=lambda: np.logspace(0, 6, 10).tolist())  # ridge alpha grid
    folds: int = Field(5, ge=3)  # K contiguous folds: alphas by CV over K-1, the last one held out for validation
    scoring: Literal["pearson", "r2"] = "pearson"  # CV score that picks each vertex's alpha
    device: Literal["auto", "cpu", "cuda"] = "auto"  # compute device per fit task
    models: list[ModelSpec] = Field(default_factory=list)  # base encoding models
    per_roi: list[PerRoiSpec] = Field(default_factory=list)  # per-ROI compositions
    ensembles: list[EnsembleSpec] = Field(default_factory=list)  # averages
    decoders: list[DecoderSpec] = Field(default_factory=list)  # decoding models (responses -> store tables)

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v or any(a <= 0 for a in v):
            raise ValueError("alphas must be a non-empty list of positive numbers")
        return v

    @model_validator(mode="after")
    def _references(self):
        if not self.models and not self.decoders:
            raise ValueError("a fit spec needs at least one entry under 'models' (encoders) or 'decoders'")
        dnames = [d.name for d in self.decoders if d.name]
        if len(set(dnames)) < len(dnames):
            raise ValueError(f"decoder names must be unique; repeated: {sorted({n for n in dnames if dnames.count(n) > 1})}")
        base = [m.name for m in self.models]
        names = base + [p.name for p in self.per_roi] + [e.name for e in self.ensembles]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique; repeated: {dup}")
        for p in self.per_roi:
            for ref in [p.default, *p.rules.values(), *p.members]:
                if ref not in base:
                    raise ValueError(f"per_roi {p.name!r} refers to {ref!r}, which is not a base model ({base})")
        known = set(base) | {p.name for p in self.per_roi}
        for e in self.ensembles:
            for ref in e.members:
                if ref not in known:
                    raise ValueError(f"ensemble {e.name!r} refers to unknown model {ref!r} (known: {sorted(known)})")
                known.add(e.name)
        return self


def _given(err: dict) -> str:
    """``" (given: VALUE)"`` for a wrong scalar value, so the message shows what was written."""
    v = err.get("input")
    if err.get("type") in ("missing", "extra_forbidden") or isinstance(v, (dict, list)) or v is None:
        return ""
    return f" (given: {v!r})"


def load_spec(path: str | Path, **overrides) -> FitSpec:
    """Read a YAML fit spec; errors name the file and the field."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SpecError(f"fit spec {path} does not exist") from None
    except yaml.YAMLError as e:
        raise SpecError(f"fit spec {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"fit spec {path} must be a mapping of fields (dataset, models, ...)")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return FitSpec(**raw)
    except ValidationError as e:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}{_given(err)}" for err in e.errors()]
        raise SpecError(f"fit spec {path} is invalid:\n  " + "\n  ".join(lines)) from None
