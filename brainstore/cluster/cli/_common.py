"""What every verb of the CLI shares: the default store and registry, the common options, ``--verbose``
and the storage options of the root command, and the one way a command fails (:func:`fail`: one
``error:`` line, exit code 2)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

__all__ = ["HOME", "DEFAULT_STORE", "DEFAULT_REGISTRY", "StoreOpt", "RegistryOpt", "AddressOpt", "VERBOSE", "root",
           "need", "need_dataset", "fail", "open_registry"]

HOME = Path(os.environ.get("BRAINSTORE_HOME", ".brainstore"))
DEFAULT_STORE = str(HOME / "features")
DEFAULT_REGISTRY = str(HOME / "models")

StoreOpt = typer.Option(DEFAULT_STORE, "--store", help="Feature store URI (a local folder by default).")
RegistryOpt = typer.Option(DEFAULT_REGISTRY, "--registry", help="Model registry URI (a local folder by default).")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address (default: an embedded local Ray).")


#: Set by ``brainstore --verbose``: tracebacks are printed beside the one-line errors.
VERBOSE = {"on": False}


def root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Print tracebacks with errors."),
         storage_option: Optional[list[str]] = typer.Option(
             None, "--storage-option", "-S", metavar="KEY=VALUE",
             help="Object-store option for s3:// / gs:// / az:// stores and registries (repeatable), e.g. "
                  "-S aws_endpoint=http://127.0.0.1:9000 -S allow_http=true; over $BRAINSTORE_STORAGE_OPTIONS."),
         storage_config: Optional[Path] = typer.Option(
             None, "--storage-config", metavar="FILE",
             help="A YAML/JSON file of object-store options (as $BRAINSTORE_STORAGE_OPTIONS=FILE); -S flags win.")) -> None:
    """Feature store, fitting and serving for brain encoding / decoding models."""
    VERBOSE["on"] = verbose
    from ..._storage import ENV, StorageOptionsError, env_options, merge_cli_options

    try:
        if storage_config is not None:
            need(storage_config, False, "--storage-config", "give a YAML or JSON file of storage options")
            os.environ[ENV] = str(storage_config.resolve())
            env_options()  # unreadable or not a mapping: refused now
        merge_cli_options(storage_option)
    except StorageOptionsError as e:
        fail(str(e))


def need(path: Path, folder: bool, what: str, usage: str) -> None:
    """Fail unless ``path`` is an existing folder (``folder``) or file, naming it and what the option takes."""
    if not (path.is_dir() if folder else path.is_file()):
        state = f"is not a {'folder' if folder else 'file'}" if path.exists() else "does not exist"
        fail(f"{what} {path} {state}; {usage}")


def need_dataset(path: Path, usage: str) -> None:
    """Fail unless ``path`` is a dataset folder or a dataset description file (.yaml / .yml)."""
    from ...datasets import is_description

    if not (path.is_dir() or is_description(path)):
        state = "is not a folder or a description (.yaml)" if path.exists() else "does not exist"
        fail(f"dataset {path} {state}; {usage}")


def fail(msg: str) -> None:
    import sys

    from rich.markup import escape

    from .._console import console

    if VERBOSE["on"] and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
    console.print(f"[bold red]error:[/] {escape(msg)}")
    raise typer.Exit(code=2)


def open_registry(registry: str):
    """A registry that must exist (reading verbs never create one)."""
    from ...fitting import ModelRegistry

    return ModelRegistry(registry, create=False)
