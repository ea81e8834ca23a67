"""TR stimulus ids and the frames of each TR (video fMRI time series)."""

from __future__ import annotations

import math

import pytest

from brainstore.datasets import frames_of_tr, n_trs, split_tr_id, tr_id


def test_tr_ids_round_trip_and_frames_of_tr():
    assert tr_id("run-01", 7) == "run-01/tr0007"
    assert split_tr_id("a/b/tr0012") == ("a/b", 12)
    with pytest.raises(ValueError, match="not a TR stimulus id"):
        split_tr_id("nsd-00012")
    # 8 fps, TR 2 s: TR k holds frames 16k .. 16k + 15
    assert [frames_of_tr(k, 8, 2.0) for k in range(3)] == [(0, 16), (16, 32), (32, 48)]
    # 15 fps, TR 0.7 s: 10.5 frames per TR; frame j (time j/15) belongs to TR floor(j / 10.5)
    got = [frames_of_tr(k, 15, 0.7) for k in range(4)]
    for k, (a, b) in enumerate(got):
        assert all(math.floor(j / 15 / 0.7 + 1e-9) == k for j in range(a, b))
    assert [a for a, _ in got[1:]] == [b for _, b in got[:-1]]  # the TRs tile the frames
    assert n_trs(100, 8, 2.0) == 6 and n_trs(96, 8, 2.0) == 6 and n_trs(15, 8, 2.0) == 0
