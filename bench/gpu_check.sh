#!/usr/bin/env bash
# The GPU check (issue #18), on a machine with an NVIDIA GPU, in a few minutes, from the repo root:
#     bash bench/gpu_check.sh
# 1. names the GPU and its driver (nvidia-smi);
# 2. makes .venv with tripq[dev,gpu] (PyPI's Linux PyTorch brings its CUDA runtime), unless .venv
#    already holds a PyTorch that sees the GPU (a machine without PyPI: prepare .venv beforehand);
# 3. runs the GPU path's equality tests on the GPU (TRIPQ_TEST_DEVICE=cuda): the validation month
#    within 1e-4 minutes of the CPU path (where ../shared/data/nyc-tlc is), odd trips within 1e-6;
# 4. measures predictions/s for calls of 1, 64, 10,000 and 100,000 trips, GPU and CPU path side by
#    side, printing a table and writing bench/results/devices-cuda.json.
# DEVICE=cpu runs steps 3 and 4 on PyTorch's CPU device instead: the script's own check, anywhere.
# SIZES=1,64 measures fewer sizes; OUTPUT=path writes the results there instead.
set -eu
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
SIZES="${SIZES:-1,64,10000,100000}"
started=$(date +%s)

if [ "$DEVICE" != cpu ]; then
    if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
        echo "gpu_check: no NVIDIA GPU here (nvidia-smi failed); DEVICE=cpu checks the script" >&2
        exit 1
    fi
fi
if ! .venv/bin/python -c "import sys, torch; sys.exit(not ('$DEVICE' == 'cpu' or torch.cuda.is_available()))" 2>/dev/null; then
    EXTRAS=dev,gpu
    . boot/venv.sh
fi
.venv/bin/python -c "
import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available() and torch.cuda.get_device_name(0))
assert '$DEVICE' == 'cpu' or torch.cuda.is_available(), 'PyTorch sees no GPU: is the gpu extra a CUDA build?'
"
TRIPQ_TEST_DEVICE="$DEVICE" .venv/bin/python -m pytest -q -p no:cacheprovider tests/core/model/test_accelerator.py
.venv/bin/python -m bench.devices --device "$DEVICE" --sizes "$SIZES" ${OUTPUT:+--output "$OUTPUT"}
echo "gpu_check: done in $(( $(date +%s) - started )) s"
