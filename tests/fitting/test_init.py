"""The package's public face (``brainstore.fitting``): importing it stays free of torch and Ray."""

import subprocess
import sys


def test_import_fitting_does_not_import_torch():
    code = "import sys, brainstore.fitting; print([m for m in ('torch', 'ray') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
