"""Frame sampling of the ``video`` extractor (PyAV)."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.features.extractors import VideoDecodeError, get_extractor, read_frames


def test_read_frames_uniform_sampling(assets, tmp_path):
    frames = read_frames(assets.video, 4)  # 16 frames -> indices 0, 5, 10, 15
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    red = [f[..., 0].mean() for f in frames]
    np.testing.assert_allclose(red, [0, 85, 170, 255], atol=12)
    assert len(read_frames(assets.video2, 16)) == 16  # short clip: indices repeat
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        get_extractor("video").preprocess(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        read_frames(bad, 4)
