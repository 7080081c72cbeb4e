"""Two processes on localhost (jax.distributed with gloo CPU collectives) run one sharded
evolution over a global mesh and agree with the single-process run."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import jax
from flax import nnx
from xla import child_env

from evojax_nets import Evolution, Supervised, load_digits
from evojax_nets.models import MLP

WORKER = textwrap.dedent(
    """
    import sys
    from evojax_nets.sharding import initialize_distributed
    initialize_distributed(f"localhost:{sys.argv[2]}", 2, int(sys.argv[1]), cpu_collectives="gloo")
    import jax
    from flax import nnx
    from evojax_nets import Evolution, Supervised, load_digits
    from evojax_nets.models import MLP
    assert jax.process_count() == 2 and len(jax.devices()) == 2
    evo = Evolution(MLP(64, (8,), 10, rngs=nnx.Rngs(0)), Supervised.from_dataset(load_digits(), 64),
                    "open_es", 16, mesh=True)
    state, history = evo.run(evo.init(jax.random.key(0)), 4, chunk_size=4)
    print("RESULT", jax.process_index(), repr(float(state.best_fitness)),
          repr(history.last["test_accuracy_mean"]), flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_match_single_process() -> None:
    port = str(_free_port())
    env = child_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outputs.append(out)
    results = [line.split() for out in outputs for line in out.splitlines() if "RESULT" in line]
    assert sorted(r[1] for r in results) == ["0", "1"]
    assert results[0][2:] == results[1][2:], results

    evo = Evolution(
        MLP(64, (8,), 10, rngs=nnx.Rngs(0)),
        Supervised.from_dataset(load_digits(), 64),
        "open_es",
        16,
    )
    state, history = evo.run(evo.init(jax.random.key(0)), 4, chunk_size=4)
    assert abs(float(results[0][2]) - float(state.best_fitness)) < 1e-5
    assert abs(float(results[0][3]) - history.last["test_accuracy_mean"]) < 1e-6
