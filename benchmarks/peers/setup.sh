#!/usr/bin/env bash
# Build the peers' environments for benchmarks/peers/compare.py, outside the tracked files:
#
#   benchmarks/peers/.venvs/evojax    EvoJAX 0.2.17 on jax/jaxlib 0.4.30 and flax 0.8.5
#   benchmarks/peers/.venvs/evotorch  EvoTorch 0.6.1 on the CPU build of PyTorch 2.13.0
#
# Idempotent: a venv whose pinned packages already import is left alone (a stamp file records
# the pins it was built with); delete .venvs/ to rebuild from scratch. Nothing of the peers'
# is committed (.gitignore). Needs Python 3.11 (the CPU torch wheel is cp311).
#
#   bash benchmarks/peers/setup.sh            # both
#   bash benchmarks/peers/setup.sh evojax     # one
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="$HERE/.venvs"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$VENVS"

# Pins that work together on this machine (checked when setup.sh was written).
EVOJAX_PINS=(
  "evojax==0.2.17"
  "jax==0.4.30" "jaxlib==0.4.30" "flax==0.8.5"
  "optax==0.2.3" "chex==0.1.86" "orbax-checkpoint==0.5.20" "tensorstore==0.1.63"
  "numpy==1.26.4" "scipy==1.13.1" "ml-dtypes==0.4.1"
  "scikit-learn==1.5.2" "matplotlib==3.9.2" "cma==3.3.0" "pyyaml" "Pillow"
)
# torch 2.13.0 is the CPU wheel in this machine's wheel folder (the registry's plain `torch`
# would be a multi-GB CUDA build); --index-url keeps pip from looking for a CUDA one.
EVOTORCH_PINS=(
  "evotorch==0.6.1" "torch==2.13.0"
  "numpy==1.26.4" "scikit-learn==1.5.2"
)

build() {  # build NAME PIN...
  local name="$1"; shift
  local venv="$VENVS/$name" stamp="$VENVS/$name/.pins"
  local want; want="$(printf '%s\n' "$@")"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
      && "$venv/bin/python" -c "import $name" 2>/dev/null; then
    echo "[$name] up to date ($venv)"
    return
  fi
  local t0=$SECONDS
  echo "[$name] building $venv"
  [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "$@"
  "$venv/bin/python" -c "import $name" 
  printf '%s\n' "$want" >"$stamp"
  echo "[$name] built in $((SECONDS - t0)) s"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(evojax evotorch)
for t in "${targets[@]}"; do
  case "$t" in
    evojax) build evojax "${EVOJAX_PINS[@]}" ;;
    evotorch) build evotorch "${EVOTORCH_PINS[@]}" ;;
    *) echo "unknown peer $t (evojax, evotorch)" >&2; exit 2 ;;
  esac
done
for t in "${targets[@]}"; do
  "$VENVS/$t/bin/python" -m pip freeze >"$VENVS/$t.freeze.txt"
  echo "[$t] $(grep -i -E "^($t|jax|jaxlib|flax|torch)==" "$VENVS/$t.freeze.txt" | tr '\n' ' ')"
done
