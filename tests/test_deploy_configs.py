"""The cluster configs, validated offline: ray_config.yaml by the Ray cluster launcher's own schema
(``prepare_config`` + ``validate_config``, which do refuse a misspelled key), the KubeRay manifests by
shape, and the RayService's embedded Serve config by Serve's schema and brainstore's unknown-key walk;
the committed rayservice.yaml is what deploy/kuberay/render.py renders (no drift from
``brainstore serve --write-config``)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _ray_config() -> dict:
    return yaml.safe_load((ROOT / "ray_config.yaml").read_text())


def test_ray_config_passes_the_cluster_launchers_schema():
    from jsonschema.exceptions import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _ray_config()
    validate_config(prepare_config(copy.deepcopy(cfg)))
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any("g5" in t["node_config"]["InstanceType"] for t in types.values())  # GPU workers
    assert types[cfg["head_node_type"]]["max_workers"] == 0
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])  # pyproject's pins
    assert any(f"'{ray.__version__}'" in c for c in cfg["setup_commands"])
    for typo in (("max_worker", 3), ("available_node_types", {**types, "cpu_worker": {**types["cpu_worker"],
                                                                                     "min_worker": 0}})):
        bad = {**copy.deepcopy(cfg), typo[0]: typo[1]}
        with pytest.raises(ValidationError, match="Additional properties"):
            validate_config(prepare_config(bad))


def _render():
    spec = importlib.util.spec_from_file_location("render", ROOT / "deploy" / "kuberay" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kuberay_manifests_parse_and_embed_the_serve_config_brainstore_writes():
    from ray.serve.schema import ServeDeploySchema

    from brainstore.serving._config import check_serve_config

    cluster = yaml.safe_load((ROOT / "deploy" / "kuberay" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu-workers"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1"
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]

    service = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert service == _render().render(), "rayservice.yaml is stale: run python deploy/kuberay/render.py"
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    serve_cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_cfg)
    check_serve_config(serve_cfg, "serveConfigV2")
    app = serve_cfg["applications"][0]
    assert serve_cfg["http_options"]["host"] == "0.0.0.0" and app["args"]["token_env"] == "BRAINSTORE_TOKEN"
    assert app["args"]["store"].startswith("s3://")
    assert app["args"]["registry"].startswith("s3://")  # models and tables on object storage
    spec = service["spec"]["rayClusterConfig"]
    for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:  # the token reaches the app wherever it is built
        for c in g["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "brainstore-token"}} in c["envFrom"]
            assert {"name": "brainstore-shared", "mountPath": "/mnt/brainstore"} in c["volumeMounts"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py" in dockerfile


def test_a_config_that_names_a_token_variable_never_serves_without_it(monkeypatch):
    from brainstore.serving._deploy import app_builder

    monkeypatch.delenv("BRAINSTORE_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"\$BRAINSTORE_TEST_TOKEN, which is empty or unset"):
        app_builder({"registry": "/nonexistent", "token_env": "BRAINSTORE_TEST_TOKEN"})
