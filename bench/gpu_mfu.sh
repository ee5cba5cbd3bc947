#!/usr/bin/env bash
# MFU of the seed genome under the gpu profile (depth 8, seq 2048, vocab 8192) on one GPU.
# Target: >= 40% on an H100 (autoresearch's train.py with PyTorch SDPA measured 44% there).
#
# On the lent GPU machine (device tool), from the repo root, after copying data and wheels:
#   cp -r ../shared/data .device-data && ../shared/gpu/wheelhouse.sh rustbpe   # here, once
#   device run (carry .whl and .device-data):  bash bench/gpu_mfu.sh
# Prints the summary block and the MFU line; BUDGET (default 120 s) sets the training time.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export EVO_PROFILE=gpu EVO_DEVICE=cuda EVO_CACHE=${EVO_CACHE:-/tmp/evo-cache} EVO_DATA=${EVO_DATA:-$PWD/.device-data}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/evo-inductor} TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1
out=${OUT:-/tmp}
python3 prepare.py --profile gpu --source "$EVO_DATA"
EVO_TIME_BUDGET=${BUDGET:-120} python3 train.py 2>&1 | tee "$out/gpu_mfu.log" | grep -E "^(step .*(00010|00050|00100|00200) |---|[a-z_]+:)"
grep -E "^mfu_percent:" "$out/gpu_mfu.log"
