"""The ``hf`` extractor against transformers: modalities, layers (numbered as ``clip``'s), errors."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.features.extractors import WeightsNotFoundError, get_extractor
from brainstore.features.extractors import _base
from tests.features.extractors.helpers import TINY, _images


def test_hf_modality_layers_and_errors(assets, tmp_path):
    assert get_extractor(f"hf:model={assets.hf['videomae']}").modality == "video"
    assert get_extractor(f"hf:model={assets.hf['bert']}").modality == "text"
    vit = get_extractor(f"hf:model={assets.hf['vit']},layer=-1")
    assert vit.modality == "image" and vit.options["pooling"] == "cls" and vit.version.endswith("-l1-cls")
    with pytest.raises(ValueError, match="'layer'"):
        get_extractor(f"hf:model={assets.hf['vit']},layer=7")
    with pytest.raises(ValueError, match="out of range for 2 blocks"):  # 2 blocks: 0, 1 (-2, -1)
        get_extractor(f"hf:model={assets.hf['vit']},layer=2")
    with pytest.raises(ValueError, match="'model'"):
        get_extractor("hf")
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "none")):
        get_extractor(f"hf:model={tmp_path / 'none'}")
    with pytest.raises(WeightsNotFoundError, match="models--org--name"):
        get_extractor(f"hf:model=org/name,cache_dir={tmp_path}")
    # the hidden state really is the one asked for (independent forward pass)
    import torch
    import transformers as tf

    ext = get_extractor(f"hf:model={assets.hf['dinov2']},layer=1,pooling=mean")
    ext.load()
    x = np.stack([ext.preprocess(i) for i in _images(2)])
    with torch.no_grad():  # block 1 = hidden_states[2] (hidden_states[0] is the embedding output)
        hs = tf.AutoModel.from_pretrained(assets.hf["dinov2"])(pixel_values=torch.as_tensor(x),
                                                                output_hidden_states=True).hidden_states[2]
    np.testing.assert_allclose(ext.embed(x), hs[:, 1:].mean(1).numpy(), atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1, -1, -2])
def test_layer_numbering_is_the_same_for_clip_and_hf(assets, layer):
    """``layer=i`` is the output of transformer block i for both (0 = first block, -1 = last),
    checked against each model's own per-block outputs."""
    import torch
    import transformers as tf

    imgs = _images(2)
    clip = get_extractor(f"clip:arch={TINY},pretrained=none,layer={layer}")
    clip.load()
    x = np.stack([clip.preprocess(i) for i in imgs])
    model, captured = clip._rt["model"], {}
    block = model.visual.transformer.resblocks[layer]
    hook = block.register_forward_hook(lambda m, i, o: captured.update(out=o))
    with torch.no_grad():
        model.encode_image(torch.as_tensor(clip.normalize(x)))
    hook.remove()
    np.testing.assert_allclose(clip.embed(x), captured["out"].numpy()[:, 0], atol=1e-5)

    hf = get_extractor(f"hf:model={assets.hf['vit']},layer={layer}")
    hf.load()
    x = np.stack([hf.preprocess(i) for i in imgs])
    vit = tf.AutoModel.from_pretrained(assets.hf["vit"]).eval()
    with torch.no_grad():
        blocks = vit(pixel_values=torch.as_tensor(x), output_hidden_states=True).hidden_states[1:]  # drop embeddings
    np.testing.assert_allclose(hf.embed(x), blocks[layer][:, 0].numpy(), atol=1e-5)
    assert clip.options["layer"] == hf.options["layer"] == layer % 2  # both tiny models have 2 blocks
    for ext in (clip, hf):  # one documented convention
        assert _base.BLOCK_LAYERS in ext.option_docs()["layer"] and _base.BLOCK_LAYERS in ext.info().layers
