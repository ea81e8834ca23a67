"""brainstore.maps: results on the cortex.

Where a dataset's response columns sit (:class:`Space`, :class:`Cortex`), maps as files users load
anywhere (GIfTI on surfaces, NIfTI on volumes), the meshes they are drawn on (fsaverage5 bundled with
nilearn, a local FreeSurfer fsaverage, a subject's own surface) and the pictures (flat map and inflated
views with sulcal depth and ROI outlines; nilearn's interactive viewer).

A base library like :mod:`brainstore.scoring`: it imports no other brainstore package; the dataset readers
build the placements, ``evaluate`` and ``plot`` write and draw the maps.
"""

from ._files import read_map, write_gifti, write_nifti
from ._interactive import surface_view_html
from ._meshes import MESHES_ENV, Meshes, find_fsaverage, load_meshes
from ._plot import plot_map, read_plot_inputs
from ._render import color_scale, render_surface_map, render_volume_map
from ._spaces import FSAVERAGE_VERTICES, Cortex, Space, SpaceError, indices_from_mask

__all__ = ["Space", "Cortex", "SpaceError", "FSAVERAGE_VERTICES", "indices_from_mask", "Meshes", "load_meshes",
           "find_fsaverage", "MESHES_ENV", "write_gifti", "write_nifti", "read_map", "read_plot_inputs", "plot_map",
           "render_surface_map", "render_volume_map", "color_scale", "surface_view_html"]
