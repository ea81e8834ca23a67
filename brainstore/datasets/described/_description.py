"""The dataset description file (YAML) read by :class:`~._described.DescribedDataset`: pydantic
models (``extra="forbid"`` everywhere) and the loader whose every error names the file, the line,
the field (dotted path) and the fix. The README's "Dataset description files" shows one complete
example.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..._yamllines import dotted, line_of, read_text, read_yaml_text, unknown_key_message
from .._errors import DatasetError, DatasetValidationError

__all__ = ["Description", "SubjectSpec", "ResponsesSpec", "HemiSource", "RoiFamily", "NoiseCeilingFiles",
           "SpaceSpec", "StimuliSpec", "TimeSeriesSpec", "DescriptionError", "load_description", "RESPONSE_FORMATS", "SUBJECT_FIELDS"]

#: Formats of per-hemisphere response files, by file name ending (NIfTI volumes go under ``volume``).
RESPONSE_FORMATS = {".npy": "npy", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".gii": "gifti",
                    ".mgh": "mgh", ".mgz": "mgh"}
#: Fields a subject may set, each defaulting to the top-level field of the same name.
SUBJECT_FIELDS = ("trials", "responses", "rois", "noise_ceiling", "space")
_AT = "\x00"  # a model validator's message may start with a field to report it at: _AT + field + _AT
_SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Paths = Union[str, list[str]]


class DescriptionError(DatasetValidationError):
    """A description file that cannot be read: one problem reads as one line; several are listed."""

    def __init__(self, root: str, problems: list[str]):
        super().__init__(root, problems)
        if len(self.problems) == 1:
            DatasetError.__init__(self, self.problems[0])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _file_format(name: str) -> str | None:
    low = name.lower()
    for end, fmt in RESPONSE_FORMATS.items():
        if low.endswith(end):
            return fmt
    return None


class HemiSource(_Model):
    """One hemisphere's responses: a file (or a list / glob of files, concatenated along trials)."""

    file: Paths
    format: Optional[Literal["npy", "hdf5", "gifti", "mgh"]] = None  # default: from the file name
    key: Optional[str] = None  # HDF5: the dataset's path inside the file
    trials_axis: Optional[Literal[0, 1]] = None  # npy / hdf5: 0 (trials x vertices, default); gifti 2-D: 1

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v):
        return {"file": v} if isinstance(v, (str, list)) else v

    @model_validator(mode="after")
    def _check(self):
        files = [self.file] if isinstance(self.file, str) else self.file
        if not files:
            raise ValueError("file: give at least one file")
        if self.format is None:
            fmt = _file_format(files[0])
            if fmt is None:
                if files[0].lower().endswith((".nii", ".nii.gz")):
                    raise ValueError(f"{files[0]} is a NIfTI volume: give it as responses.volume with a brain mask "
                                     "(responses.mask); lh / rh take surface or array files")
                raise ValueError(f"cannot tell the format of {files[0]} from its name; set format: npy, hdf5, "
                                 "gifti or mgh")
            self.format = fmt
        if self.format == "hdf5" and not self.key:
            raise ValueError("an HDF5 file needs key: the path of the dataset inside it (e.g. key: betas)")
        if self.format != "hdf5" and self.key is not None:
            raise ValueError(f"key is for HDF5 files; a {self.format} file has none: remove it")
        if self.format == "mgh" and self.trials_axis is not None:
            raise ValueError("an MGH file is vertices x 1 x 1 x trials; remove trials_axis")
        return self


