"""The one place where an exception becomes what the user reads.

A command that fails prints one ``error:`` line (more only when the message itself lists
problems) and exits 2. Errors raised inside Ray tasks and actors arrive wrapped (``RayTaskError``,
``RayActorError``, Ray Data's ``UserCodeException``) with Ray's traceback in their text; the user
sees the cause's own message and the task that raised it. The traceback is printed only with
``brainstore --verbose``.
"""

from __future__ import annotations

import re

#: Our error types: their message is written for the user (what is wrong, where, the fix), so it is
#: shown alone; any other exception is shown as ``Type: message``.
_USER_ERRORS = ("DatasetError", "DatasetValidationError", "FeatureStoreError", "MissingStimuliError",
                "WeightsNotFoundError", "WeightsPullError", "ExtractionError", "RegistryError", "SpecError", "VideoDecodeError")


def root_cause(e: BaseException) -> tuple[BaseException, str | None]:
    """The innermost cause of a (possibly Ray-wrapped) exception and the Ray task or actor that raised it."""
    task = None
    seen: set[int] = set()
    while id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if name.startswith("RayTaskError") or name in ("RayActorError", "ActorDiedError"):
            # the plain RayTaskError has function_name; the one ray.get raises (also an instance of the
            # cause's class) only has the text, which starts "ray::NAME(...)"
            found = getattr(e, "function_name", None)
            if not found:
                m = re.search(r"ray::([\w.]+)", str(e))
                found = m.group(1) if m else None
            task = found or task
        inner = getattr(e, "cause", None)
        if isinstance(inner, BaseException):
            e = inner
            continue
        # Ray Data re-raises user code errors as UserCodeException from the original
        if name in ("UserCodeException", "RayTaskError") and isinstance(e.__cause__, BaseException):
            e = e.__cause__
            continue
        break
    return e, task


def describe(e: BaseException) -> str:
    """The user-facing text of ``e``: the cause's own message, and where it was raised."""
    from .._storage import _clean, _is_storage_failure

    cause, task = root_cause(e)
    msg = str(cause).strip() or type(cause).__name__
    if _is_storage_failure(cause):  # a storage layer's error no store translated: at least no Rust dump
        return f"the object store or storage layer failed: {_clean(msg)}" + (f" (in Ray task {task.rsplit('.', 1)[-1]})"
                                                                            if task else "")
    if not any(t.__name__ in _USER_ERRORS for t in type(cause).__mro__):
        msg = f"{type(cause).__name__}: {msg}"
    if task:
        short = task.rsplit(".", 1)[-1]
        msg = f"{msg} (in Ray task {short})"
    return msg
