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

ROOT = Path(__file__).resolve().parents[2]


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
    for name, cmds in _setup_commands(cfg).items():  # every node: pyproject's pins, Ray's version checked
        assert any("pip install" in c and "-e ." in c for c in cmds), name
        assert any(f"'{ray.__version__}'" in c for c in cmds), name
    for typo in (("max_worker", 3), ("available_node_types", {**types, "cpu_worker": {**types["cpu_worker"],
                                                                                     "min_worker": 0}})):
        bad = {**copy.deepcopy(cfg), typo[0]: typo[1]}
        with pytest.raises(ValidationError, match="Additional properties"):
            validate_config(prepare_config(bad))


def _setup_commands(cfg: dict) -> dict[str, list[str]]:
    """The commands each node type runs, in order, as the launcher composes them: the common
    setup_commands, then the head's or the type's own worker_setup_commands (else the global ones)."""
    out = {}
    for name, t in cfg["available_node_types"].items():
        own = cfg.get("head_setup_commands", []) if name == cfg["head_node_type"] else \
            t.get("worker_setup_commands", cfg.get("worker_setup_commands", []))
        out[name] = list(cfg.get("setup_commands", [])) + list(own)
    return out


def _pins() -> dict[str, str]:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split("==")[0]: d.split("==")[1] for d in deps if d.split("==")[0] in ("torch", "torchvision")}


CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CACHE = {"HF_HOME": "/mnt/brainstore/cache/huggingface", "BRAINSTORE_WEIGHTS_DIR": "/mnt/brainstore/cache/weights"}


def test_cpu_nodes_install_the_cpu_torch_wheel_and_gpu_nodes_the_cuda_build():
    """ray_config.yaml: the head and the CPU workers install torch from the CPU wheel index, at pyproject's
    pins, before `pip install -e .` (which then finds torch satisfied); GPU workers take PyPI's (CUDA) wheel.
    deploy/Dockerfile: the CPU wheel index by default, at the same pins, before `pip install .`."""
    pins = _pins()
    want = f"torch=={pins['torch']} torchvision=={pins['torchvision']}"
    cfg = _ray_config()
    for name, cmds in _setup_commands(cfg).items():
        editable = next(i for i, c in enumerate(cmds) if "pip install" in c and "-e ." in c)
        cpu = [i for i, c in enumerate(cmds) if CPU_INDEX in c]
        if name == "gpu_worker":
            assert not cpu, cmds
        else:
            assert cpu and cpu[0] < editable and want in cmds[cpu[0]], (name, cmds)
    lines = _dockerfile()
    arg = next(v for k, v in lines if k == "ARG" and v.startswith("TORCH_INDEX="))
    assert arg == f"TORCH_INDEX={CPU_INDEX}"
    run = next(v for k, v in lines if k == "RUN" and "pip install" in v and "TORCH_INDEX" in v)
    assert "--index-url ${TORCH_INDEX} " + want in run
    assert run.index("${TORCH_INDEX}") < run.index("pip install --no-cache-dir .")


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        cur += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            k, _, v = cur.strip().partition(" ")
            out.append((k.upper(), " ".join(v.split())))
            cur = ""
    return out


def test_dockerfile_build_folder_belongs_to_ray_before_pip_install_runs_as_ray():
    """Walked instruction by instruction: the folder WORKDIR names is made owned by ray (as root) before WORKDIR,
    so no builder makes it root-owned; every COPY into it is --chown=ray; `pip install .` runs as ray in it."""
    user, owned, workdir = "root", set(), None
    for k, v in _dockerfile():
        if k == "USER":
            user = v.split(":")[0]
        elif k == "RUN" and v.startswith("install -d") and "-o ray" in v:
            assert user == "root"
            owned.update(w for w in v.split() if w.startswith("/"))
        elif k == "WORKDIR":
            workdir = v
            assert v in owned, f"WORKDIR {v} is not made owned by ray first (a root-owned folder on some builders)"
        elif k == "COPY":
            assert v.startswith("--chown=ray:"), v
        elif k == "RUN" and "pip install --no-cache-dir ." in v:
            assert user == "ray" and workdir in owned
    assert workdir == "/home/ray/brainstore"


