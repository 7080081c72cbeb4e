#!/usr/bin/env bash
# One short accelerator check (under 8 minutes on an NVIDIA GPU machine): installs the package
# with CUDA JAX into a fresh virtual environment and prints the JSON of benchmarks/gpu_check.py
# (evaluation TFLOP/s and fraction of the device's peak for population 1024, MLP 784-128-10,
# batch 1024 in float32 and bfloat16; generations per second with and without gradient
# mutation; compile times apart). Run from the repository root:
#
#     bash benchmarks/gpu_check.sh                 # JSON on stdout, also in gpu_check.json
#     GPU_CHECK_PYTHON=python3 bash benchmarks/gpu_check.sh   # use an interpreter that already
#                                                  # has CUDA JAX, flax, optax and evosax
#                                                  # (a machine with no package index)
#     GPU_CHECK_SWEEP=1 bash benchmarks/gpu_check.sh  # then also benchmarks/sweep.py (both
#                                                  # workloads, 2 repeats; its JSON in
#                                                  # gpu_sweep.json): the sweep ratios of
#                                                  # issue 12, a few more minutes
#
# Record the result in benchmarks/RESULTS.md with the date and the device.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PYTHON=$GPU_CHECK_PYTHON
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  VENV=${GPU_CHECK_VENV:-.venv-gpu}
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --upgrade pip >&2
  # The CUDA plugin for the jax version the package pins; the package itself without re-resolving.
  "$VENV/bin/pip" install -q -e . "jax[cuda12]" >&2
  PYTHON=$VENV/bin/python
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" >&2
echo "setup took $(( $(date +%s) - start )) s" >&2
"$PYTHON" benchmarks/gpu_check.py "$@" | tee gpu_check.json
if [ "${GPU_CHECK_SWEEP:-0}" = "1" ]; then
  "$PYTHON" benchmarks/sweep.py --repeats 2 --out gpu_sweep.json >&2
  cat gpu_sweep.json
fi