class ResponsesSpec(_Model):
    """Surface / array responses (``lh`` and ``rh``) or a 4-D NIfTI volume with a brain mask."""

    lh: Optional[HemiSource] = None
    rh: Optional[HemiSource] = None
    volume: Optional[Paths] = None  # 4-D NIfTI (trials on the last axis), or a list / glob concatenated
    mask: Optional[str] = None  # 3-D NIfTI, nonzero = inside the brain
    scale: float = 1.0  # every response value is multiplied by it (NSD's int16 betas: 0.0033333 = 1/300)

    @model_validator(mode="after")
    def _check(self):
        surface, volume = (self.lh, self.rh), (self.volume, self.mask)
        if any(v is not None for v in surface) and any(v is not None for v in volume):
            raise ValueError("give lh and rh (surface or array files) or volume and mask (a NIfTI volume), not both")
        if any(v is not None for v in volume):
            if self.volume is None or self.mask is None:
                raise ValueError("a volume needs both volume: (4-D NIfTI) and mask: (3-D NIfTI brain mask)")
        elif self.lh is None or self.rh is None:
            raise ValueError("give both lh and rh (one source per hemisphere), or volume and mask")
        if not (self.scale == self.scale and abs(self.scale) not in (0.0, float("inf"))):
            raise ValueError("scale must be a finite, nonzero number")
        return self

    @property
    def is_volume(self) -> bool:
        return self.volume is not None


class RoiFamily(_Model):
    """One ROI family (e.g. ``floc-faces``): per-hemisphere label files or a label volume, and the names."""

    # a label file (.npy, .label.gii, .annot, .mgh/.mgz) or {ROI name: FreeSurfer .label file}
    lh: Optional[Union[str, dict[str, str]]] = None
    rh: Optional[Union[str, dict[str, str]]] = None
    volume: Optional[str] = None  # a 3-D NIfTI label volume on the responses' grid
    mapping: Optional[Union[dict[int, str], str]] = None  # label -> ROI name, or a .json / .npy file of it

    @model_validator(mode="after")
    def _check(self):
        if self.volume is not None and (self.lh is not None or self.rh is not None):
            raise ValueError("give lh and rh label files or one label volume, not both")
        if self.volume is None and (self.lh is None or self.rh is None):
            raise ValueError("give both lh and rh label files (or volume: for a volume dataset)")
        if isinstance(self.mapping, dict) and 0 in self.mapping:
            raise ValueError("label 0 means outside every ROI; map labels 1, 2, ...")
        return self


class NoiseCeilingFiles(_Model):
    """Noise ceilings as files: ``lh`` / ``rh`` (.npy, one fraction per vertex) or a NIfTI ``volume``."""

    lh: Optional[str] = None
    rh: Optional[str] = None
    volume: Optional[str] = None

    @model_validator(mode="after")
    def _check(self):
        if (self.volume is None) == (self.lh is None or self.rh is None) or (self.volume and (self.lh or self.rh)):
            raise ValueError("give lh and rh (.npy files, a fraction in [0, 1] per vertex) or volume (NIfTI), "
                             "or write noise_ceiling: from_repeats")
        return self


NoiseCeiling = Union[Literal["from_repeats"], NoiseCeilingFiles]


def _noise_ceiling(v):
    if isinstance(v, str) and v != "from_repeats":
        raise ValueError(f"noise_ceiling {v!r} is not known; write from_repeats (computed from the repeated "
                         "trials) or {lh: FILE.npy, rh: FILE.npy}")
    return v


class StimuliSpec(_Model):
    """The stimuli: a table (``stimulus_id``, ``path`` or ``brick_index``, optional ``caption``,
    ``nsd_id``, ``modality``) and / or an image brick (HDF5 dataset or .npy, images on axis 0)."""

    table: Optional[str] = None
    array: Optional[str] = None
    key: Optional[str] = None  # HDF5 brick: the dataset's path inside the file (NSD: imgBrick)

    @model_validator(mode="after")
    def _check(self):
        if self.table is None and self.array is None:
            raise ValueError("give table: (stimulus_id -> path) or array: (an image brick), or both")
        if self.array is not None:
            low = self.array.lower()
            if low.endswith((".h5", ".hdf5", ".hdf")) and not self.key:
                raise ValueError("an HDF5 image brick needs key: its dataset path (NSD: key: imgBrick)")
            if low.endswith(".npy") and self.key:
                raise ValueError("an .npy brick has no key: remove it")
            if not low.endswith((".h5", ".hdf5", ".hdf", ".npy")):
                raise ValueError(f"array {self.array} must be an .hdf5 / .h5 or .npy image brick")
        elif self.key is not None:
            raise ValueError("key goes with array: (the brick); remove it")
        return self


