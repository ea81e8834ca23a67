"""What the store tests share: table metadata and a table filled with random rows."""

import numpy as np

META = {"extractor": "test", "architecture": "toy", "pretrained": "none", "layer": "final", "pooling": "cls",
        "preprocessing": "none", "dtype": "float32"}


def _fill(fs, name="f", n=50, dim=8, seed=0, splits=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"s{i:03d}" for i in range(n)]
    fs.ensure_table(name, dim, META)
    fs.write(name, ids, X, dataset="d", split=splits or "train")
    return ids, X
