"""``sam`` extractor: Segment Anything image encoder, pooled to a fixed vector."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Extractor, ExtractorInfo, WeightsNotFoundError
from ..._provenance import sha256_file
from ._spec import Option, choice, int_range, text
from ._util import check_pil_image, weights_dir
from ._imaging import sam_preprocess
from ._registry import register

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
OUT_CHANS = 256
PATCH = 16

#: encoder settings of segment_anything.build_sam (``tiny`` is for tests and demos only)
VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14, img_size=1024),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), window_size=14, img_size=1024),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14, img_size=1024),
    "tiny": dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2, img_size=64),
}
OFFICIAL_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def default_checkpoint_locations(variant: str) -> list[str]:
    """Where ``sam`` looks for the official file when no ``checkpoint=`` is given."""
    fname = OFFICIAL_FILES.get(variant)
    if fname is None:
        return []
    torch_home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    return [str(weights_dir() / "sam" / fname), str(weights_dir() / fname),
            os.path.join(torch_home, "hub", "checkpoints", fname)]


def build_image_encoder(variant: str, img_size: int):
    """Construct a (randomly initialised) ``ImageEncoderViT`` exactly as ``build_sam`` does."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT

    v = VARIANTS[variant]
    return ImageEncoderViT(
        depth=v["depth"], embed_dim=v["embed_dim"], img_size=img_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=v["num_heads"], patch_size=PATCH,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(v["global_attn_indexes"]),
        window_size=v["window_size"], out_chans=OUT_CHANS)


def _adapt_state_dict(sd: dict, model) -> dict:
    """Interpolate ``pos_embed`` and global-attention ``rel_pos_*`` when ``img_size`` differs from training."""
    import torch.nn.functional as F

    own = model.state_dict()
    for k, v in list(sd.items()):
        if k not in own or own[k].shape == v.shape:
            continue
        if k == "pos_embed":  # (1, H, W, C)
            sd[k] = F.interpolate(v.permute(0, 3, 1, 2), size=own[k].shape[1:3], mode="bicubic",
                                  align_corners=False).permute(0, 2, 3, 1)
        elif k.endswith(("rel_pos_h", "rel_pos_w")):  # (2S-1, head_dim), as get_rel_pos interpolates
            sd[k] = F.interpolate(v.T[None], size=own[k].shape[0], mode="linear")[0].T
    return sd