class FramesSpec(_Model):
    """The frames of a time-series dataset's clips: a brick (HDF5 dataset or .npy, frames on axis 0)."""

    array: str
    key: Optional[str] = None  # HDF5: the dataset's path inside the file

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v):
        return {"array": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self):
        low = self.array.lower()
        if not low.endswith((".h5", ".hdf5", ".hdf", ".npy")):
            raise ValueError(f"frames {self.array} must be an .hdf5 / .h5 or .npy brick (frames x H x W x 3 uint8)")
        if low.endswith(".npy") and self.key:
            raise ValueError("an .npy brick has no key: remove it")
        if not low.endswith(".npy") and not self.key:
            raise ValueError("an HDF5 frame brick needs key: its dataset path")
        return self


class TimeSeriesSpec(_Model):
    """Continuous runs: one response row per TR; the stimuli are the TRs of clips. A clip is either
    frames in a brick at ``fps`` (video) or a list of stimulus events with onsets (``events``:
    images, sounds or words presented at times, their stimuli in ``stimuli:``). A clip's TR ``k``
    covers ``[k tr, (k + 1) tr)`` seconds of it and is the stimulus ``{clip}/tr{k:04d}``."""

    tr: float  # seconds per response row
    fps: Optional[float] = None  # frames per second of the brick's frames (with frames:)
    frames: Optional[FramesSpec] = None  # the frame brick (video clips)
    events: Optional[str] = None  # table: clip, stimulus_id, onset (s from the clip's start), optional duration (s)
    clips: str  # table: clip, first_frame, n_frames (frames) | clip, n_trs (events)

    @model_validator(mode="after")
    def _check(self):
        if not (self.tr == self.tr and 0 < self.tr < float("inf")):
            raise ValueError(f"{_AT}tr{_AT}must be a positive number of seconds")
        if (self.frames is None) == (self.events is None):
            raise ValueError("give frames: (a frame brick, with fps:) for video clips or events: (a table of stimulus "
                             "onsets) for clips of presented stimuli, one of the two")
        if self.events is not None:
            if self.fps is not None:
                raise ValueError(f"{_AT}fps{_AT}fps goes with frames:; event clips have onsets in seconds: remove it")
            return self
        if self.fps is None:
            raise ValueError(f"{_AT}fps{_AT}frames: need fps: (frames per second of the brick)")
        if not (self.fps == self.fps and 0 < self.fps < float("inf")):
            raise ValueError(f"{_AT}fps{_AT}must be a positive number of frames per second")
        if self.tr * self.fps < 1 - 1e-9:
            raise ValueError(f"{_AT}fps{_AT}a TR of {self.tr:g} s at {self.fps:g} fps holds less than one frame; "
                             "raise fps or give the real TR")
        return self


class HemiMeshes(_Model):
    """A subject's own surface files of one hemisphere (GIfTI or FreeSurfer geometry; sulc: GIfTI or curv)."""

    inflated: str
    flat: Optional[str] = None
    pial: Optional[str] = None
    sulc: Optional[str] = None


class SpaceSpec(_Model):
    """Where the response columns sit, for maps on the cortex: a surface (an fsaverage resolution, or the
    subject's own ``native`` surface with its ``meshes``) and the vertex of every column (``vertices``: per
    hemisphere an .npy of the vertex index of every column, or a release-style 0/1 mask over the surface;
    omitted when the columns are the whole surface in order). A volume's space is its brain mask's grid:
    nothing to write."""

    surface: Literal["fsaverage", "fsaverage6", "fsaverage5", "native"]
    vertices: Optional[dict[Literal["lh", "rh"], str]] = None
    meshes: Optional[dict[Literal["lh", "rh"], HemiMeshes]] = None

    @model_validator(mode="after")
    def _check(self):
        if self.vertices is not None and set(self.vertices) != {"lh", "rh"}:
            raise ValueError(f"{_AT}vertices{_AT}give both lh and rh vertex files")
        if self.surface == "native":
            if self.meshes is None or set(self.meshes) != {"lh", "rh"}:
                raise ValueError(f"{_AT}meshes{_AT}a native surface needs its meshes: {{lh: {{inflated: FILE}}, "
                                 "rh: {inflated: FILE}}} (flat, pial, sulc optional)")
        elif self.meshes is not None:
            raise ValueError(f"{_AT}meshes{_AT}{self.surface}'s meshes come bundled (or from --meshes); meshes: is "
                             "for surface: native")
        return self


