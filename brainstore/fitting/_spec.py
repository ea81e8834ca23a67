"""Fit specifications (pydantic, loaded from YAML): what to fit, on which features, how."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["ModelSpec", "EnsembleSpec", "PerRoiSpec", "FitSpec", "load_spec", "SpecError"]

ROI_FAMILY_NAMES = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words", "streams")


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


class ModelSpec(_Strict):
    """A base model: one regression from concatenated feature versions to every vertex."""

    name: str  # model name in the registry (unique within the spec)
    features: list[str] = Field(min_length=1)  # feature versions (store tables), concatenated in this order
    method: Literal["ridge", "mlp"] = "ridge"  # regularized linear map or MLP projector
    mlp: Optional[MLPParams] = None  # MLP settings (method: mlp)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "\\:*?\"<>|") or v.startswith((".", "/")):
            raise ValueError(f"model name {v!r} must be non-empty and use no \\ : * ? \" < > | nor start with . or /")
        return v


class PerRoiSpec(_Strict):
    """Vertices of each ROI family take the predictions of a chosen base model."""

    name: str  # model name
    default: str  # base model for vertices outside the listed families
    rules: dict[str, str] = Field(default_factory=dict)  # ROI family -> base model, e.g. {prf-visualrois: sam}
    choose_by_cv: bool = False  # ignore `rules` and pick, per ROI family, the member with the best CV score
    members: list[str] = Field(default_factory=list)  # candidates when choose_by_cv (default: all base models)

    @field_validator("rules")
    @classmethod
    def _families(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if k not in ROI_FAMILY_NAMES]
        if bad:
            raise ValueError(f"unknown ROI family {bad}; families: {list(ROI_FAMILY_NAMES)}")
        return v


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


class FitSpec(_Strict):
    """Everything `brainstore fit` needs; YAML keys are these field names."""

    dataset: str  # dataset folder (Algonauts layout)
    store: Optional[str] = None  # feature store URI (CLI --store when absent)
    registry: Optional[str] = None  # model registry URI (CLI --registry when absent)
    subjects: list[str] | Literal["all"] = "all"  # subjects to fit
    hemispheres: list[Literal["lh", "rh"]] = ["lh", "rh"]  # hemispheres to fit
    alphas: list[float] = Field(default_factory=lambda: np.logspace(0, 6, 10).tolist())  # ridge alpha grid
    folds: int = Field(5, ge=2)  # K in K-fold cross-validation
    scoring: Literal["pearson", "r2"] = "pearson"  # CV score that picks each vertex's alpha
    device: Literal["auto", "cpu", "cuda"] = "auto"  # compute device per fit task
    models: list[ModelSpec] = Field(min_length=1)  # base models
    per_roi: list[PerRoiSpec] = Field(default_factory=list)  # per-ROI compositions
    ensembles: list[EnsembleSpec] = Field(default_factory=list)  # averages

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v or any(a <= 0 for a in v):
            raise ValueError("alphas must be a non-empty list of positive numbers")
        return v

    @model_validator(mode="after")
    def _references(self):
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
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise SpecError(f"fit spec {path} is invalid:\n  " + "\n  ".join(lines)) from None
