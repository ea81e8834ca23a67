"""The registry: spec strings parsed and checked, every entry covered and listed, specs round-tripped; no torch to build."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brainstore.features.extractors import ExtractorInfo, get_extractor, list_extractors, parse_spec
from brainstore.features.extractors import _registry
from tests.features.extractors.helpers import TINY, CASES, _spec


def test_cases_cover_every_registry_entry():
    covered = {CASES[c][0].split(":")[0] for c in CASES}
    assert covered == {i.name for i in list_extractors()} == {"clip", "sam", "hf", "text", "video", "motion-energy"}


def test_parse_spec_and_errors():
    assert parse_spec("clip") == ("clip", {})
    name, opts = parse_spec("clip:arch=ViT-B-32, pretrained=openai,tower=image,layer=final")
    assert name == "clip" and opts == {"arch": "ViT-B-32", "pretrained": "openai", "tower": "image", "layer": "final"}
    assert parse_spec("video:image=[clip:arch=ViT-B-32,layer=3],frames=8")[1] == {
        "image": "clip:arch=ViT-B-32,layer=3", "frames": "8"}
    with pytest.raises(ValueError, match=r"'archh'.*valid options: \['arch'"):
        parse_spec("clip:archh=ViT-B-32")
    with pytest.raises(ValueError, match=r"'tower'.*\['image', 'text'\]"):
        parse_spec("clip:tower=audio")
    with pytest.raises(ValueError, match=r"'grid'"):
        parse_spec("sam:grid=zero")
    with pytest.raises(ValueError, match=r"unknown extractor 'nope'.*'clip'"):
        parse_spec("nope:x=1")
    with pytest.raises(ValueError, match="twice"):
        parse_spec("clip:layer=1,layer=2")
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("clip:ViT-B-32")
    with pytest.raises(ValueError, match="unbalanced"):
        parse_spec("video:image=[clip:layer=1")
    with pytest.raises(ValueError, match="'layer'"):
        get_extractor(f"clip:arch={TINY},pretrained=none,layer=2")  # tiny has blocks 0..1
    with pytest.raises(ValueError, match="'arch'"):
        get_extractor("clip:arch=NoSuchNet")
    with pytest.raises(ValueError, match="tower=image"):
        get_extractor("clip:tower=text,layer=3")
    with pytest.raises(ValueError, match="modality"):
        get_extractor("video:image=text")


def test_import_and_construction_do_not_import_torch():
    code = ("import sys, brainstore.features.extractors as E; "
            "[E.get_extractor(s).version for s in ('clip', 'clip:layer=5', 'text', 'video', 'sam:pretrained=none')]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_list_extractors():
    infos = {i.name: i for i in list_extractors()}
    assert all(isinstance(i, ExtractorInfo) for i in infos.values())
    assert infos["text"].offline and infos["text"].default_dim == 384
    assert not infos["hf"].offline
    assert infos["clip"].default_dim == 512 and "cls" in infos["clip"].poolings
    assert "layer" in infos["clip"].options and "grid" in infos["sam"].options


def test_registry_round_trip_spec(assets):
    for case in CASES:
        ext = get_extractor(_spec(case, assets))
        again = get_extractor(ext.spec)
        assert again.version == ext.version and again.dim == ext.dim
    assert get_extractor(get_extractor("clip"), layer=3).spec == "clip:layer=3"
    assert "clip" in _registry._REGISTRY