class SubjectSpec(_Model):
    """What one subject overrides of the top-level defaults (each field replaces the default whole)."""

    trials: Optional[str] = None
    responses: Optional[ResponsesSpec] = None
    rois: Optional[dict[str, RoiFamily]] = None
    noise_ceiling: Optional[NoiseCeiling] = None
    space: Optional[SpaceSpec] = None

    _nc = field_validator("noise_ceiling", mode="before")(classmethod(lambda cls, v: _noise_ceiling(v)))


class Description(_Model):
    """A dataset description file (see the README, "Dataset description files")."""

    name: Optional[str] = None
    cache: str = ".brainstore-cache"  # assembled response matrices (memory-mapped), relative to this file
    train_trials: Literal["average", "single"] = "average"
    zscore: Literal["none", "session", "run"] = "none"
    stimuli: Optional[StimuliSpec] = None  # required, except for time series (their stimuli are the clips' TRs)
    timeseries: Optional[TimeSeriesSpec] = None
    ground_truth: Optional[str] = None  # folder of noiseless responses (<subject>/{lh,rh}_pred_test.npy): the oracle
    captions: Optional[str] = None
    # defaults for every subject; "{subject}" in a path is replaced by the subject's name
    trials: Optional[str] = None
    responses: Optional[ResponsesSpec] = None
    rois: dict[str, RoiFamily] = {}
    noise_ceiling: Optional[NoiseCeiling] = None
    space: Optional[SpaceSpec] = None  # where the columns sit on a surface (maps on the cortex)
    subjects: Union[list[str], dict[str, Optional[SubjectSpec]]]

    _nc = field_validator("noise_ceiling", mode="before")(classmethod(lambda cls, v: _noise_ceiling(v)))

    @field_validator("zscore", mode="before")
    @classmethod
    def _none(cls, v):
        return "none" if v is None or v is False else v

    @field_validator("subjects")
    @classmethod
    def _names(cls, v):
        names = list(v)
        if not names:
            raise ValueError("list at least one subject")
        bad = [n for n in names if not isinstance(n, str) or not _SUBJECT_RE.match(n)]
        if bad:
            raise ValueError(f"subject name(s) {bad} must start with a letter or digit and hold only letters, "
                             "digits, '_', '-' and '.' (they name folders)")
        if len(set(names)) != len(names):
            raise ValueError("a subject is listed twice")
        return v

    def subject_spec(self, subject: str) -> SubjectSpec:
        return (self.subjects.get(subject) if isinstance(self.subjects, dict) else None) or SubjectSpec()

    @model_validator(mode="after")
    def _complete(self):
        if self.stimuli is None and self.timeseries is None:
            raise ValueError(f"{_AT}stimuli{_AT}required field 'stimuli' is missing; give stimuli: {{table: stimuli.csv}} "
                             "(stimulus_id -> path) or {array: BRICK.hdf5, key: KEY}, or timeseries: for continuous runs")
        if self.stimuli is not None and self.timeseries is not None and self.timeseries.frames is not None:
            raise ValueError(f"{_AT}stimuli{_AT}a video time series' stimuli are its clips' TRs (timeseries.frames): "
                             "remove stimuli")
        if self.stimuli is None and self.timeseries is not None and self.timeseries.events is not None:
            raise ValueError(f"{_AT}stimuli{_AT}timeseries.events need stimuli: (the presented stimuli, by "
                             "stimulus_id: a table of paths or an image brick)")
        for s in self.subjects:
            own = self.subject_spec(s)
            for f in ("trials", "responses"):
                if getattr(own, f) is None and getattr(self, f) is None:
                    raise ValueError(f"{_AT}subjects{_AT}subject {s} has no {f}: give subjects.{s}.{f} or a top-level "
                                     f"{f} (with {{subject}} in its paths)")
        return self

