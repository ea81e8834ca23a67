"""Running a pipeline (``cluster/pipeline/_run.py``): the file's storage options reach every library call, under
the command line's."""

from __future__ import annotations

import pytest


def test_storage_options_of_the_file_reach_every_library_call_under_the_flags(monkeypatch):
    import json

    from brainstore._storage import ENV
    from brainstore.cluster.pipeline import PipelineError
    from brainstore.cluster.pipeline._run import _use_storage_options

    monkeypatch.setenv(ENV, json.dumps({"aws_region": "eu-west-1"}))  # as -S aws_region=eu-west-1 leaves it
    _use_storage_options({"aws_endpoint": "http://127.0.0.1:9000", "aws_region": "us-east-1"})
    assert json.loads(__import__("os").environ[ENV]) == {"aws_endpoint": "http://127.0.0.1:9000",
                                                         "aws_region": "eu-west-1"}
    with pytest.raises(PipelineError, match=r"storage_options: unknown key\(s\): 'endpiont' \(did you mean endpoint"):
        _use_storage_options({"endpiont": "http://127.0.0.1:9000"})
