#!/usr/bin/env bash
# GPU check of `gcl bench` against the reference, on a machine with CUDA and PyTorch in
# /opt/torch/.venv (the device machine). Build here first; the device tool carries
# target/release/gcl and .devdata/ (see scripts/prepare_gpu_bench.sh).
# Writes logs and JSON to ${OUT:-.}.
set -uo pipefail
out="${OUT:-.}"
py=/opt/torch/.venv/bin/python
torch_lib=$($py -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi -L
gcl=./target/release/gcl
common=(--data .devdata/fashion-mnist --device cuda --rounds 2 --windows 4 --steps-per-window 40 --warmup-steps 20 --eval-passes 3)
echo "== fp32, vs the reference on the same GPU"
$gcl bench "${common[@]}" --vs-reference $py --reference-dir .devdata/reference --json "$out/gpu-fp32.json" 2>&1 | tee "$out/gpu-fp32.log"
echo "== bf16 autocast (ours only)"
$gcl bench "${common[@]}" --precision bf16 --json "$out/gpu-bf16.json" 2>&1 | tee "$out/gpu-bf16.log"
echo "== short GCL training on the GPU (2 + 1 epochs)"
time $gcl train --data .devdata/fashion-mnist --device cuda --epochs 2 --cls-epochs 1 --out "$out/gpu-run" 2>&1 | tee "$out/gpu-train.log"
