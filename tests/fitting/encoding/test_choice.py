"""Choices against hand-computed references: rule priority, choice per region, cross-fitted choices
and the validation score (``brainstore.fitting.encoding._choice``)."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from brainstore.fitting.encoding._choice import (
    choose_per_region,
    cross_fitted_choices,
    resolve_regions,
    rule_choice,
    validation_halves,
    validation_r,
)


def test_rules_first_rule_wins_on_overlap():
    regions = {"V1v": np.array([1, 1, 0, 0, 0], bool),          # inside the family below
               "prf-visualrois": np.array([1, 1, 1, 0, 0], bool),
               "streams": np.array([0, 1, 1, 1, 0], bool)}
    # V1v first: vertices 0-1 take member 1; the family takes the rest of its vertices (2); streams vertex 3
    np.testing.assert_array_equal(rule_choice(regions, {"V1v": 1, "prf-visualrois": 2, "streams": 3}, 5),
                                  [1, 1, 2, 3, 0])
    # the same rules in another order give another (documented) result
    np.testing.assert_array_equal(rule_choice(regions, {"streams": 3, "V1v": 1, "prf-visualrois": 2}, 5),
                                  [1, 3, 3, 3, 0])


def test_unknown_roi_names_the_available_ones():
    with pytest.raises(ValueError, match=r"ROI \['FFA-9'\] not in the dataset; available ROIs: V1v, PPA"):
        resolve_regions({"V1v": np.ones(2, bool), "PPA": np.ones(2, bool)}, ["V1v", "FFA-9"], "per_roi 'p' rules")


def test_choice_per_region_by_hand():
    scores = np.array([[0.1, 0.2, 0.9, 0.0, 0.5],
                       [0.3, 0.4, 0.0, 0.1, 0.9]])
    regions = [np.array([1, 1, 0, 0, 0], bool), np.array([0, 1, 1, 0, 0], bool)]
    # region 1: member means 0.15 vs 0.35 -> member 1 (vertices 0, 1); region 2: 0.55 vs 0.2 -> member 0,
    # but vertex 1 was taken by region 1; vertex 3, 4 outside: the default (0)
    np.testing.assert_array_equal(choose_per_region(scores, regions), [1, 1, 0, 0, 0])


def test_cross_fitted_choices_use_the_other_half():
    s1 = np.array([[1.0, 1.0], [0.0, 0.0]])  # half 1 prefers member 0
    s2 = np.array([[0.0, 0.0], [0.5, 0.5]])  # half 2 prefers member 1
    region = [np.array([True, True])]
    c1, c2, final = cross_fitted_choices((s1, s2), region)
    np.testing.assert_array_equal(c1, [1, 1])  # half 1 follows the choice made on half 2
    np.testing.assert_array_equal(c2, [0, 0])
    np.testing.assert_array_equal(final, [0, 0])  # mean: 0.5 vs 0.25


def test_validation_r_is_the_mean_of_per_half_pearson():
    rng = np.random.default_rng(0)
    pred, true = rng.normal(size=(21, 3)), rng.normal(size=(21, 3))
    a, b = validation_halves(21)
    assert (a, b) == (slice(0, 10), slice(10, 21))
    want = [0.5 * (pearsonr(pred[a, j], true[a, j])[0] + pearsonr(pred[b, j], true[b, j])[0]) for j in range(3)]
    np.testing.assert_allclose(validation_r(pred, true), want, rtol=1e-10)
    with pytest.raises(ValueError, match="at least 4"):
        validation_halves(3)
