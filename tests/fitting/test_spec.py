"""The fit spec (``brainstore.fitting._spec``): pydantic models whose errors name the field."""

import numpy as np
import pytest

from brainstore.fitting import FitSpec, SpecError, load_spec


def test_spec_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="refers to unknown model 'nope'"):
        FitSpec(dataset="d", models=[{"name": "a", "features": ["f"]}], ensembles=[{"name": "e", "members": ["a", "nope"]}])
    with pytest.raises(ValueError, match="banded needs two or more feature tables"):
        FitSpec(dataset="d", models=[{"name": "a", "features": ["f"], "method": "banded"}])
    with pytest.raises(ValueError, match="rules or choose_by_cv, not both"):
        FitSpec(dataset="d", models=[{"name": "a", "features": ["f"]}],
                per_roi=[{"name": "p", "default": "a", "rules": {"V1v": "a"}, "choose_by_cv": True}])
    p = tmp_path / "spec.yaml"
    p.write_text("dataset: d\nmodels:\n  - name: a\n    features: [f]\n    method: lasso\n")
    with pytest.raises(SpecError, match=r"models.0.method"):
        load_spec(p)
    p.write_text("dataset: d\nfolds: 2\nmodels:\n  - name: a\n    features: [f]\n")
    with pytest.raises(SpecError, match="folds"):
        load_spec(p)


def test_domain_adaptation_params_are_strict():
    from pydantic import ValidationError

    from brainstore.fitting._spec import AdaptorParams

    p = AdaptorParams(domain_adaptation={"n_classes": 16})
    assert p.domain_adaptation.tau == 0.5 and p.domain_adaptation.resolved_rho() == pytest.approx(np.log(16) / 2)
    with pytest.raises(ValidationError):
        AdaptorParams(domain_adaptation={"lambda": 0.5})
    with pytest.raises(ValidationError):
        AdaptorParams(domain_adaptation={"lam": 1.5})
