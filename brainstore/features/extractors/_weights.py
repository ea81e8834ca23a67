"""Where an extractor spec's weights are looked for, and filling those places once (``brainstore weights``).

Extraction never downloads (:mod:`._base`): every node reads weights from local caches, offline. A cluster
shares one cache on a volume every node mounts (``/mnt/brainstore/cache`` in ``deploy/``), set by the
variables the extractors read:

* ``HF_HOME`` (hub cache ``$HF_HOME/hub``, or ``HF_HUB_CACHE``): Hugging Face models (``hf``),
  sentence-transformers models (``text:model=org/name``), open_clip tags published on the hub and
  ``clip:pretrained=hf-hub:org/repo``;
* ``BRAINSTORE_WEIGHTS_DIR``: SAM checkpoints (``sam/``) and open_clip tags published only at a URL
  (``open_clip/``).

:func:`pull_weights` is the one place that downloads: it fills those caches for a spec, with the hub's
offline switches lifted for that call only (``HF_HUB_OFFLINE`` stays set for everything else), and
checks afterwards that the extractor now finds its weights offline. :func:`weights_status` says, for a
spec, whether its weights are there and where they are looked for.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import _hub
from ._base import WeightsNotFoundError
from ._registry import extractor_class, get_extractor, parse_spec
from ._util import weights_dir

__all__ = ["DEFAULT_SPECS", "WeightsPullError", "WeightsStatus", "cache_locations", "check_caches", "pull_weights",
           "use_cache", "weights_status"]

#: What ``brainstore weights list`` reports without arguments: the default spec of every extractor that
#: has weights (``hf`` needs a model= and has no default).
DEFAULT_SPECS = ("text", "clip:arch=ViT-B-32,pretrained=openai", "sam:variant=vit_b", "motion-energy")
#: Seconds a download waits for an answer before giving up.
TIMEOUT_S = 30


class WeightsPullError(OSError):
    """Weights could not be downloaded (no network, an unknown repository, a cache that cannot be written);
    the message names the spec, the cache and the fix."""

    def __str__(self) -> str:  # OSError formats (errno, strerror) otherwise
        return str(self.args[0])


@dataclass(frozen=True)
class Source:
    """One download a spec needs: a hub repository (all of it, or the first of ``files`` it has) or a URL."""

    kind: str  # "hub" | "url"
    ref: str  # org/repo, or the URL
    files: tuple[str, ...] = ()  # hub: candidate file names, first found wins (empty: the whole snapshot)
    dest: str = ""  # url: the folder it goes to

    def describe(self) -> str:
        if self.kind == "hub":
            what = f" ({' or '.join(self.files)})" if self.files else ""
            return f"huggingface.co/{self.ref}{what} -> {_hub.hf_cache_dir()}"
        return f"{self.ref} -> {self.dest}"


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a spec's weights are usable offline now, where they are, and where they are looked for."""

    spec: str
    present: bool
    found: str  # where the weights are (present), or why they are not (the extractor's own first line)
    searched: tuple[str, ...] = ()  # the places looked in (missing weights)
    sources: tuple[Source, ...] = field(default_factory=tuple)  # what `pull` downloads (empty: nothing to pull)

    def as_dict(self) -> dict:
        return {"spec": self.spec, "present": self.present, "found": self.found, "searched": list(self.searched),
                "pull": [s.describe() for s in self.sources]}


def cache_locations() -> dict[str, str]:
    """The caches extraction reads, as the environment sets them now."""
    return {"HF hub cache ($HF_HUB_CACHE or $HF_HOME/hub)": _hub.hf_cache_dir(),
            "brainstore weights ($BRAINSTORE_WEIGHTS_DIR: sam/, open_clip/)": str(weights_dir())}


def check_caches(option: str) -> None:
    """Check, before anything is fetched, that :func:`pull_weights` can write the caches.

    Parameters
    ----------
    option : str
        How the caller lets a user point the caches elsewhere, for the message (the CLI's ``--cache``).

    Raises
    ------
    ValueError
        One line naming the cache (``HF hub cache`` or ``weights folder``), its path, why it cannot be
        written (a file, under a file, not writable) and ``option``; nothing is created.
    """
    from ..._paths import check_folder

    for what, p in (("HF hub cache", _hub.hf_cache_dir()), ("weights folder", str(weights_dir()))):
        check_folder(p, what, option, create=True, make=False)


