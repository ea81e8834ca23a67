"""Frame sampling with PyAV and the ``video`` extractor (an image extractor pooled over time)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._base import Extractor, ExtractorInfo
from ._spec import Option, choice, int_range, text
from ._registry import get_extractor, register


class VideoDecodeError(ValueError):
    """A video file could not be opened or decoded (the message names the path)."""


def sample_indices(n_total: int, n: int) -> np.ndarray:
    """``n`` frame indices spread uniformly over ``[0, n_total - 1]`` (repeats if the clip is short)."""
    return np.linspace(0, n_total - 1, n).round().astype(int)


@contextlib.contextmanager
def open_video(path: str | os.PathLike, verb: str = "open") -> Iterator[tuple[Any, Any]]:
    """``(container, first video stream)`` of a video file, opened with PyAV.

    Any failure inside the block that is not already a :class:`VideoDecodeError` (an FFmpeg
    error, invalid data) becomes one naming the file: ``cannot <verb> video <path>: ...``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    VideoDecodeError
        If the file is not a video, has no video stream, or fails inside the block.
    """
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"no video stream in {path}")
            yield container, container.streams.video[0]
    except VideoDecodeError:
        raise
    except Exception as e:  # av.error.FFmpegError, InvalidDataError, ...
        raise VideoDecodeError(f"cannot {verb} video {path}: {type(e).__name__}: {e}") from e


def read_frames(path: str | os.PathLike, n: int) -> list[np.ndarray]:
    """Decode ``n`` uniformly sampled RGB frames (uint8 ``H x W x 3``) from a video file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    VideoDecodeError
        If the file is not a decodable video or has no video frames.
    """
    path = os.fspath(path)
    with open_video(path, "decode") as (container, stream):
        stream.thread_type = "AUTO"
        declared = int(stream.frames or 0)
        if declared > 0:
            want = sample_indices(declared, n)
            keep = set(want.tolist())
            got: dict[int, np.ndarray] = {}
            for i, frame in enumerate(container.decode(stream)):
                if i in keep:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= want[-1]:
                    break
            if len(got) == len(keep):
                return [got[i] for i in want]
            container.seek(0)  # the declared count was wrong: fall back to decoding everything
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise VideoDecodeError(f"no decodable frames in {path}")
    return [frames[i] for i in sample_indices(len(frames), n)]


@register
class VideoExtractor(Extractor):
    """Run an image extractor on ``frames`` uniformly sampled frames and pool over time.

    ``preprocess(path)`` returns the stacked per-frame preprocess outputs,
    ``(frames, C, H, W)`` (uint8 for CLIP, float32 otherwise); ``embed`` gives ``dim = image.dim``
    (``pool=mean``) or ``frames * image.dim`` (``pool=concat``, frame-major).
    """

    name = "video"
    DESCRIPTION = "image extractor over uniformly sampled frames, pooled over time"
    PACKAGES = ("av",)
    WRAPS = "image"
    OPTIONS = {
        "image": Option("clip", text, "image extractor spec, bracketed if it has options: image=[clip:arch=...]"),
        "frames": Option(8, int_range(1, 1024), "number of frames sampled uniformly over the clip"),
        "pool": Option("mean", choice("mean", "concat"), "mean over frames | concat (frame-major)"),
    }

    def _setup(self) -> None:
        o = self.options
        self.image = get_extractor(o["image"])
        if self.image.modality != "image":
            raise ValueError(f"bad value for option 'image': {self.image.spec!r} has modality "
                             f"{self.image.modality!r}; an image extractor is needed")
        self.options["image"] = self.image.spec
        self.PACKAGES = ("av",) + tuple(p for p in self.image.PACKAGES if p != "av")
        self.modality = "video"
        if self.image._dim is not None:
            self._dim = self.image._dim * (o["frames"] if o["pool"] == "concat" else 1)

    def _version_parts(self) -> list[Any]:
        o = self.options
        return [f"{o['frames']}f", o["pool"], self.image.version]

    def resolve_weights(self) -> str:
        return self.image.resolve_weights()

    def preprocess(self, item: Any) -> np.ndarray:
        """Video file path -> ``(frames, C, H, W)``, the frame extractor's preprocess outputs stacked."""
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"video: expected a video file path, got {type(item).__name__}")
        from PIL import Image

        frames = read_frames(item, self.options["frames"])
        return np.stack([self.image.preprocess(Image.fromarray(f)) for f in frames])

    @property
    def loaded(self) -> bool:
        return self.image.loaded and "device" in self._rt

    def _load(self, device: str) -> None:
        pass  # the image extractor is loaded in load() so that it gets the dtype as well

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        """Load the frame extractor (see :meth:`Extractor.load`)."""
        self.image.load(device, dtype)
        self._rt.update(model=None, device=device, dtype=dtype)

    def embed(self, batch: Any) -> np.ndarray:
        """``(n, frames, C, H, W)`` -> float32 ``(n, dim)``."""
        if not self.loaded:
            raise RuntimeError(f"{self!r}: call load() before embed()")
        x = np.asarray(batch)
        n, f = x.shape[:2]
        feats = self.image.embed(x.reshape(n * f, *x.shape[2:])).reshape(n, f, -1)
        out = feats.mean(axis=1) if self.options["pool"] == "mean" else feats.reshape(n, -1)
        self._dim = out.shape[1]
        return np.ascontiguousarray(out, dtype=np.float32)

    def metadata(self, dtype: str | None = None, device: str | None = None) -> dict[str, str]:
        self._md_args = (dtype, device)
        return super().metadata(dtype, device)

    def _metadata(self) -> dict[str, Any]:
        o = self.options
        im = self.image.metadata(*getattr(self, "_md_args", (None, None)))
        md = {k: im[k] for k in ("architecture", "pretrained", "weights_source", "weights_sha256", "random_init")}
        md.update({
            "image_spec": self.image.spec, "image_version": self.image.version, "frames": str(o["frames"]),
            "layer": im["layer"], "pooling": f"time-{o['pool']} over {o['frames']} frames of [{im['pooling']}]",
            "preprocessing": {"frame_sampling": f"{o['frames']} frames, np.linspace(0, n-1, frames).round() (PyAV rgb24)",
                              "frame_preprocessing": im["preprocessing"]},
            "image_metadata": {k: v for k, v in im.items() if k not in ("package_versions",)},
        })
        return md

    @classmethod
    def info(cls) -> ExtractorInfo:
        ok, detail = cls.offline_status()
        from ._clip import clip_model_config

        cfg = clip_model_config("ViT-B-32")
        return ExtractorInfo(
            name=cls.name, modalities=("video",), default_spec="video:image=clip,frames=8,pool=mean",
            default_dim=int(cfg["embed_dim"]) if cfg else None,
            layers="those of the image extractor", poolings=("mean", "concat"), options=cls.option_docs(),
            weights="those of the image extractor (default: clip)", offline=ok, offline_detail=detail,
            description=cls.DESCRIPTION)
