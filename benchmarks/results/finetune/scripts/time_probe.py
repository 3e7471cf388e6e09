"""How long the cpu preset takes on this machine, from a slice of each stage (kept as it ran).

    python benchmarks/results/finetune/scripts/time_probe.py

Times, on the cpu preset's model and data: 30 pre-training steps (16 x 256 bytes), 15 fine-tuning
steps (4 x 1024 bytes, the default DPRoPE table on the kernels) and one full measurement (64 windows,
40 passkey prompts), each after a warm-up, and extrapolates to the whole run (1000 pre-training steps,
18 fine-tunings of 50 steps, 25 measurements). Prints the load average before and after: the
estimate holds for the load it ran under.
"""

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import finetune_experiment as fx  # noqa: E402

import dprope_kernels as dk  # noqa: E402


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main():
    p = fx.PRESETS["cpu"]
    setup = SimpleNamespace(device=torch.device("cpu"), bf16=False, backend="auto")
    load_before = os.getloadavg()
    _, tensors = fx.prepare_data(Path(fx.sysconfig.get_paths()["stdlib"]), p)
    model = fx.new_model(p, 0, setup)
    dk.apply_dprope_kernels(model)
    fx.train_steps(model, tensors["pretrain"], 3, p.pretrain_batch, p.pretrain_lr, 0, setup, "warm-up")
    pre = timed(lambda: fx.train_steps(model, tensors["pretrain"], 30, p.pretrain_batch, p.pretrain_lr, 0,
                                       setup, "pre-train"))
    dk.revert_dprope_kernels(model)
    spec = next(s for s in fx.table_specs(model.config, p) if s.name == "dprope")
    mut = fx.under_test(model, p, setup)
    mut.install(spec)
    fx.train_steps(model, tensors["finetune"], 2, p.finetune_batch, p.finetune_lr, 0, setup, "warm-up")
    ft = timed(lambda: fx.train_steps(model, tensors["finetune"], 15, p.finetune_batch, p.finetune_lr, 0,
                                      setup, "fine-tune"))
    ev = timed(lambda: fx.evaluate(model, tensors["windows"], p))
    mut.close()
    whole = (p.pretrain_steps * pre[0] / 30 + 18 * p.finetune_steps * ft[0] / 15 + 25 * ev[0])
    print(f"load average before {load_before}, after {os.getloadavg()}; {torch.get_num_threads()} threads")
    print(f"pre-training step {pre[0] / 30:.3f} s ({pre[1] / 30:.3f} CPU s); fine-tuning step {ft[0] / 15:.3f} s "
          f"({ft[1] / 15:.3f} CPU s); one measurement {ev[0]:.1f} s ({ev[1]:.1f} CPU s)")
    print(f"the cpu preset, extrapolated: {whole:.0f} s = {whole / 60:.1f} min (pre-training "
          f"{p.pretrain_steps * pre[0] / 30:.0f} s, fine-tuning {18 * p.finetune_steps * ft[0] / 15:.0f} s, "
          f"measurements {25 * ev[0]:.0f} s; model loads and table installs not counted)")


if __name__ == "__main__":
    main()
