"""The pipeline files the pipeline tests write: a tiny pipeline over the session's small dataset (a text and
a tiny random-weight CLIP table, two encoders and a ridge decoder; no maps on the cortex, which one test turns
on)."""

from __future__ import annotations

from pathlib import Path

IMG = "clip:arch=brainstore-tiny-clip,pretrained=none"
TXT_TABLE = "text-all-minilm-l6-v2"

PIPELINE = """\
# a tiny pipeline over the session's small dataset
dataset: {dataset}
store: store
registry: registry
extract:
  - spec: text
    concurrency: 1
  - spec: {img}
    batch_size: 32
fit:
  alphas: [1, 100, 10000]
  folds: 3
  models:
    - name: img
      features: [{img_table}]
    - name: both
      features: [{img_table}, {txt_table}]
  decoders:
    - target: {txt_table}
      alphas: [1, 100, 10000]
evaluate:
  rois: families
  maps: false
report:
  html: true
"""


def _img_table() -> str:
    from brainstore.features import get_extractor
    from brainstore.features.extractors.testing import register_tiny_models

    register_tiny_models(with_open_clip=False)
    return get_extractor(IMG).version


def _write(folder: Path, text: str, name: str = "pipeline.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


def _pipeline_text(dataset: Path) -> str:
    return PIPELINE.format(dataset=dataset, img=IMG, img_table=_img_table(), txt_table=TXT_TABLE)
