"""Maps: ``plot`` (any per-vertex array drawn on the cortex, as ``evaluate`` draws its maps)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import fail


def plot_cmd(
    maps: list[Path] = typer.Argument(..., help="The map file(s): .npy (values per vertex; rows x vertices with "
                                      "--row), GIfTI (.func.gii), NIfTI (.nii/.nii.gz), or a saved /v1/encode answer "
                                      "(.json). One file per hemisphere, named lh.* / rh.* (or --hemi)."),
    out: Path = typer.Option(..., "--out", "-o", help="The picture to write (.png); --html writes an interactive "
                             "view beside it."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="The dataset whose space the values are in (their "
                                           "columns are the subject's response columns). Not needed for maps that "
                                           "already cover an fsaverage surface."),
    subject: Optional[str] = typer.Option(None, "--subject", help="The subject whose columns the values are (default: "
                                          "a served answer's subject, or the dataset's only subject)."),
    hemi: Optional[str] = typer.Option(None, "--hemi", help="lh or rh, for a file whose name does not say."),
    row: int = typer.Option(0, "--row", help="Which row of a rows x vertices array (a predicted response per stimulus)."),
    title: Optional[str] = typer.Option(None, "--title", help="The picture's title (default: the file names)."),
    label: str = typer.Option("", "--label", help="The colour bar's label (e.g. 'test r')."),
    cmap: Optional[str] = typer.Option(None, "--cmap", help="A matplotlib colour map (default: diverging for signed "
                                       "values, sequential otherwise)."),
    vmin: Optional[float] = typer.Option(None, "--vmin"),
    vmax: Optional[float] = typer.Option(None, "--vmax"),
    meshes: Optional[Path] = typer.Option(None, "--meshes", help="A local FreeSurfer fsaverage folder to draw full-"
                                          "resolution maps on (default: $BRAINSTORE_FSAVERAGE, $SUBJECTS_DIR, "
                                          "$FREESURFER_HOME, else the fsaverage5 nilearn bundles)."),
    html: bool = typer.Option(False, "--html", help="Also write an interactive 3-D view (.html, works offline)."),
) -> None:
    """Draw a per-vertex array on the cortex: flat map and inflated lateral / medial / ventral views with
    sulcal depth and ROI outlines (a volume: stat map and glass brain)."""
    from ...datasets import DatasetError, open_dataset
    from ...maps import SpaceError, plot_map, read_plot_inputs
    from .._console import console

    if hemi not in (None, "lh", "rh"):
        fail(f"--hemi must be lh or rh, not {hemi!r}")
    if out.suffix.lower() != ".png":
        fail(f"--out {out}: give a .png file")
    try:
        arrays, info = read_plot_inputs([str(m) for m in maps], hemi=hemi, row=row)
        cortex = None
        if dataset is not None:
            ds = open_dataset(dataset)
            subject = subject or info.get("subject") or (ds.subjects[0] if len(ds.subjects) == 1 else None)
            if subject is None:
                fail(f"--subject: {dataset} has subjects {', '.join(ds.subjects)}; say whose columns the values are")
            cortex = ds.cortex(subject)
            if cortex is None:
                fail(f"{dataset} does not say where {subject}'s columns sit on the cortex: add the release's "
                     "roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy, or space: to its description")
        elif subject is not None:
            fail("--subject goes with --dataset (the dataset whose columns the values are)")
        written = plot_map(arrays, out, cortex=cortex, info=info, meshes=meshes, cmap=cmap, vmin=vmin, vmax=vmax,
                           html=html, label=label, source=", ".join(str(m) for m in maps),
                           title=title or " + ".join(m.name for m in maps) + (f" ({subject})" if subject else ""))
    except (DatasetError, SpaceError) as e:
        fail(str(e))
    for f in written:
        console.print(f"wrote {f}")