def test_the_image_the_manifests_and_the_launcher_read_weights_from_one_shared_cache():
    """HF_HOME and BRAINSTORE_WEIGHTS_DIR under the shared volume (/mnt/brainstore), the same in deploy/Dockerfile,
    every container of raycluster.yaml and rayservice.yaml, and ray_config.yaml's environment; and the same
    as `brainstore weights pull --cache /mnt/brainstore/cache` sets (so what it fills is what extraction reads)."""
    import os

    from brainstore.features import use_cache

    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_CACHE", "BRAINSTORE_WEIGHTS_DIR")}
    try:
        env = use_cache("/mnt/brainstore/cache")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert {k: env[k] for k in CACHE} == CACHE
    image = " ".join(v for k, v in _dockerfile() if k == "ENV")
    for k, v in {**CACHE, "HF_HUB_OFFLINE": "1"}.items():
        assert f"{k}={v}" in image, (k, image)
    assert "brainstore weights pull" in (ROOT / "deploy" / "Dockerfile").read_text()
    for f in ("raycluster.yaml", "rayservice.yaml"):
        doc = yaml.safe_load((ROOT / "deploy" / "kuberay" / f).read_text())
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for c in g["template"]["spec"]["containers"]:
                env = {e["name"]: e["value"] for e in c.get("env", [])}
                assert {k: env.get(k) for k in CACHE} == CACHE and env.get("HF_HUB_OFFLINE") == "1", (f, c["name"])
                assert any(m["mountPath"] == "/mnt/brainstore" for m in c["volumeMounts"])
    assert "brainstore weights pull" in (ROOT / "deploy" / "kuberay" / "raycluster.yaml").read_text()
    launcher = " ".join(_ray_config()["setup_commands"])
    for k, v in CACHE.items():
        assert f"{k}={v}" in launcher
    text = (ROOT / "ray_config.yaml").read_text()
    assert "brainstore weights pull" in text


def test_laptop_access_goes_through_a_tunnel():
    """The launcher opens only SSH: ray_config.yaml says how a laptop reaches the client port (a tunnel),
    raycluster.yaml how (a port-forward); neither suggests ray://<head-ip>:10001 directly."""
    text = (ROOT / "ray_config.yaml").read_text()
    assert "-L 10001:localhost:10001" in text and "ray attach ray_config.yaml --port-forward 10001" in text
    assert "ray://127.0.0.1:10001" in text and "ray://<head-ip>:10001" not in text
    assert "kubectl port-forward svc/brainstore-head-svc 10001:10001" in (
        ROOT / "deploy" / "kuberay" / "raycluster.yaml").read_text()


def _render():
    spec = importlib.util.spec_from_file_location("render", ROOT / "deploy" / "kuberay" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kuberay_manifests_parse_and_embed_the_serve_config_brainstore_writes():
    from ray.serve.schema import ServeDeploySchema

    from brainstore.serving import check_serve_config

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
    assert app["import_path"] == "brainstore.serving:app_builder"  # the public path, not a private module's
    spec = service["spec"]["rayClusterConfig"]
    for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:  # the token reaches the app wherever it is built
        for c in g["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "brainstore-token"}} in c["envFrom"]
            assert {"name": "brainstore-shared", "mountPath": "/mnt/brainstore"} in c["volumeMounts"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py" in dockerfile


def test_a_config_that_names_a_token_variable_never_serves_without_it(monkeypatch):
    from brainstore.serving import app_builder

    monkeypatch.delenv("BRAINSTORE_TEST_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"\$BRAINSTORE_TEST_TOKEN, which is empty or unset"):
        app_builder({"registry": "/nonexistent", "token_env": "BRAINSTORE_TEST_TOKEN"})


@pytest.mark.parametrize("import_path", ["brainstore.serving:app_builder",  # what configs are written with
                                         "brainstore.serving._deploy:app_builder"])  # configs of earlier versions
def test_a_config_naming_the_public_or_the_old_import_path_builds_and_is_read(import_path, tmp_path):
    """Serve resolves a config's import_path and calls the builder with its args as Ray does it
    (``import_attr``, ``call_user_app_builder_with_args_if_necessary``); both paths give the brainstore
    application, and ``brainstore serve --config`` reads a config naming either."""
    from ray._common.utils import import_attr
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from brainstore.serving import app_args, deployment_options, read_serve_config, serve_config

    cfg = serve_config(str(tmp_path / "registry"), request_timeout_s=12.0)
    app = cfg["applications"][0]
    assert app["import_path"] == "brainstore.serving:app_builder"
    app["import_path"] = import_path
    built = call_user_app_builder_with_args_if_necessary(import_attr(import_path), app["args"])
    assert isinstance(built, Application)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    read = read_serve_config(path)
    assert app_args(read) == app["args"] and app_args(read)["limits"] == {"request_timeout_s": 12.0}
    assert set(deployment_options(read)) == {"Ingress", "Extractor"}


def test_a_config_of_the_two_hop_app_is_refused_with_the_fix(tmp_path):
    """Configs written before the Ingress held the models name Encoder and Decoder deployments: refused, saying
    where their options go, not left for Serve to fail on."""
    from brainstore.serving import ServeConfigError, read_serve_config, serve_config

    cfg = serve_config(str(tmp_path / "registry"))
    cfg["applications"][0]["deployments"].append({"name": "Encoder", "num_replicas": 2})
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ServeConfigError, match="'Encoder' is gone: the Ingress deployment holds the encoding models"):
        read_serve_config(path)