@register
class SamExtractor(Extractor):
    """SAM image encoder (256x64x64 at 1024 px) pooled to ``256`` (``mean``) or ``256*G*G`` (``grid``).

    ``preprocess`` returns float32 ``(3, img_size, img_size)``: longest side
    resized to ``img_size`` (bilinear, like ``ResizeLongestSide``), normalized
    with SAM's pixel mean/std and zero-padded bottom/right (``Sam.preprocess``).
    Pooling covers the full padded feature map, as SAM itself sees it.
    """

    name = "sam"
    DESCRIPTION = "Segment Anything ViT image encoder, mean- or grid-pooled"
    PACKAGES = ("segment-anything", "torchvision")
    OPTIONS = {
        "variant": Option("vit_b", choice(*VARIANTS), "vit_b | vit_l | vit_h (tiny: tests/demos only)"),
        "checkpoint": Option(None, text, f"official SAM .pth file, e.g. {OFFICIAL_FILES['vit_b']}"),
        "pretrained": Option("sam", choice("sam", "none"), "sam (weights from checkpoint) | none (seeded random init)"),
        "pooling": Option("mean", choice("mean", "grid"), "mean (256-d) | grid (adaptive avg pool to GxG)"),
        "grid": Option(4, int_range(1, 64), "G for pooling=grid"),
        "img_size": Option(None, int_range(PATCH, 4096), "input side (default 1024; tiny: 64); multiple of 16"),
        "seed": Option(0, int_range(0), "torch seed for pretrained=none"),
    }

    def _setup(self) -> None:
        o = self.options
        if o["img_size"] is None:
            o["img_size"] = VARIANTS[o["variant"]]["img_size"]
        if o["img_size"] % PATCH:
            raise ValueError(f"bad value for option 'img_size': {o['img_size']} is not a multiple of {PATCH}")
        if o["pretrained"] == "none" and o["checkpoint"]:
            raise ValueError("options 'pretrained=none' and 'checkpoint' exclude each other")
        self.modality = "image"
        self._dim = OUT_CHANS if o["pooling"] == "mean" else OUT_CHANS * o["grid"] ** 2
        self._path: str | None = None

    def _version_parts(self) -> list[Any]:
        o = self.options
        if o["pretrained"] == "none":
            w = [f"random-s{o['seed']}"]
        else:
            path = self._resolve()
            w = [Path(path).stem, sha256_file(path)[:8]]
        pool = "mean" if o["pooling"] == "mean" else f"grid{o['grid']}"
        size = [] if o["img_size"] == VARIANTS[o["variant"]]["img_size"] else [f"img{o['img_size']}"]
        return [o["variant"], *w, pool, *size]

    def _resolve(self) -> str | None:
        o = self.options
        if o["pretrained"] == "none":
            return None
        if self._path is None:
            cands = [o["checkpoint"]] if o["checkpoint"] else default_checkpoint_locations(o["variant"])
            hit = next((c for c in cands if os.path.isfile(c)), None)
            if hit is None:
                fname = OFFICIAL_FILES.get(o["variant"], "<tiny checkpoint>")
                raise WeightsNotFoundError(
                    f"SAM {o['variant']} checkpoint not found; looked in: {', '.join(cands) or '(nothing)'}\n"
                    f"To fix: run `brainstore weights pull sam:variant={o['variant']}` where it can be reached, or "
                    f"download {OFFICIAL_URL}{fname} on a machine with internet, then pass "
                    f"checkpoint=/path/to/{fname} or put it in {weights_dir() / 'sam'} ($BRAINSTORE_WEIGHTS_DIR); "
                    "pretrained=none gives an explicitly random-initialised encoder", cands)
            self._path = hit
        return self._path

    def resolve_weights(self) -> str:
        return self._resolve() or f"random-init (torch seed {self.options['seed']})"

    def preprocess(self, item: Any) -> np.ndarray:
        """PIL image -> float32 ``(3, img_size, img_size)``."""
        return sam_preprocess(check_pil_image(item, "sam"), self.options["img_size"], PIXEL_MEAN, PIXEL_STD)

    def _load(self, device: str) -> None:
        import torch

        o = self.options
        path = self._resolve()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o["seed"])
            enc = build_image_encoder(o["variant"], o["img_size"])
        if path is not None:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
            if any(k.startswith("image_encoder.") for k in sd):
                sd = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
            try:
                enc.load_state_dict(_adapt_state_dict(sd, enc), strict=True)
            except RuntimeError as e:
                raise RuntimeError(f"checkpoint {path} does not match sam variant={o['variant']!r}: "
                                   f"{str(e)[:500]}\nTo fix: pick the variant the file was trained as "
                                   f"({', '.join(f'{k}: {v}' for k, v in OFFICIAL_FILES.items())})") from None
        self._rt["model"] = enc.eval().to(device)

    def _embed(self, batch: Any) -> Any:
        import torch.nn.functional as F

        feats = self._rt["model"](self.to_tensor(batch)).float()  # (n, 256, S/16, S/16)
        if self.options["pooling"] == "mean":
            return feats.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(feats, self.options["grid"]).flatten(1)  # channel-major (256, G, G)

    def _metadata(self) -> dict[str, Any]:
        o = self.options
        try:
            path = self._resolve()
            sha, source = (sha256_file(path), path) if path else ("none", f"random-init (torch seed {o['seed']})")
        except WeightsNotFoundError as e:
            sha, source = "unresolved", f"unresolved: {str(e).splitlines()[0]}"
        v = VARIANTS[o["variant"]]
        return {
            "architecture": f"segment_anything ImageEncoderViT {o['variant']} (embed_dim={v['embed_dim']}, "
                            f"depth={v['depth']}, heads={v['num_heads']}, out_chans={OUT_CHANS})",
            "pretrained": "none" if o["pretrained"] == "none" else f"sha256:{sha}",
            "weights_source": source, "weights_sha256": sha,
            "random_init": "true" if o["pretrained"] == "none" else "false",
            "seed": str(o["seed"]) if o["pretrained"] == "none" else "none",
            "layer": "neck", "layer_detail": "image_encoder output (after neck), 256 x S/16 x S/16",
            "pooling": "global mean over the padded map" if o["pooling"] == "mean"
                       else f"adaptive_avg_pool2d to {o['grid']}x{o['grid']}, flattened channel-major",
            "preprocessing": {"resize": f"longest side -> {o['img_size']} (PIL bilinear, ResizeLongestSide)",
                              "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD, "scale": "0-255",
                              "pad": f"zeros bottom/right to {o['img_size']}x{o['img_size']} after normalization",
                              "img_size": o["img_size"]},
        }

    @classmethod
    def info(cls) -> ExtractorInfo:
        ok, detail = cls.offline_status()
        return ExtractorInfo(
            name=cls.name, modalities=("image",), default_spec="sam:variant=vit_b,pooling=mean", default_dim=OUT_CHANS,
            layers="neck output only", poolings=("mean", "grid"), options=cls.option_docs(),
            weights=f"checkpoint=<file> or official files ({', '.join(OFFICIAL_FILES.values())}) in "
                    f"$BRAINSTORE_WEIGHTS_DIR[/sam] or $TORCH_HOME/hub/checkpoints; pretrained=none",
            offline=ok, offline_detail=detail, description=cls.DESCRIPTION)
