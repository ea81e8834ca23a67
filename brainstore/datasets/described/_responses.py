"""Responses of :class:`~._described.DescribedDataset`: the response sources as described (surface
files per hemisphere, or volumes through a brain mask), the raw trials x vertices matrices and the
assembled per-split matrices (z-scored, repeats averaged) cached on disk, and noise ceilings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._errors import DatasetError
from .._layout import HEMISPHERES, SPLITS, check_hemi, check_split
from . import _readers as rd
from ._description import ResponsesSpec
from ._fields import shown
from ._trials import Trials, TrialsMixin

__all__ = ["Sources", "ResponsesMixin"]


@dataclass
class Sources:
    """A subject's response files as described and opened."""

    volume: bool
    arrays: dict  # hemi -> list[ArraySource] (surface)
    volumes: list  # list[VolumeSource] (volume)
    geometry: rd.VolumeGeometry | None
    n_raw: int  # response rows (trials) in the arrays
    n_vertices: dict  # hemi -> int
    files: dict  # hemi -> [(path, first row, rows)], for messages


class ResponsesMixin(TrialsMixin):
    """Response sources, the cache, the assembled matrices, noise ceilings."""

    # ------------------------------------------------------------------ response sources
    def _responses_spec(self, subject: str) -> ResponsesSpec:
        return self._field(subject, "responses")

    def _sources_result(self, subject: str):
        return self._memoized(("sources", subject), lambda: self._read_sources(subject))

    def _read_sources(self, subject: str):
        spec = self._responses_spec(subject)
        problems: list[str] = []
        if spec.is_volume:
            what = self._where(subject, self._loc(subject, "responses", "volume"))
            try:
                geometry = rd.volume_geometry(self._path(subject, spec.mask),
                                              self._where(subject, self._loc(subject, "responses", "mask")))
                vols = [rd.VolumeSource(p, geometry, what) for p in self._paths(subject, spec.volume, what)]
            except DatasetError as e:
                return None, [str(e)]
            files, off = [], 0
            for v in vols:
                files.append((v.path, off, v.n_trials))
                off += v.n_trials
            n_vert = {h: len(geometry.hemi_index[h]) for h in HEMISPHERES}
            for h in HEMISPHERES:
                if n_vert[h] == 0:
                    problems.append(f"brain mask {geometry.mask_path} ({self._where(subject, self._loc(subject, 'responses', 'mask'))}) "
                                    f"has no voxel in {h} (RAS x {'< 0' if h == 'lh' else '>= 0'} through its affine); "
                                    "check the affine: both hemispheres need voxels")
            return Sources(True, {}, vols, geometry, off, n_vert, {h: files for h in HEMISPHERES}), problems
        arrays, n_rows, n_vert, files = {}, {}, {}, {}
        for h in HEMISPHERES:
            hs = getattr(spec, h)
            what = self._where(subject, self._loc(subject, "responses", h))
            try:
                paths = self._paths(subject, hs.file, what)
            except DatasetError as e:
                problems.append(str(e))
                continue
            srcs = []
            for p in paths:
                try:
                    srcs.append(rd.ArraySource(p, hs.format, hs.key, hs.trials_axis, what))
                except DatasetError as e:
                    problems.append(str(e))
            if len(srcs) != len(paths):
                continue
            vs = {s.shape[1] for s in srcs}
            if len(vs) > 1:
                problems.append(f"{what}: the {h} files have different vertex counts: "
                                + "; ".join(f"{s.path} {s.shape[1]}" for s in srcs) + "; concatenated files must match")
                continue
            arrays[h], n_rows[h], n_vert[h] = srcs, sum(s.shape[0] for s in srcs), vs.pop()
            files[h], off = [], 0
            for s in srcs:
                files[h].append((s.path, off, s.shape[0]))
                off += s.shape[0]
        if problems:
            return None, problems
        if n_rows["lh"] != n_rows["rh"]:
            return None, [f"{self._where(subject, self._loc(subject, 'responses'))}: lh has {n_rows['lh']} trials "
                          f"({shown(s.path for s in arrays['lh'])}) but rh has {n_rows['rh']} "
                          f"({shown(s.path for s in arrays['rh'])}); both hemispheres hold the same trials"]
        return Sources(False, arrays, [], None, n_rows["lh"], n_vert, files), []

    def _sources(self, subject: str) -> Sources:
        return self._need(self._sources_result(self._check_subject(subject)))

    def n_vertices(self, subject: str, hemi: str) -> int:
        return int(self._sources(subject).n_vertices[check_hemi(hemi)])

    def _row_problems(self, subject: str, t: Trials, src: Sources) -> list[str]:
        """Trials without responses and response rows without trials."""
        files = shown(p for p, _, _ in src.files["lh"])
        if (t.row >= src.n_raw).any():
            bad = np.flatnonzero(t.row >= src.n_raw)
            return [f"{t.path} ({t.field}): {len(bad)} trial(s) of {subject} have no response: "
                    + (f"rows {shown(t.row[bad].tolist())} are past" if t.explicit_row else
                       f"the table has {len(t.row)} trials but") + f" the {src.n_raw} response rows of {files}"]
        if not t.explicit_row and len(t.row) != src.n_raw:
            return [f"{t.path} ({t.field}) has {len(t.row)} trials of {subject} but the responses ({files}) have "
                    f"{src.n_raw} rows; add a row column naming each trial's response row, or make them match"]
        return []

    # ------------------------------------------------------------------ cache and assembly
    def _cache_root(self) -> Path:
        p = Path(self.spec.cache).expanduser()
        return p if p.is_absolute() else self.base / p

    def _raw_key(self, subject: str) -> list:
        spec, src = self._responses_spec(subject), self._sources(subject)
        files = [rd.stamp(Path(p)) for h in HEMISPHERES for p, _, _ in src.files[h]]
        if src.volume:
            files.append(rd.stamp(src.geometry.mask_path))
        return [files, spec.model_dump(mode="json")]

    def _derived_folder(self, subject: str) -> Path:
        t = self._trials(subject)
        key = rd.cache_key([self._raw_key(subject), rd.stamp(t.path), subject, self.spec.train_trials,
                            self.spec.zscore, self._field(subject, "noise_ceiling") == "from_repeats"])
        return self._cache_root() / subject / key

    def _fix(self) -> str:
        return f"set cache: in {self.root} to a writable folder"

    def _raw(self, subject: str) -> dict[str, np.ndarray]:
        """The trials x vertices matrices as stored (scaled, float32), per hemisphere, memory-mapped."""
        spec, src = self._responses_spec(subject), self._sources(subject)
        if not src.volume and spec.scale == 1.0 and all(len(src.arrays[h]) == 1 and _plain_npy(src.arrays[h][0])
                                                        for h in HEMISPHERES):
            return {h: np.load(src.arrays[h][0].path, mmap_mode="r") for h in HEMISPHERES}
        folder = self._cache_root() / subject / f"raw-{rd.cache_key(self._raw_key(subject))}"
        paths = {h: folder / f"{h}.npy" for h in HEMISPHERES}
        if not all(p.exists() for p in paths.values()):
            with rd.locked(folder, self._fix()):
                if not all(p.exists() for p in paths.values()):
                    self._write_raw(src, spec.scale, paths)
        return {h: np.load(p, mmap_mode="r") for h, p in paths.items()}

    @staticmethod
    def _write_raw(src: Sources, scale: float, paths: dict[str, Path]) -> None:
        if src.volume:
            with rd.new_npy(paths["lh"], (src.n_raw, src.n_vertices["lh"])) as lh, \
                    rd.new_npy(paths["rh"], (src.n_raw, src.n_vertices["rh"])) as rh:
                out = {"lh": lh, "rh": rh}
                for v, (_, off, _) in zip(src.volumes, src.files["lh"]):
                    for t0, block in v.blocks(scale):
                        for h in HEMISPHERES:
                            out[h][off + t0: off + t0 + block[h].shape[0]] = block[h]
            return
        for h in HEMISPHERES:
            with rd.new_npy(paths[h], (src.n_raw, src.n_vertices[h])) as out:
                off = 0
                for s in src.arrays[h]:
                    for t0, block in s.blocks(scale):
                        out[off + t0: off + t0 + len(block)] = block
                    off += s.shape[0]

    def _assembled(self, subject: str, name: str) -> np.ndarray:
        """A file of the subject's derived folder (``{hemi}_{split}.npy``, ``{hemi}_noise_ceiling.npy``)."""
        t, src = self._trials(subject), self._sources(subject)
        problems = self._row_problems(subject, t, src)
        if problems:
            raise DatasetError(problems[0])
        folder = self._derived_folder(subject)
        path = folder / name
        if not path.exists():
            with rd.locked(folder, self._fix()):
                if not path.exists():
                    self._assemble(subject, folder)
        return np.load(path, mmap_mode="r")

    def _assemble(self, subject: str, folder: Path) -> None:
        """Write every split (and the noise ceilings from repeats) of both hemispheres, in vertex blocks."""
        t, raw = self._trials(subject), self._raw(subject)
        plans = {s: self._plan(subject, s)[1] for s in SPLITS if self._plan(subject, s)[1]}
        from_repeats = self._field(subject, "noise_ceiling") == "from_repeats"
        reps = None
        if from_repeats:
            groups: dict[str, list[int]] = {}
            for p, sid in enumerate(t.ids):
                groups.setdefault(sid, []).append(p)
            reps = [np.asarray(g) for g in groups.values() if len(g) > 1]
            test_counts = np.asarray([len(g) for g in self._plan(subject, "test")[1]], dtype=np.float64)
            if not reps or not len(test_counts):
                raise DatasetError(f"{self._where(subject, self._loc(subject, 'noise_ceiling'))}: from_repeats needs "
                                   f"stimuli shown at least twice and test trials; {subject} has "
                                   f"{len(reps)} repeated stimuli and {len(test_counts)} test stimuli in {t.path}")
            k = float(np.mean(1.0 / test_counts))  # (A/3 + B/2 + C/1) / (A + B + C) for 3, 2, 1 repeats
        train = t.split == "train"
        sessions = None
        if self.spec.zscore == "session":
            sessions = [(t.session == v) for v in dict.fromkeys(t.session)]
        elif self.spec.zscore == "run":  # each run by its own statistics (every trial of it, as in video fMRI)
            runs = np.asarray([str(v) for v in t.table.column("run").to_pylist()], dtype=object)
            sessions = [(runs == v) for v in dict.fromkeys(runs)]
            train = np.ones(len(runs), dtype=bool)
        for h in HEMISPHERES:
            r = raw[h]
            n_v = r.shape[1]
            step = max(1, min(n_v, rd.BLOCK_BYTES // max(1, len(t.row) * 8 * 3)))
            outs = {s: rd.new_npy(folder / f"{h}_{s}.npy", (len(g), n_v)) for s, g in plans.items()}
            if from_repeats:
                outs["nc"] = rd.new_npy(folder / f"{h}_noise_ceiling.npy", (n_v,), np.float64)
            with rd.all_of(outs) as arrays:
                for v0 in range(0, n_v, step):
                    x = np.asarray(r[:, v0:v0 + step][t.row], dtype=np.float64)  # trials x block
                    if sessions is not None:
                        x = rd.zscore(x, train, sessions)
                    for s, g in plans.items():
                        arrays[s][:, v0:v0 + step] = rd.group_means(x, g)
                    if from_repeats:
                        arrays["nc"][v0:v0 + step] = rd.nc_from_repeats(x, reps, k)

    def responses(self, subject: str, hemi: str, split: str = "train") -> np.ndarray:
        """Memory-mapped float32 matrix (rows x vertices), rows in :meth:`stimuli` ``index`` order."""
        hemi, split = check_hemi(hemi), check_split(split)
        if not self._plan(self._check_subject(subject), split)[0]:
            t = self._trials(subject)
            raise DatasetError(f"{subject} has no {split} trial in {t.path} ({t.field}); "
                               f"{'test responses come from the test trials' if split == 'test' else 'add train trials'}")
        return self._assembled(subject, f"{hemi}_{split}.npy")

    def noise_ceiling(self, subject: str, hemi: str) -> np.ndarray | None:
        """Noise ceiling per vertex (fraction in [0, 1]), from files or from the repeats; None when not described."""
        hemi = check_hemi(hemi)
        spec = self._field(self._check_subject(subject), "noise_ceiling")
        if spec is None:
            return None
        if spec == "from_repeats":
            return np.asarray(self._assembled(subject, f"{hemi}_noise_ceiling.npy"), dtype=np.float64)
        loc = self._loc(subject, "noise_ceiling", "volume" if spec.volume else hemi)
        what = self._where(subject, loc)
        if spec.volume:
            src = self._sources(subject)
            if not src.volume:
                raise DatasetError(f"{what}: a noise-ceiling volume needs volume responses; give lh and rh .npy files")
            img = rd.load_nifti(self._path(subject, spec.volume), what)
            data = np.asarray(img.dataobj, dtype=np.float64)
            if data.shape != src.geometry.shape:
                raise DatasetError(f"noise-ceiling volume {self._path(subject, spec.volume)} ({what}) has shape "
                                   f"{data.shape}, the brain mask {src.geometry.shape}")
            nc = src.geometry.sample(data)[hemi]
            path = self._path(subject, spec.volume)
        else:
            path = self._path(subject, getattr(spec, hemi))
            if not path.exists():
                raise DatasetError(f"noise-ceiling file {path} ({what}) does not exist")
            try:
                nc = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
            except ValueError as e:
                raise DatasetError(f"{path} ({what}) is not a plain numeric .npy array ({e})") from None
        if nc.size and (np.nanmax(nc) > 1.0 + 1e-6 or np.nanmin(nc) < 0):
            raise DatasetError(f"{path} ({what}) has values outside [0, 1] (max {np.nanmax(nc):.3g}); noise ceilings "
                               "are fractions: divide a percent ceiling by 100")
        return nc


# ----------------------------------------------------------------------------- helpers
def _plain_npy(src: rd.ArraySource) -> bool:
    """An .npy source the raw matrix can be read from directly (float32, trials x vertices, C order)."""
    if src.fmt != "npy" or src.trials_axis != 0:
        return False
    a = np.load(src.path, mmap_mode="r", allow_pickle=False)
    return a.dtype == np.float32 and a.flags.c_contiguous
