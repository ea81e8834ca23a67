"""Maps as files users load anywhere: GIfTI functional files on surfaces (nilearn, Connectome Workbench,
Freeview, pycortex read them), NIfTI on volumes; and the reader of any per-vertex array ``plot`` draws."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._spaces import SpaceError

__all__ = ["write_gifti", "write_nifti", "read_map"]


def _atomic(path: Path, write) -> Path:
    """Write through a temporary name in the same folder, then rename: nothing is ever half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_gifti(path: str | Path, values: np.ndarray, *, hemi: str, meta: dict | None = None) -> Path:
    """One per-vertex map as a GIfTI functional file (``.func.gii``: one float32 NIFTI_INTENT_NONE data
    array; NaN where nothing was measured), with the hemisphere as the AnatomicalStructurePrimary."""
    import nibabel as nib

    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 1:
        raise SpaceError(f"{path}: a map is one value per vertex, not shape {values.shape}")
    structure = {"lh": "CortexLeft", "rh": "CortexRight"}[hemi]
    darray = nib.gifti.GiftiDataArray(values, intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32",
                                      meta=nib.gifti.GiftiMetaData({k: str(v) for k, v in (meta or {}).items()}))
    img = nib.gifti.GiftiImage(darrays=[darray], meta=nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
    return _atomic(Path(path), lambda tmp: nib.save(img, str(tmp.with_suffix(".gii"))) or os.replace(tmp.with_suffix(".gii"), tmp))


def write_nifti(path: str | Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    """A 3-D map as NIfTI (float32, NaN outside the brain mask) in the dataset's own grid."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    name = Path(path).name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    return _atomic(Path(path), lambda tmp: nib.save(img, str(tmp) + suffix) or os.replace(str(tmp) + suffix, tmp))


def read_map(path: str | Path) -> np.ndarray:
    """A map from a file: ``.npy`` (1-D per-vertex values, or 2-D rows x vertices: the first row, say a
    predicted response), GIfTI (its first data array) or NIfTI (the 3-D volume). Errors name the file and
    what it holds."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        import nibabel as nib

        img = nib.load(str(path))
    except (ValueError, OSError) as e:
        raise SpaceError(f"cannot read {path} as a map ({str(e).splitlines()[0][:160]}); use .npy, .func.gii / .gii "
                         "or .nii / .nii.gz") from None
    except Exception as e:  # nibabel's own ImageFileError and friends
        raise SpaceError(f"cannot read {path} as a map ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                         "use .npy, .func.gii / .gii or .nii / .nii.gz") from None
    if hasattr(img, "darrays"):
        if not img.darrays:
            raise SpaceError(f"{path} holds no data array")
        return np.asarray(img.darrays[0].data)
    return np.asarray(img.dataobj)