# ----------------------------------------------------------------------------- loading with line numbers
def where(path: Path, lines: dict, loc: tuple) -> str:
    """``FILE line N: FIELD`` for messages about one field of the description."""
    line = line_of(lines, loc)
    return f"{path}" + (f" line {line}" if line else "") + f": {dotted(loc)}"


_BRANCH = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|function-.*|union\[.*\])$")
_MODEL_NAMES = {"HemiSource", "ResponsesSpec", "RoiFamily", "NoiseCeilingFiles", "StimuliSpec", "SubjectSpec",
                "FramesSpec", "TimeSeriesSpec", "SpaceSpec", "HemiMeshes"}


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union branch tags (``str``, ``list[str]``, ``HemiSource`` ...) from an error location."""
    return tuple(p for p in loc if not (isinstance(p, str) and (_BRANCH.match(p) or p in _MODEL_NAMES)))


def _is_type_error(err: dict) -> bool:
    return err["type"].endswith(("_type", "_parsing")) or err["type"] in ("literal_error", "model_type", "dict_type",
                                                                       "list_type", "string_type")


def _problems(e: ValidationError, path: Path, lines: dict) -> list[str]:
    """One line per field: a union's branches each report on a field, so type mismatches of a branch
    are dropped where another branch says something more specific (at that field or below it)."""
    errs = [(_clean_loc(tuple(err["loc"])), err) for err in e.errors()]
    keep = []
    for loc, err in errs:
        if _is_type_error(err) and any(l2[:len(loc)] == loc and not _is_type_error(e2)
                                       for l2, e2 in errs if e2 is not err):
            continue
        keep.append((loc, err))
    by_loc: dict[tuple, list[str]] = {}
    for loc, err in keep:
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = unknown_key_message(Description, loc)
        elif err["type"] == "missing":
            msg = f"required field {loc[-1]!r} is missing" if loc else msg
            if loc == ("stimuli",):
                msg += "; give stimuli: {table: stimuli.csv} (stimulus_id -> path) or {array: BRICK.hdf5, key: KEY}"
            if loc == ("subjects",):
                msg += "; list the subjects (subjects: [subj01, subj02]) or map each to its files"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            if msg.startswith(_AT):
                _, field_, msg = msg.split(_AT, 2)
                loc = loc + tuple(field_.split("."))
        v = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(v, (dict, list)) and v is not None:
            msg += f" (given: {v!r})"
        msgs = by_loc.setdefault(loc, [])
        if msg not in msgs:
            msgs.append(msg)
    return [f"{where(path, lines, loc)}: {'; or '.join(msgs)}" for loc, msgs in by_loc.items()]


def load_description(path: Path) -> tuple[Description, dict]:
    """Read and validate a description file: the model and ``{loc: line}``.

    Raises
    ------
    DescriptionError
        Every problem, each naming the file, the line, the field and the fix.
    """
    import yaml

    text = read_text(path, "dataset description", DatasetError)
    try:
        raw, lines, dups = read_yaml_text(text)
    except yaml.YAMLError as e:
        raise DescriptionError(str(path), [f"{path} is not valid YAML: {' '.join(str(e).split())}"]) from None
    problems = [f"{path} line {line}: {dotted(loc)} is given twice (first on line {first}); keep one"
                for loc, line, first in dups]
    if problems:
        raise DescriptionError(str(path), problems)
    if not isinstance(raw, dict):
        raise DescriptionError(str(path), [f"{path} must be a mapping of fields (name, stimuli, trials, responses, "
                                           "rois, subjects, ...); see the README, 'Dataset description files'"])
    try:
        return Description(**raw), lines
    except ValidationError as e:
        raise DescriptionError(str(path), _problems(e, path, lines)) from None
