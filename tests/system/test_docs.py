"""The documentation cannot drift from the code: the site builds with ``mkdocs build --strict`` (no broken
link or anchor, no missing page, every API docstring rendered), and the tour's Python runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(page: Path, section: str) -> list[str]:
    """The ```python blocks of ``page`` under the heading ``section``, up to the next heading of its level or
    above (lines inside code fences are not headings)."""
    lines, out, inside, level, fence = page.read_text().splitlines(), [], False, None, None
    for line in lines:
        if line.startswith("```"):
            if fence is None:
                fence = [] if (inside and line.strip() == "```python") else False
            else:
                if fence is not False:
                    out.append("\n".join(fence) + "\n")
                fence = None
            continue
        if fence is not None:
            if fence is not False:
                fence.append(line)
            continue
        m = re.match(r"^(#+) (.*)$", line)
        if m and inside and len(m.group(1)) <= level:
            break
        if m and m.group(2).strip() == section:
            inside, level = True, len(m.group(1))
    assert level is not None, f"{page.name} has no heading {section!r}"
    return out


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("open_dataset", "FeatureStore", "extract", "fit", "fit_decoder", "ModelRegistry", "evaluate",
                 "run_pipeline", "app_builder"):
        assert f'id="brainstore.{name}"' in api, f"the API page does not document brainstore.{name}"


def test_the_readme_is_a_tour_not_a_manual():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "./go demo" in readme and "./go test" in readme


@pytest.mark.slow
def test_the_tour_runs_as_written(tmp_path, monkeypatch, ray_local):
    """The tour's Python, as written, but for evaluate's maps on the cortex (tests/fitting/reports/test_maps.py
    checks them; here they would only cost time)."""
    import functools

    import brainstore
    import brainstore.fitting

    blocks = _python_blocks(ROOT / "docs" / "getting-started.md", "As Python")
    assert blocks, "the tour has no Python"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(brainstore, "evaluate", functools.partial(brainstore.fitting.evaluate, maps=False))
    scope: dict = {"__name__": "__tour__"}
    for code in blocks:
        exec(compile(code, "docs/getting-started.md (tour)", "exec"), scope)
    assert scope["answer"]["shape"]["lh"][0] == 1 and set(scope["pred"]) == {"lh", "rh"}
    assert (tmp_path / "tour" / "report" / "report.html").is_file()
