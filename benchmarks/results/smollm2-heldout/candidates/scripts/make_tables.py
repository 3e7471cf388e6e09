"""Writes every table file used (JSON: inv_freq float64 list, attention_factor, how) to /work/research/tables."""
import json, math
from pathlib import Path
import torch
import dprope_kernels as dk
from dprope_kernels import strategies as S

HEAD, THETA, L, LT = 64, 1e5, 8192, 16384
s = LT / L
YARN_AF = 0.1 * math.log(s) + 1.0  # transformers' get_mscale(2) = 1.0693147...
OUT = Path("/work/research/tables"); OUT.mkdir(exist_ok=True)
base = S.default_inv_freq(HEAD, THETA)  # HF float32 values as float64
plan = dk.plan_dprope(head_dim=HEAD, rope_theta=THETA, original_max_position=L, target_max_position=LT)
robust = plan.inv_freq.double()
yarn = S.yarn(base, head_dim=HEAD, rope_theta=THETA, factor=s, original_max_position=L)
turns = L * base / (2 * math.pi)  # r_i: turns of pair i within L
cut = math.sqrt(L / 360)  # robust cutoff, 4.770 turns


def ramp(lo, hi):
    w = (torch.log(hi / turns) / math.log(hi / lo)).clamp(0, 1)  # 0 at r=hi, 1 at r=lo, linear in log r
    return base * ((1 - w) + w / s), w


def write(name, inv, af, how):
    inv = [float(x) for x in inv]
    (OUT / f"{name}.json").write_text(json.dumps({"name": name, "inv_freq": inv, "attention_factor": af, "how": how,
                                                 "ratio_to_base": [a / b for a, b in zip(inv, base.tolist())]}, indent=1))
    print(name, af, " ".join(f"{a / b:.3f}" for a, b in zip(inv, base.tolist())))


write("dprope-af1", robust, 1.0, "plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, target_max_position=16384) (robust; pairs %s interpolated)" % plan.interpolated_pairs)
write("yarn-af1069", yarn, YARN_AF, "dprope_kernels.strategies.yarn (HF defaults beta_fast 32, beta_slow 1, truncate) with attention_factor 0.1 ln 2 + 1; verification only")
write("A-dprope-af1069", robust, YARN_AF, "robust DPRoPE table, attention_factor 0.1 ln 2 + 1")
b, w = ramp(cut / 2, cut * 2)
write("B-ramp-af1069", b, YARN_AF, f"ramp: w_i linear in log r_i from 0 at r=2*4.770={2*cut:.3f} turns to 1 at r=4.770/2={cut/2:.3f} turns; inv_i = theta_i*((1-w_i)+w_i/2); attention_factor 0.1 ln 2 + 1")
near = (turns >= cut / 2) & (turns <= cut * 2)
b2 = torch.where(near, yarn, robust)
write("B2-dprope-yarnnear-af1069", b2, YARN_AF, f"robust DPRoPE table with YaRN's values on the pairs whose r_i is within a factor 2 of 4.770 turns (pairs {near.nonzero().flatten().tolist()}); attention_factor 0.1 ln 2 + 1")
write("C1-dprope-af1035", robust, 1.035, "robust DPRoPE table, attention_factor 1.035")
write("C2-dprope-af110", robust, 1.10, "robust DPRoPE table, attention_factor 1.10")
print("ramp weights", [round(x, 3) for x in w.tolist()])

# --- added after the first tuning pass (C1, factor 1.035, beat A's 1.0693 on the robust table at 8k and past 8k) ---
write("B2-dprope-yarnnear-af1035", b2, 1.035, f"as B2-dprope-yarnnear-af1069 (pairs {near.nonzero().flatten().tolist()} take YaRN's values) with attention_factor 1.035")
write("yarn-af1035", yarn, 1.035, "control, not a candidate: YaRN's table (strategies.yarn, HF defaults) with attention_factor 1.035 instead of its own 1.0693")
