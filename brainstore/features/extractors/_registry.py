"""The extractor registry: names -> classes, spec strings -> extractors.

The spec grammar (``name:key=value,...``, brackets for nested specs) is in :mod:`._spec`;
here a spec is checked against the registered class's options and built.
"""

from __future__ import annotations

from typing import Any

from ._base import Extractor, ExtractorInfo
from ._spec import split_top_level, unbracket

_REGISTRY: dict[str, type[Extractor]] = {}


def register(cls: type[Extractor]) -> type[Extractor]:
    """Class decorator adding an :class:`Extractor` subclass to the registry."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    _REGISTRY[cls.name] = cls
    return cls


def extractor_class(name: str) -> type[Extractor]:
    """Registered class for ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown extractor {name!r}; valid extractors: {sorted(_REGISTRY)}") from None


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Parse ``name`` or ``name:key=value,...`` and validate it against the registry.

    Parameters
    ----------
    spec
        Spec string, e.g. ``"clip:arch=ViT-B-32,pretrained=openai,layer=final"``.

    Returns
    -------
    tuple[str, dict[str, str]]
        Registry name and raw string values (brackets removed).

    Raises
    ------
    ValueError
        Malformed spec, unknown extractor, unknown key (naming it and the
        valid keys), repeated key or a value the option rejects.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"extractor spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    cls = extractor_class(name)
    options: dict[str, str] = {}
    if rest.strip():
        pairs = split_top_level(rest, ",")
        for k, pair in enumerate(pairs):
            if not pair.strip():
                if k == len(pairs) - 1:
                    continue  # one trailing comma is harmless
                raise ValueError(f"empty item in extractor spec {spec!r} (two commas in a row?); "
                                 f"write {name}:key=value,key=value")
            key, eq, value = pair.partition("=")
            key = key.strip().lower()
            if not eq or not key:
                raise ValueError(
                    f"bad spec item {pair.strip()!r} in {spec!r}: expected key=value; "
                    f"valid keys for {name!r}: {sorted(cls.OPTIONS)}"
                )
            if key in options:
                raise ValueError(f"option {key!r} given twice in spec {spec!r}")
            if not value.strip() and key in cls.OPTIONS:
                raise ValueError(f"option {key!r} has an empty value in extractor spec {spec!r}; give {key}=VALUE "
                                 f"({cls.option_docs().get(key, 'see `brainstore features --list`')}) or leave "
                                 f"{key} out for its default")
            value = unbracket(value)
            cls.parse_option(key, value)  # validates key and value
            options[key] = value
    return name, options


def get_extractor(spec: str | Extractor, **overrides: Any) -> Extractor:
    """Build an extractor from a spec string (cheap: no weights, no torch import).

    Parameters
    ----------
    spec
        Spec string (see :func:`parse_spec`) or an existing extractor
        (returned unchanged when no overrides are given).
    **overrides
        Options taking precedence over those in ``spec``.

    Returns
    -------
    Extractor
    """
    if isinstance(spec, Extractor):
        if not overrides:
            return spec
        name, options = spec.name, {k: spec.options[k] for k in spec.explicit}
    else:
        name, options = parse_spec(spec)
    options.update(overrides)
    return extractor_class(name)(**options)


def with_layer(spec: str | Extractor, layer: str | int) -> Extractor:
    """``spec`` with its ``layer`` option set; for a wrapper (``video``), its wrapped extractor's.

    Parameters
    ----------
    spec
        Spec string or extractor, e.g. ``"video:image=[clip:arch=ViT-B-32],frames=8"``.
    layer
        Layer value as the extractor's ``layer`` option takes it (``6``, ``-1``, ``final``).

    Returns
    -------
    Extractor
        Built like ``get_extractor(spec, layer=layer)``, nested specs keeping their brackets.

    Raises
    ------
    ValueError
        When neither the extractor nor one it wraps has a ``layer`` option.
    """
    ext = get_extractor(spec)
    if "layer" in ext.OPTIONS:
        return get_extractor(ext, layer=layer)
    if ext.WRAPS:
        return get_extractor(ext, **{ext.WRAPS: with_layer(ext.options[ext.WRAPS], layer).spec})
    raise ValueError(f"extractor {ext.name!r} has no 'layer' option; extractors with layers: "
                     f"{sorted(n for n, c in _REGISTRY.items() if 'layer' in c.OPTIONS)}")


def list_extractors() -> list[ExtractorInfo]:
    """Describe every registered extractor, including whether it works offline now."""
    return [cls.info() for _, cls in sorted(_REGISTRY.items())]
