"""The ``brainstore`` command line: one module per noun, each verb a thin layer over a library call.

============================  =========================================================  ==============
verbs                         what                                                       module
============================  =========================================================  ==============
make-dataset, info            synthetic datasets; a dataset's summary and problems       ``_data``
extract, features, weights    feature tables; the extractors' weights                    ``_features``
fit, evaluate, predict,       encoding models and decoders: fit, score, predict,         ``_fit``
explain                       selectivity
models, gc, lineage           versions, aliases; removing what nothing needs; where a    ``_models``
                              version comes from and who serves it
plot                          any per-vertex array drawn on the cortex                   ``_maps``
serve                         the models over HTTP                                       ``_serve``
run, demo                     a pipeline file; the end-to-end demo                       ``_run``
============================  =========================================================  ==============

The options every verb shares (``--store``, ``--registry``, ``--address``), ``--verbose`` and the one
way a command fails (one ``error:`` line, exit code 2) are in ``_common``. Heavy libraries (torch, ray,
lancedb, open_clip, transformers) are imported inside the commands that need them, so ``brainstore
--help`` stays fast.
"""

from __future__ import annotations

import typer

from ._common import VERBOSE, fail, root
from ._data import info_cmd, make_dataset_cmd
from ._features import extract_cmd, features_cmd, weights_list_cmd, weights_pull_cmd
from ._fit import evaluate_cmd, explain_cmd, fit_cmd, predict_cmd
from ._models import gc_cmd, lineage_cmd, models_cmd
from ._maps import plot_cmd
from ._run import demo_cmd, run_cmd
from ._serve import serve_cmd

__all__ = ["app", "main"]

app = typer.Typer(
    name="brainstore",
    help="Feature store, fitting and serving for brain encoding / decoding models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(root)  # --verbose, --storage-option, --storage-config

weights_app = typer.Typer(
    help="Model weights: where each extractor spec's weights are looked for (offline), and fetching them once "
         "into the cache every node reads (the only command that uses the network).",
    no_args_is_help=True)
weights_app.command("list")(weights_list_cmd)
weights_app.command("pull")(weights_pull_cmd)

# the verbs, in the order --help lists them
app.command("make-dataset")(make_dataset_cmd)
app.command("info")(info_cmd)
app.command("extract")(extract_cmd)
app.command("features")(features_cmd)
app.add_typer(weights_app, name="weights")
app.command("fit")(fit_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("predict")(predict_cmd)
app.command("models")(models_cmd)
app.command("gc")(gc_cmd)
app.command("lineage")(lineage_cmd)
app.command("plot")(plot_cmd)
app.command("demo")(demo_cmd)
app.command("serve")(serve_cmd)
app.command("explain")(explain_cmd)
app.command("run")(run_cmd)


def main() -> None:  # pragma: no cover - console script entry
    """Run the CLI; any error not handled by a command still ends as one line (exit 2)."""
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted")
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - the last resort: one line, the traceback only with --verbose
        from .._errors import describe

        try:
            fail(describe(e) + ("" if VERBOSE["on"] else "  (brainstore --verbose ... prints the traceback)"))
        except typer.Exit as ex:
            raise SystemExit(ex.exit_code) from None
