"""How an extraction's Ray Data stages use the cluster (:func:`~brainstore.features._stages.plan_resources`)."""


def test_resource_plan_keeps_decoding_out_of_the_model_actors():
    """Ray Data fuses two map stages with equal remote args; the defaults must keep them apart so
    decoding starts before the model actors are up (and uses every core / the CPUs beside a GPU)."""
    from ray.data._internal.logical.rules.operator_fusion import are_remote_args_compatible

    from brainstore.features._stages import plan_resources

    def args(pl):
        return ({"num_cpus": pl["prep_cpus"]}, {"num_cpus": pl["actor_cpus"], "num_gpus": pl["actor_gpus"]})

    cpu2 = plan_resources(12000, 64, 2, 0)
    assert cpu2 == {"n_blocks": 32, "block_rows": 384, "n_actors": 1, "use_gpu": False, "actor_gpus": 0.0,
                    "actor_cpus": 1.0, "threads": 2, "prep_cpus": 0.5}
    assert not are_remote_args_compatible(*args(cpu2))
    cpu32 = plan_resources(100000, 64, 32, 0)
    assert (cpu32["n_actors"], cpu32["threads"], cpu32["actor_cpus"], cpu32["prep_cpus"]) == (4, 8, 4.0, 1.0)
    assert not are_remote_args_compatible(*args(cpu32))
    gpu = plan_resources(20000, 256, 16, 1)  # the H100 box: 1 GPU actor, 15 CPUs for decoding
    assert (gpu["n_actors"], gpu["actor_gpus"], gpu["threads"], gpu["prep_cpus"]) == (1, 1.0, None, 1.0)
    assert not are_remote_args_compatible(*args(gpu))
    assert plan_resources(20000, 256, 64, 8)["n_actors"] == 8
    assert plan_resources(20000, 256, 64, 2, num_gpus=0.5)["n_actors"] == 4  # two actors per GPU
    for n_cpus in range(2, 65):  # no CPU-only cluster size fuses by default
        assert not are_remote_args_compatible(*args(plan_resources(100000, 64, n_cpus, 0))), n_cpus
    cpu1 = plan_resources(1000, 64, 1, 0)  # one CPU: nothing to overlap; both fit on it (fused)
    assert cpu1["actor_cpus"] + cpu1["prep_cpus"] <= 1 and are_remote_args_compatible(*args(cpu1))
    assert plan_resources(100, 64, 2, 0)["n_actors"] == 1 and plan_resources(10, 64, 16, 4)["n_actors"] == 1
    # asked-for equal CPUs fuse (the documented opt-in)
    assert are_remote_args_compatible(*args(plan_resources(1000, 64, 2, 0, actor_cpus=0.5, prep_cpus=0.5)))
    # blocks hold whole model batches
    assert all(plan_resources(n, 64, c, 0)["block_rows"] % 64 == 0 for n in (100, 1000, 12345) for c in (2, 16))
    # captions: no decode stage; without GPUs one single-threaded actor per CPU (up to 8), holding its cores
    text2 = plan_resources(10000, 64, 2, 0, decode=False)
    assert (text2["n_actors"], text2["threads"], text2["actor_cpus"], text2["prep_cpus"]) == (2, 1, 1.0, None)
    text64 = plan_resources(100000, 64, 64, 0, decode=False)
    assert (text64["n_actors"], text64["threads"], text64["actor_cpus"]) == (8, 8, 8.0)
    assert plan_resources(10000, 64, 16, 1, decode=False)["n_actors"] == 1  # with a GPU: one actor per GPU
