#!/usr/bin/env bash
# The declared dependency floors, checked: install the lowest version of every core dependency
# into a fresh temporary venv and run a small part of the test suite against it.
#
#   .ci/min_versions.sh                 # the floors below, then the default test subset
#   .ci/min_versions.sh tests/test_x.py # another subset
#   PYTHON=python3.11 KEEP_VENV=1 .ci/min_versions.sh
#
# Keep FLOORS equal to the lower bounds of [project.dependencies] in pyproject.toml. What sets
# each floor (issue 13, item 19):
#   flax 0.12.0          first release exporting nnx.List (models.MLP, policies, search.arch_modules)
#   jax/jaxlib 0.7.1     what flax 0.12.0 requires; jax.random.key_impl, jax.tree.*,
#                        jax.extend.random.define_prng_impl and lax.map(batch_size=) are older
#   python 3.11          what flax 0.12 and jax 0.7 require
#   evosax 0.3.2         the 0.3 API (evosax.algorithms registry, ask/tell signatures)
#   orbax-checkpoint 0.12.3  the first that writes commit_success.txt on a local disk, which
#                        evojax_nets.checkpoint reads to tell a finished step from a torn one
#                        (0.12.2 and older: every checkpoint reads as incomplete); 0.11.16 and
#                        older also use jax.experimental.layout.DeviceLocalLayout, gone in 0.7
#   optax 0.2.4, chex 0.1.88, jaxtyping 0.2.36, numpy 1.26 (jax 0.7.1 needs it too),
#   scikit-learn 1.4, matplotlib 3.8, tqdm 4.66: the previously declared floors, which install
#                        next to the above and pass this check
# tests/test_engine.py counts compilations with jax.monitoring.unregister_event_duration_listener,
# public only from jax 0.8.0: a test helper, not the library, so those two tests are deselected.
set -euo pipefail
cd "$(dirname "$0")/.."

FLOORS=(
    "jax==0.7.1"
    "jaxlib==0.7.1"
    "flax==0.12.0"
    "optax==0.2.4"
    "evosax==0.3.2"
    "chex==0.1.88"
    "jaxtyping==0.2.36"
    "numpy==1.26.0"
    "scikit-learn==1.4.0"
    "matplotlib==3.8.0"
    "tqdm==4.66.0"
    "orbax-checkpoint==0.12.3"
)
# Test tools are not floors: any recent version.
TOOLS=("pytest>=8" "pytest-xdist>=3.6")  # pyproject's addopts run the suite with xdist
if [ "$#" -gt 0 ]; then
    TESTS=("$@")
else
    TESTS=(
        tests/test_adapters.py tests/test_engine.py tests/test_tasks.py tests/test_checkpoint.py
        tests/test_faults_inputs.py tests/test_fullrank.py
        --deselect tests/test_engine.py::test_jitted_step_has_one_cache_entry
        --deselect tests/test_engine.py::test_one_compile_per_chunk_size
    )
fi

PYTHON="${PYTHON:-python3}"
VENV="$(mktemp -d "${TMPDIR:-/tmp}/evojax_nets_min.XXXXXX")"
if [ -z "${KEEP_VENV:-}" ]; then
    trap 'rm -rf "$VENV"' EXIT
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${FLOORS[@]}" "${TOOLS[@]}"
# The package itself from this checkout (not installed, so pip cannot upgrade anything above).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "installed:"
"$VENV/bin/python" -m pip list --format=freeze |
    grep -iE '^(jax|jaxlib|flax|optax|evosax|chex|jaxtyping|numpy|scikit-learn|matplotlib|tqdm|orbax-checkpoint)=='
"$VENV/bin/python" -m pytest -p no:cacheprovider -q "${TESTS[@]}"