def use_cache(root: str | os.PathLike) -> dict[str, str]:
    """Point this process's caches at ``root`` (``HF_HOME=root/huggingface``, its hub cache, and
    ``BRAINSTORE_WEIGHTS_DIR=root/weights``); returns the variables set. Extraction on the cluster reads the
    same ones (deploy/Dockerfile, deploy/kuberay/)."""
    root = Path(root).expanduser().absolute()
    env = {"HF_HOME": str(root / "huggingface"), "HF_HUB_CACHE": str(root / "huggingface" / "hub"),
           "BRAINSTORE_WEIGHTS_DIR": str(root / "weights")}
    os.environ.update(env)
    return env


# ----------------------------------------------------------------------------------------------- status
def _raw(spec: str) -> tuple[str, dict]:
    """The extractor name and its options (given ones as strings, the rest at their defaults)."""
    name, given = parse_spec(spec)
    cls = extractor_class(name)
    return name, {k: given.get(k, None if o.default is None else str(o.default)) for k, o in cls.OPTIONS.items()}


def _looks_like_repo(s: str | None) -> bool:
    return bool(s) and s.count("/") == 1 and not s.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(s))


def sources(spec: str) -> tuple[Source, ...]:
    """What ``pull`` downloads for ``spec`` (empty: nothing: bundled, local files, or no weights at all)."""
    name, o = _raw(spec)
    if name in ("text", "hf"):
        return (Source("hub", o["model"]),) if _looks_like_repo(o["model"]) else ()
    if name == "video":
        return sources(o["image"] or "clip")
    if name == "sam":
        if (o["pretrained"] or "sam") == "none" or o["checkpoint"]:
            return ()
        from ._sam import OFFICIAL_FILES, OFFICIAL_URL

        fname = OFFICIAL_FILES.get(o["variant"])
        return (Source("url", OFFICIAL_URL + fname, dest=str(weights_dir() / "sam")),) if fname else ()
    if name == "clip":
        pre = o["pretrained"] or "openai"
        if o["checkpoint"] or pre.lower() == "none" or pre.startswith(("local-dir:", ".", "~", "/")) or os.sep in pre:
            return ()
        if pre.startswith("hf-hub:"):
            return (Source("hub", pre[len("hf-hub:"):]),)
        from ._clip_configs import _tag_cfg

        cfg = _tag_cfg(o["arch"], pre)
        if cfg.get("hf_hub"):
            repo, fname = os.path.split(cfg["hf_hub"])
            fname = fname or "open_clip_pytorch_model.bin"
            alts = (["open_clip_model.safetensors"] if fname == "open_clip_pytorch_model.bin" else
                    [fname[:-4] + ".safetensors"] if fname.endswith((".bin", ".pth")) else [])
            return (Source("hub", repo, tuple(alts + [fname])),)
        if cfg.get("url"):
            return (Source("url", cfg["url"], dest=str(weights_dir() / "open_clip")),)
    return ()


def weights_status(spec: str) -> WeightsStatus:
    """Whether ``spec``'s weights are usable offline now (and where), or where they were looked for.

    Raises
    ------
    ValueError
        For a spec that does not parse (unknown extractor, key or value).
    """
    srcs = sources(spec)
    try:
        found = get_extractor(spec).resolve_weights()
    except WeightsNotFoundError as e:
        return WeightsStatus(spec, False, str(e).splitlines()[0], tuple(e.searched), srcs)
    return WeightsStatus(spec, True, found, (), srcs)


# ----------------------------------------------------------------------------------------------- pull
@contextlib.contextmanager
def _online() -> Iterator[None]:
    """Lift the hub's offline switches (variables and the constant huggingface_hub froze at import) for
    this block only; they are back as they were after it."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "0" for k in keys})
    import huggingface_hub.constants as consts

    old_const = consts.HF_HUB_OFFLINE
    consts.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        consts.HF_HUB_OFFLINE = old_const
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cause(e: BaseException) -> str:
    """A download failure in a few words: the network's own reason when there is one."""
    text = f"{type(e).__name__}: {e}"
    for pat, say in ((r"(Name or service not known|Temporary failure in name resolution|nodename nor servname)",
                      "the host name does not resolve ({0}): no network or no DNS here"),
                     (r"(Connection refused|Network is unreachable|No route to host|timed out|Read timed out)",
                      "no connection ({0})"),
                     (r"(401 Client Error|403 Client Error|Repository Not Found|RepositoryNotFoundError|404)",
                      "the repository or file is not there, or needs a login ({0})")):
        m = re.search(pat, text)
        if m:
            return say.format(m.group(1))
    return " ".join(text.split())[:240]


