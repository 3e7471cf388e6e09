"""Scale-out on CPU with gloo: DDP and FSDP2 gradients (rope-only and fused-projection patches) equal
one process's; a context-parallel split rotates exactly like the whole sequence."""

import gc
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import rope_config_kwargs

import dprope_kernels as dk
from dprope_kernels.parallel import context_parallel_positions, context_parallel_shard

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it for a quick inner loop

WORLD = 2
SIZES = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
ROPE = {"rope_type": "dprope", "factor": 4.0, "original_max_position_embeddings": 64}


def tiny_patched_model(fused_projection=False):
    dk.register_dprope_rope_type()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SIZES, **rope_config_kwargs(ROPE), attn_implementation="eager")
    return dk.apply_dprope_kernels(transformers.LlamaForCausalLM(config), backend="torch",
                                   fused_projection=fused_projection)


def fully_sharded(model, projections_alone=False):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        if projections_alone:
            for name in ("q_proj", "k_proj", "v_proj"):
                fully_shard(getattr(layer.self_attn, name))
        fully_shard(layer)
    return fully_shard(model)


def local_gradients(model, ids=None):
    """The full gradients of ``model`` (FSDP2's shards gathered), after a backward on ``ids`` if given."""
    if ids is not None:
        model(ids, labels=ids).loss.backward()
    return {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            for n, p in model.named_parameters()}


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, SIZES["vocab_size"], (WORLD, 20), generator=g)


def rope_inputs():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 32, 4, 16, generator=g), torch.randn(1, 32, 2, 16, generator=g)
    return q, k, dk.plan_dprope(head_dim=16, original_max_position=64, factor=4.0).inv_freq


def worker(rank, store_file, out_file):
    """One rank's whole run. Rank 0 writes the results; each rank leaves with ``os._exit`` once the
    group is destroyed, so no gloo thread is left to the interpreter's teardown (where torch can abort
    a process whose work is complete)."""
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        results = collective_results(rank)
        if rank == 0:
            torch.save(results, out_file + ".partial")
            os.replace(out_file + ".partial", out_file)
        gc.collect()  # models sharded over the group go while it is alive
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def collective_results(rank):
    ids = batch()[rank : rank + 1]
    grads = {}
    for fused in (False, True):
        ddp = torch.nn.parallel.DistributedDataParallel(tiny_patched_model(fused))
        ddp(ids, labels=ids).loss.backward()
        grads["ddp", fused] = local_gradients(ddp.module)
        grads["fsdp2", fused] = local_gradients(fully_sharded(tiny_patched_model(fused)), ids)
    try:
        fully_sharded(tiny_patched_model(True), projections_alone=True)(ids, labels=ids)
        errors = None
    except RuntimeError as error:
        errors = str(error)

    q, k, inv_freq = rope_inputs()
    cp = {}
    for load_balanced in (False, True):
        q_local, positions = context_parallel_shard(q, rank, WORLD, load_balanced=load_balanced)
        k_local, _ = context_parallel_shard(k, rank, WORLD, load_balanced=load_balanced)
        out_q, out_k = dk.apply_rope(q_local, k_local, inv_freq, positions, backend="torch")
        gathered = [[torch.empty_like(t) for _ in range(WORLD)] for t in (out_q, out_k, positions)]
        for lists, t in zip(gathered, (out_q, out_k, positions)):
            dist.all_gather(lists, t)
        cp[load_balanced] = gathered
    return {"grads": grads, "cp": cp, "sharded_projection_error": errors}


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(str(tmp / "store"), str(tmp / "out.pt")), nprocs=WORLD, join=True)
    return torch.load(tmp / "out.pt")


@pytest.mark.parametrize("fused_projection", [False, True], ids=["rope", "fused-projection"])
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_gradients_match_one_process(distributed_run, wrapper, fused_projection):
    expected = local_gradients(tiny_patched_model(), batch())  # one process, rope-only patch
    got = distributed_run["grads"][wrapper, fused_projection]
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_projections_sharded_on_their_own_are_refused_clearly(distributed_run):
    assert ("fully_shard must wrap the attention or its decoder layer"
            in distributed_run["sharded_projection_error"])


@pytest.mark.parametrize("load_balanced", [False, True], ids=["contiguous", "zigzag"])
def test_context_parallel_split_matches_whole_sequence(distributed_run, load_balanced):
    q, k, inv_freq = rope_inputs()
    whole_q, whole_k = dk.apply_rope(q, k, inv_freq, backend="torch")
    shards_q, shards_k, positions = distributed_run["cp"][load_balanced]
    positions = torch.cat(positions)
    assert sorted(positions.tolist()) == list(range(32))
    torch.testing.assert_close(torch.cat(shards_q, dim=1), whole_q[:, positions], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(shards_k, dim=1), whole_k[:, positions], rtol=0, atol=0)


def test_context_parallel_positions_and_errors():
    assert context_parallel_positions(8, 1, 2, load_balanced=False).tolist() == [4, 5, 6, 7]
    assert context_parallel_positions(8, 0, 2).tolist() == [0, 1, 6, 7]
    assert context_parallel_positions(8, 1, 2).tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="divisible"):
        context_parallel_positions(10, 0, 2)
    with pytest.raises(ValueError, match="rank"):
        context_parallel_positions(8, 2, 2)
