"""`brainstore serve`: the Serve config it writes passes Serve's own schema, a misspelled key or a public
host without a token is refused before anything starts, and the service runs (Ray Serve, and plain
uvicorn with --local) until SIGTERM or Ctrl-C, quietly, answering on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from typer.testing import CliRunner

from brainstore.cluster.cli import app

BIN = [sys.executable, "-m", "brainstore.cluster.cli"]
TOKEN = "serve-cli-test-token-0123456789"


@pytest.mark.slow
def test_write_config_passes_serves_schema_and_misspellings_are_refused(tmp_path, serving_models):
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    r = CliRunner().invoke(app, ["serve", "--registry", serving_models["registry"], "--write-config", str(out),
                                 "--port", "8321"])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(cfg)  # what `serve run` / `serve deploy` check
    assert cfg["http_options"] == {"host": "127.0.0.1", "port": 8321, "request_timeout_s": 35.0}  # the proxy's
    assert cfg["applications"][0]["args"]["limits"] == {"request_timeout_s": 30.0}  # the app answers 503 first
    a = cfg["applications"][0]
    assert a["import_path"] == "brainstore.serving:app_builder"
    assert a["args"]["registry"] == str(Path(serving_models["registry"]).resolve())
    enc = next(d for d in a["deployments"] if d["name"] == "Ingress")
    assert enc["autoscaling_config"]["max_replicas"] == 2 and enc["ray_actor_options"]["num_cpus"] == 0.25
    enc["autoscaling_config"]["max_replica"] = 4  # Serve itself would ignore this silently
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    ServeDeploySchema.model_validate(cfg)
    r = CliRunner().invoke(app, ["serve", "--registry", serving_models["registry"], "--config", str(bad)])
    assert r.exit_code == 2
    assert "applications[0].deployments[0].autoscaling_config.max_replica" in r.output.replace("\n", "")
    r = CliRunner().invoke(app, ["serve", "--registry", serving_models["registry"], "--host", "0.0.0.0"],
                           env={"BRAINSTORE_TOKEN": ""})
    assert r.exit_code == 2 and "BRAINSTORE_TOKEN" in r.output
    # how often names and aliases are resolved again: written into the app's args, checked when read
    r = CliRunner().invoke(app, ["serve", "--registry", serving_models["registry"], "--write-config", str(out),
                                 "--refresh-s", "0.5"])
    assert r.exit_code == 0 and yaml.safe_load(out.read_text())["applications"][0]["args"]["refresh_s"] == 0.5
    cfg["applications"][0]["args"]["refresh_s"] = 0
    del enc["autoscaling_config"]["max_replica"]
    bad.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["serve", "--registry", serving_models["registry"], "--config", str(bad)])
    assert r.exit_code == 2 and "refresh_s must be a number of seconds > 0" in r.output.replace("\n", ""), r.output


def _run_until_ready(args: list[str], url: str, env: dict) -> subprocess.Popen:
    p = subprocess.Popen(BIN + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        t0 = time.time()
        while time.time() - t0 < 120:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return p
            except requests.RequestException:  # not listening yet, or the proxy up before the app
                pass
            if p.poll() is not None:
                raise AssertionError(f"serve exited: {p.communicate()}")
            time.sleep(0.5)
        raise AssertionError("serve did not come up in 120 s")
    except BaseException:
        p.send_signal(signal.SIGINT)  # never leave a server (and its Ray) behind
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
        raise


@pytest.mark.slow
@pytest.mark.parametrize("local", [True, False], ids=["uvicorn", "ray-serve"])
def test_serve_runs_answers_and_stops_quietly(serving_models, local, tmp_path):
    from brainstore.serving import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BRAINSTORE_TOKEN": TOKEN}
    args = ["serve", "--registry", serving_models["registry"], "--port", str(port)] + (["--local"] if local else [])
    p = _run_until_ready(args, url, env)
    head: list[str] = []
    try:
        assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401  # the token in the env is required
        cat = requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        assert sorted(cat["encoders"]) == ["subj01", "subj02"]
        head.append(p.stdout.readline())
        while not head[-1].startswith("try: curl"):  # the start-up hint, pasted into a shell, gets the models
            head.append(p.stdout.readline())
            assert head[-1], f"serve printed no curl hint: {head}"
        assert '-H "Authorization: Bearer $BRAINSTORE_TOKEN"' in head[-1], head[-1]  # double quotes: expanded
        cmd = head[-1][len("try: "):].split("   (")[0] + " -w ' %{http_code}'"
        got = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
        assert got.stdout.endswith(" 200") and '"encoders"' in got.stdout, (cmd, got.stdout[-300:], got.stderr)
    finally:
        p.send_signal(signal.SIGTERM if local else signal.SIGINT)
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    out = "".join(head) + out
    assert p.returncode == 0, (out, err)
    assert "stopped" in out and f"at {url}" in out
    # a machine whose disk is nearly full gets our one-line notice of it (tests/cluster/test_quiet.py), nothing else
    noise = [line for line in err.splitlines() if line.strip() and not line.startswith("brainstore: warning: the disk")]
    assert not noise, noise
    assert "(raylet)" not in out and "graceful_shutdown" not in out, out  # Ray relays some notices on stdout


@pytest.mark.parametrize("write_config", [False, True], ids=["serve", "write-config"])
def test_tokens_and_public_hosts_are_checked_before_anything_starts(tmp_path, write_config):
    """A blank, short or unsendable $BRAINSTORE_TOKEN is refused in one line saying how to make one, with or
    without --write-config; --host 0.0.0.0 without a token is refused by --write-config as by serve."""
    out = tmp_path / "serve.yaml"
    extra = ["--write-config", str(out)] if write_config else ["--local"]
    base = ["serve", "--registry", str(tmp_path / "registry"), *extra]
    for token, words in (("   ", "$BRAINSTORE_TOKEN is blank"), ("tok", "$BRAINSTORE_TOKEN has 3 characters, fewer "
                                                                            "than 16"),
                         ("a token with spaces inside", "cannot carry")):
        r = CliRunner().invoke(app, base, env={"BRAINSTORE_TOKEN": token})
        assert r.exit_code == 2 and words in r.output and "secrets.token_urlsafe(32)" in r.output, (token, r.output)
    for unset in ({"BRAINSTORE_TOKEN": ""}, {"BRAINSTORE_TOKEN": None}):
        r = CliRunner().invoke(app, [*base, "--host", "0.0.0.0"], env=unset)
        assert r.exit_code == 2 and "--host 0.0.0.0" in r.output and "BRAINSTORE_TOKEN" in r.output, r.output
    assert not out.exists()
    if write_config:  # with a token it writes a config that asks for it
        r = CliRunner().invoke(app, [*base, "--host", "0.0.0.0"], env={"BRAINSTORE_TOKEN": TOKEN})
        assert r.exit_code == 0, r.output
        cfg = yaml.safe_load(out.read_text())
        assert cfg["http_options"]["host"] == "0.0.0.0" and cfg["applications"][0]["args"]["token_env"] == \
            "BRAINSTORE_TOKEN"


@pytest.mark.slow
def test_the_written_config_runs_under_rays_own_serve_run(serving_models, tmp_path):
    """`brainstore serve --write-config` then Ray's `serve run FILE`, unchanged: the app comes up on 127.0.0.1
    (its own Ray), is ready (models loadable), answers an encode like the in-process backend, and stops on
    Ctrl-C."""
    import base64

    import numpy as np

    from brainstore.datasets import AlgonautsDataset
    from brainstore.serving import LocalBackend, free_port

    port = free_port()
    cfg = tmp_path / "serve.yaml"
    r = CliRunner().invoke(app, ["serve", "--registry", serving_models["registry"], "--write-config", str(cfg),
                                 "--port", str(port)])
    assert r.exit_code == 0, r.output
    # RAY_ADDRESS=local: its own Ray, never a cluster the test session (or a test before it) left on this machine
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}
    serve_bin = Path(sys.executable).with_name("serve")
    # Ctrl-C must reach it: a test run started in the background of a shell without job control ignores SIGINT,
    # and an ignored signal is inherited across exec (a handled one is reset to the default)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        p = subprocess.Popen([str(serve_bin), "run", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=env, text=True, cwd=tmp_path, start_new_session=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    url = f"http://127.0.0.1:{port}"
    try:
        t0, ready = time.time(), None
        while time.time() - t0 < 180 and p.poll() is None:
            try:
                ready = requests.get(f"{url}/readyz", timeout=10)
                if ready.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert ready is not None and ready.status_code == 200, (p.poll(), ready and ready.text)
        assert ready.json()["models_checked"] == 6
        sid = AlgonautsDataset(serving_models["data"]).stimuli().column("stimulus_id")[2].as_py()
        got = requests.post(f"{url}/v1/encode", json={"subject": "subj02", "model": "img", "stimulus_id": sid},
                            timeout=60).json()
        want = LocalBackend(serving_models["registry"]).encode("subj02", model="img", stimulus_id=sid)["responses"]
        lh = np.frombuffer(base64.b64decode(got["lh"]["data_b64"]), "<f4").reshape(got["lh"]["shape"])
        np.testing.assert_array_equal(lh, want["lh"])
    finally:
        p.send_signal(signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=180)  # Serve's shutdown takes long on a loaded 2-core machine
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
    assert p.returncode in (0, -signal.SIGINT, 130), out[-3000:]


def test_a_serve_config_refuses_a_short_token_where_the_app_is_built(monkeypatch):
    """`serve run` / `serve deploy` of a written config: the token its token_env names is checked as the CLI
    checks it (a RayService's Secret holding a short token fails the deploy with the same one line)."""
    from brainstore.serving import app_builder

    monkeypatch.setenv("BRAINSTORE_TEST_TOKEN", "short")
    with pytest.raises(ValueError, match=r"\$BRAINSTORE_TEST_TOKEN \(the brainstore app's token_env\) has 5 "
                                         r"characters, fewer than 16; make one with"):
        app_builder({"registry": "/nonexistent", "token_env": "BRAINSTORE_TEST_TOKEN"})
