"""A pipeline's state and what its stages share while it is planned and run.

``<out>/pipeline-state.json`` (written atomically after every stage) keeps, per finished stage, its
fingerprint, a digest of each input part (to say *why* a stage runs), its config and its outputs.
:class:`_Ctx` holds the pipeline, that state and the fingerprints computed so far, and opens the
store and the registry when a stage asks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ._spec import STATE_FILE, Pipeline, PipelineError, PipelineSpec

__all__ = ["read_state", "STATE_FORMAT"]

STATE_FORMAT = 1

def read_state(pipe: Pipeline) -> dict:
    """The state file's content (an empty state when there is none yet)."""
    try:
        state = json.loads(pipe.state_path.read_text())
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "pipeline": str(pipe.path), "stages": {}}
    except (OSError, ValueError) as e:
        raise PipelineError(f"state file {pipe.state_path} is unreadable ({e}); remove it to run every stage "
                            "again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("stages"), dict):
        raise PipelineError(f"state file {pipe.state_path} is not a brainstore pipeline state (format {STATE_FORMAT}); "
                            "remove it to run every stage again")
    return state


def _write_state(pipe: Pipeline, state: dict) -> None:
    """Atomically: a temporary file in the same folder, then renamed over the state file."""
    pipe.out.mkdir(parents=True, exist_ok=True)
    tmp = pipe.state_path.with_name(f".{STATE_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    os.replace(tmp, pipe.state_path)


class _Ctx:
    """What the stages share during one planning / run: the pipeline, its state, lazily opened stores."""

    def __init__(self, pipe: Pipeline, state: dict, quiet: bool = True):
        self.pipe, self.state, self.quiet = pipe, state, quiet
        self.fingerprints: dict[str, str | None] = {}

    @property
    def spec(self) -> PipelineSpec:
        return self.pipe.spec

    def store(self, create: bool = False):
        from ...features import FeatureStore

        if not create and "://" not in self.spec.store and not Path(self.spec.store).is_dir():
            return None
        return FeatureStore(self.spec.store, self.spec.storage_options, create=create)

    def registry(self, create: bool = False):
        """The registry; None (create False) when there is none yet: nothing in it is current."""
        from ...fitting import ModelRegistry, RegistryError

        if not create and "://" not in self.spec.registry and not Path(self.spec.registry).is_dir():
            return None
        kw = _options_kw(ModelRegistry, self.spec.storage_options)
        if create or "://" not in self.spec.registry:
            return ModelRegistry(self.spec.registry, create=create, **kw)
        try:  # an object-store prefix holding no model yet is refused by a reader
            return ModelRegistry(self.spec.registry, create=False, **kw)
        except RegistryError:
            return None

    def outputs(self, stage: str) -> dict:
        return (self.state["stages"].get(stage) or {}).get("outputs") or {}


def _options_kw(fn, options: dict | None) -> dict:
    """``{"storage_options": options}`` when ``fn`` takes that argument (and options are given), else ``{}``."""
    import inspect

    if not options:
        return {}
    try:
        return {"storage_options": options} if "storage_options" in inspect.signature(fn).parameters else {}
    except (TypeError, ValueError):
        return {}