def _host(src: Source) -> str:
    """The URL of the server ``src`` is fetched from (the hub's endpoint, ``$HF_ENDPOINT``, or the URL's)."""
    if src.kind == "hub":
        import huggingface_hub.constants as consts

        return consts.ENDPOINT
    return src.ref


def _unreachable(url: str) -> str:
    """Why ``url``'s server cannot be reached from here ("" when a TCP connection opens): checked once, up
    front, so that no download library retries for half a minute on a machine without network."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=10):
            return ""
    except socket.gaierror as e:
        return f"{u.hostname} does not resolve ({e.strerror or e}): no network or no DNS here"
    except (TimeoutError, socket.timeout):
        return f"{u.hostname}:{port} does not answer within 10 s"
    except OSError as e:
        return f"{u.hostname}:{port}: {e.strerror or e}"


def _fetch_hub(src: Source) -> str:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    cache = _hub.hf_cache_dir()
    if not src.files:
        return snapshot_download(src.ref, cache_dir=cache, etag_timeout=TIMEOUT_S)
    last: Exception | None = None
    for f in src.files:  # the first the repository has (open_clip's order: safetensors first)
        try:
            return hf_hub_download(src.ref, f, cache_dir=cache, etag_timeout=TIMEOUT_S)
        except EntryNotFoundError as e:  # (a missing file only; no network is LocalEntryNotFoundError)
            if type(e).__name__ == "LocalEntryNotFoundError":
                raise
            last = e
    raise last  # type: ignore[misc]


def _fetch_url(src: Source) -> str:
    import tempfile
    import urllib.request

    dest = Path(src.dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / os.path.basename(src.ref)
    if target.is_file():
        return str(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=dest)  # the same folder: the rename is atomic
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(src.ref, timeout=TIMEOUT_S) as r:
            while chunk := r.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)


def pull_weights(spec: str) -> list[str]:
    """Download what ``spec`` needs into the caches extraction reads; the files (or snapshot folders) fetched.

    Network is used here only, for this call. A spec with nothing to download (bundled, local files,
    random init, no weights) returns ``[]`` when its weights are found.

    Raises
    ------
    WeightsPullError
        One line naming the spec, the cache and the cause (e.g. the hub unreachable) and the fix.
    ValueError
        For a spec that does not parse.
    """
    srcs = sources(spec)
    if not srcs:
        st = weights_status(spec)
        if st.present:
            return []
        raise WeightsPullError(f"{spec}: nothing to download for it ({st.found}); give its weights as a local file "
                               "or folder (checkpoint= / model=), see `brainstore features --list`")
    import logging

    got = []
    for src in srcs:
        where = _hub.hf_cache_dir() if src.kind == "hub" else src.dest
        host = re.sub(r"^https?://([^/]+).*$", r"\1", _host(src))
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)  # its per-retry warnings: the outcome is said below, once
        try:
            why = _unreachable(_host(src))
            if why:
                raise ConnectionError(why)
            with _online():
                got.append(_fetch_hub(src) if src.kind == "hub" else _fetch_url(src))
        except Exception as e:  # noqa: BLE001 - every failure of the download is this one line
            cause = str(e) if isinstance(e, ConnectionError) and not e.__cause__ else _cause(e)
            raise WeightsPullError(
                f"cannot pull the weights of {spec} ({src.describe().split(' -> ')[0]}) into {where}: {cause}; "
                f"run `brainstore weights pull` where {host} can be reached (a node with network access, writing "
                "the shared cache), or copy the files there from a machine that has them") from None
        finally:
            hub_log.setLevel(level)
    st = weights_status(spec)
    if not st.present:
        raise WeightsPullError(f"{spec}: downloaded {', '.join(got)}, but the extractor still does not find its "
                               f"weights ({st.found}); check that HF_HOME / BRAINSTORE_WEIGHTS_DIR are the same here "
                               "and where extraction runs")
    return got
