"""Population-based training of the user's own Flax training step, as one XLA program.

Jaderberg et al. (2017), "Population Based Training of Neural Networks",
https://arxiv.org/abs/1711.09846. A population of models trains in parallel, each with its own
hyperparameters; every ``ready`` steps the members are scored, the bottom quantile copies the
whole state (parameters, optimizer state) *and* the hyperparameters of a member of the top
quantile (*exploit*), and the copied hyperparameters are perturbed by a factor or resampled from
the search space (*explore*). A member's hyperparameters therefore follow a schedule, found
online, and the population's best member carries the schedule of its lineage.

Here the population is the leading axis of one pytree, the user's ``train_step`` and
``eval_fn`` are written for one member and ``vmap``ped in one place, and a whole run is chunks of
one compiled ``lax.scan`` (rounds of ``ready`` steps, then scoring, exploit and explore): no
processes, no files in between. Hyperparameters are per-member arrays, so changing them never
recompiles; with ``optax.inject_hyperparams`` they are written into the optimizer state before
every step (see :func:`inject_hparams`), so an ordinary ``state.apply_gradients`` follows them.

Config (population size, ``ready``, the search space) is static Python; hyperparameters are a
``{name: (P,)}`` dict of arrays; the state is a :class:`PBTState` pytree. The random-search
baseline is the same program with ``exploit="none"``.

Example::

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)

    def train_step(state, batch, hparams):      # one member; hparams: {name: scalar}
        grads = jax.grad(loss)(state.params, *batch)
        return state.apply_gradients(grads=grads)  # learning_rate comes from hparams

    pbt = PBT(train_step, lambda s: accuracy(s.params, x_val, y_val),
              {"learning_rate": LogUniform(1e-3, 1.0), "momentum": Uniform(0.5, 0.99)},
              population_size=8, ready=100, batch_fn=sample_batches(x, y, 64))
    result = pbt.fit(jax.random.key(0), create_train_state, num_steps=2000)
    result.state, result.schedule, result.plot("schedules.png")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_nets.program import (
    Program,
    canonicalize,
    check_key,
    rank_finite,
    truncation_select,
)
from evojax_nets.runner import Callback, Runner
from evojax_nets.search.checks import check_hparams, check_member, num_positional
from evojax_nets.search.history import PBTHistory, PBTResult, PBTState
from evojax_nets.search.spaces import (
    HParams,
    SearchSpace,
    State,
    check_space,
    inject_hparams,
    sample_hparams,
)

# -- the algorithm ----------------------------------------------------------------------------


def _same_dtype(new: Any, old: Any) -> Any:
    new, dtype = jnp.asarray(new), jnp.asarray(old).dtype
    return new if new.dtype == dtype and not new.weak_type else new.astype(dtype)


def _tree_take(tree: Any, index: jax.Array) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


_take = jax.jit(_tree_take)  # one compiled gather per tree structure, not one per leaf


class PBT:
    """Population-based training (Jaderberg et al. 2017) of the user's own training step.

    Args:
      train_step: ``train_step(state, batch, hparams) -> state`` for one member; ``hparams``
        is ``{name: scalar}``. It must return the state in the structure it received.
      eval_fn: ``eval_fn(state) -> score`` for one member, for example the validation
        accuracy (larger is better unless ``maximize=False``); a function with two required
        positional parameters is called as ``eval_fn(state, hparams)``.
      space: ``{name: LogUniform | Uniform | Choice}``, the hyperparameters and where they live.
      population_size: members trained in parallel (``P``).
      ready: training steps between two evaluations (exploit and explore follow each one).
      batch_fn: ``batch_fn(key) -> batch``, called per member and step inside the compiled
        loop (see :func:`sample_batches`); by default the batch is the key itself.
      maximize: whether larger scores are better.
      exploit: ``"truncation"`` (the bottom ``quantile`` copies a random member of the top
        ``quantile``) or ``"none"`` (random search: hyperparameters stay as sampled).
      quantile: the fraction of the population replaced at each exploit, in ``(0, 0.5]``.
      explore: ``"perturb"`` (multiply by a random entry of ``perturb_factors``; a ``Choice``
        moves to a neighbouring value) or ``"resample"`` (draw again from the space).
      perturb_factors: the factors of ``"perturb"``.
      perturb_probability: the chance that each hyperparameter of an exploiting member is
        explored at all (1.0 in the paper; lower for many genes, as in architecture search).
      resample_probability: in ``"perturb"`` mode, the chance of resampling instead.
      inject: write the hyperparameters into any ``optax.inject_hyperparams`` state in the
        member's state before each step (see :func:`inject_hparams`).

    Example:
      >>> from evojax_nets.search import LogUniform
      >>> pbt = PBT(lambda s, b, h: s - h["lr"] * s, lambda s: -jnp.abs(s),
      ...           {"lr": LogUniform(1e-3, 0.5)}, population_size=4, ready=5)
      >>> result = pbt.fit(jax.random.key(0), lambda key: jnp.float32(1.0), num_steps=20)
      >>> result.schedule["lr"].shape
      (4,)
    """

    def __init__(
        self,
        train_step: Callable[[State, Any, HParams], State],
        eval_fn: Callable[..., jax.Array],
        space: SearchSpace,
        population_size: int,
        *,
        ready: int,
        batch_fn: Callable[[jax.Array], Any] | None = None,
        maximize: bool = True,
        exploit: Literal["truncation", "none"] = "truncation",
        quantile: float = 0.25,
        explore: Literal["perturb", "resample"] = "perturb",
        perturb_factors: Sequence[float] = (0.8, 1.2),
        perturb_probability: float = 1.0,
        resample_probability: float = 0.0,
        inject: bool = True,
    ):
        if not callable(train_step):
            raise TypeError(f"train_step must be callable, got {train_step!r}")
        if not callable(eval_fn):
            raise TypeError(f"eval_fn must be callable, got {eval_fn!r}")
        self.space = check_space(space)
        if (
            not isinstance(population_size, int | np.integer)
            or isinstance(population_size, bool)
            or population_size < 2
        ):
            raise ValueError(f"population_size must be an int >= 2, got {population_size!r}")
        if not isinstance(ready, int | np.integer) or isinstance(ready, bool) or ready < 1:
            raise ValueError(f"ready must be a positive int (training steps), got {ready!r}")
        if exploit not in ("truncation", "none"):
            raise ValueError(f"exploit must be 'truncation' or 'none', got {exploit!r}")
        if explore not in ("perturb", "resample"):
            raise ValueError(f"explore must be 'perturb' or 'resample', got {explore!r}")
        if not (isinstance(quantile, int | float) and 0.0 < quantile <= 0.5):
            raise ValueError(f"quantile must be in (0, 0.5], got {quantile!r}")
        factors = tuple(perturb_factors)
        if not factors or not all(
            isinstance(f, int | float) and math.isfinite(f) and f > 0 for f in factors
        ):
            raise ValueError(
                f"perturb_factors must be a non-empty sequence of positive numbers, got {factors}"
            )
        for name, p in (
            ("perturb_probability", perturb_probability),
            ("resample_probability", resample_probability),
        ):
            if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {p!r}")
        self.train_step = train_step
        self.eval_fn = eval_fn
        self._eval_takes_hparams = num_positional(eval_fn) >= 2
        self.population_size = int(population_size)
        self.ready = int(ready)
        self.batch_fn = batch_fn if batch_fn is not None else (lambda key: key)
        self.maximize = bool(maximize)
        self.exploit_mode = exploit
        self.quantile = float(quantile)
        self.num_replaced = max(1, int(self.quantile * self.population_size))
        self.explore_mode = explore
        self.perturb_factors = factors
        self.perturb_probability = float(perturb_probability)
        self.resample_probability = 1.0 if explore == "resample" else float(resample_probability)
        self.inject = bool(inject)
        self._init_jits: dict[Callable, Callable] = {}
        self._init_from_state = jax.jit(lambda k, s, h: self._init_fn(k, None, s, h))
        self._template: Any = None
        self.fingerprint_extra: dict[str, Any] = {}
        """More configuration a checkpoint must match (set by searches built on PBT)."""
        self.program = Program(
            init=self._no_init,
            step=self._step,
            counter=lambda s: s.round,
            counter_name="round",
        )
        self.runner = Runner(self.program, owner=self)

    @property
    def num_traces(self) -> int:
        """Chunk executables compiled so far (a test checks it stays at one)."""
        return self.runner.compile_count

    # -- per-member pieces, vmapped here and only here --------------------------------------

    def _member_step(self, member: State, key: jax.Array, hp: HParams) -> State:
        batch = self.batch_fn(key)
        if self.inject:
            member = inject_hparams(member, hp)
        new = self.train_step(member, batch, hp)
        # Keep the carried types fixed (a weak-typed or promoted leaf would break the scan).
        return jax.tree.map(_same_dtype, new, member)

    def _member_eval(self, member: State, hp: HParams) -> jax.Array:
        score = self.eval_fn(member, hp) if self._eval_takes_hparams else self.eval_fn(member)
        return jnp.asarray(score, jnp.float32)

    def evaluate(self, members: Any, hparams: HParams) -> jax.Array:
        """``(P,)`` scores of the stacked members (vmapped ``eval_fn``)."""
        return jax.vmap(self._member_eval)(members, hparams)

    def train(self, key: jax.Array, members: Any, hparams: HParams) -> Any:
        """One training step of every member (vmapped ``train_step``, one key per member)."""
        keys = jax.random.split(key, self.population_size)
        return jax.vmap(self._member_step)(members, keys, hparams)

    # -- exploit and explore ----------------------------------------------------------------

    def exploit(self, key: jax.Array, scores: jax.Array) -> jax.Array:
        """``(P,)`` parents: the bottom quantile points at random members of the top quantile,
        every other member at itself. NaN and infinite scores rank worst."""
        ident = jnp.arange(self.population_size)
        if self.exploit_mode == "none":
            return ident
        q = self.num_replaced
        order, donors = truncation_select(key, rank_finite(scores, self.maximize), q, q)
        return ident.at[order[-q:]].set(donors)

    def explore(self, key: jax.Array, hparams: HParams, mask: jax.Array) -> HParams:
        """Perturb (or resample) the hyperparameters of the members in ``mask``; the others
        keep theirs. Every result lies inside the space."""
        factors = jnp.asarray(self.perturb_factors, jnp.float32)
        out = {}
        keys = jax.random.split(key, len(self.space))
        for (name, space), k in zip(sorted(self.space.items()), keys, strict=True):
            k_do, k_res, k_pert, k_new = jax.random.split(k, 4)
            v = hparams[name]
            shape = v.shape
            perturbed = space.perturb(k_pert, v, factors).astype(space.dtype)
            fresh = space.sample(k_new, shape).astype(space.dtype)
            resample = jax.random.bernoulli(k_res, self.resample_probability, shape)
            change = mask & jax.random.bernoulli(k_do, self.perturb_probability, shape)
            if self.explore_mode == "resample":
                change = mask
            new = jnp.where(resample, fresh, perturbed)
            out[name] = jnp.where(change, new, v).astype(space.dtype)
        return out

    def exploit_explore(self, key: jax.Array, state: PBTState) -> tuple[PBTState, jax.Array]:
        """Exploit on ``state.scores`` and explore; returns the new state and the parents.

        The copy takes the member's whole state (parameters, optimizer state, anything else)
        and its hyperparameters from the same parent, in one gather.
        """
        k_exploit, k_explore = jax.random.split(key)
        parents = self.exploit(k_exploit, state.scores)
        members = _tree_take(state.members, parents)
        hparams = _tree_take(state.hparams, parents)
        copied = parents != jnp.arange(self.population_size)
        hparams = self.explore(k_explore, hparams, copied)
        if self.inject:
            members = jax.vmap(inject_hparams)(members, hparams)
        scores = state.scores[parents]
        return state.replace(members=members, hparams=hparams, scores=scores), parents

    # -- init -------------------------------------------------------------------------------

    def _init_fn(
        self, key: jax.Array, init_fn: Callable | None, one: Any, hparams: HParams | None
    ) -> PBTState:
        k_members, k_hp, key = jax.random.split(key, 3)
        P = self.population_size
        if hparams is None:
            hparams = sample_hparams(k_hp, self.space, P)
        if init_fn is not None:
            members = jax.vmap(init_fn)(jax.random.split(k_members, P))
        else:
            members = jax.tree.map(lambda x: jnp.broadcast_to(x, (P, *jnp.shape(x))), one)
        if self.inject:
            members = jax.vmap(inject_hparams)(members, hparams)
        return canonicalize(
            PBTState(
                members=members,
                hparams=hparams,
                scores=jnp.full((P,), jnp.nan, jnp.float32),
                key=key,
                step=jnp.int32(0),
                round=jnp.int32(0),
            )
        )

    def init(
        self, key: jax.Array, init: Callable[[jax.Array], State] | State, hparams: Any = None
    ) -> PBTState:
        """The initial population.

        Args:
          key: a ``jax.random.key``.
          init: ``init(key) -> state`` (each member gets its own key: different initial
            weights), or one state that every member starts from.
          hparams: optional initial ``{name: (P,)}`` values; sampled from the space otherwise.

        Example:
          >>> from evojax_nets.search import Uniform
          >>> pbt = PBT(lambda s, b, h: s, lambda s: s, {"lr": Uniform(0.0, 1.0)}, 4, ready=1)
          >>> pbt.init(jax.random.key(0), jnp.float32(0.0)).members.shape
          (4,)
        """
        check_key(key)
        if isinstance(init, nnx.Module):
            raise TypeError(
                "init must be init(key) -> state or a state pytree; for an NNX model split it "
                "with its optimizer first: graphdef, state = nnx.split((model, optimizer)), "
                "pass state, and nnx.merge(graphdef, state) inside train_step and eval_fn"
            )
        if hparams is not None:
            hparams = check_hparams(self, hparams)
        if callable(init):
            one = jax.eval_shape(init, jax.eval_shape(lambda: jax.random.key(0)))
        else:
            one = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), init
            )
        hp_shape = hparams or jax.eval_shape(
            lambda: sample_hparams(jax.random.key(0), self.space, self.population_size)
        )
        check_member(self, one, hp_shape)
        if not callable(init):
            state = self._init_from_state(key, init, hparams)
        else:
            if init not in self._init_jits:  # one compiled init per init function
                self._init_jits[init] = jax.jit(lambda k, h: self._init_fn(k, init, None, h))
            state = self._init_jits[init](key, hparams)
        self._template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        return state

    # -- one round, chunks of rounds --------------------------------------------------------

    def round(self, state: PBTState, num_steps: jax.Array) -> tuple[PBTState, dict[str, Any]]:
        """Exploit and explore (not before the first round), train up to ``ready`` steps
        (never past ``num_steps`` in total), evaluate. Returns the state and the round's
        record."""
        key, k_ee, k_train = jax.random.split(state.key, 3)
        ident = jnp.arange(self.population_size)
        if self.exploit_mode == "none":
            new, parents = state, ident
        else:
            new, parents = jax.lax.cond(
                state.round == 0,
                lambda s: (s, ident),
                lambda s: self.exploit_explore(k_ee, s),
                state,
            )

        def step(carry: tuple[Any, jax.Array], k: jax.Array):
            members, t = carry
            members = jax.lax.cond(
                t < num_steps,
                lambda m: self.train(k, m, new.hparams),
                lambda m: m,
                members,
            )
            return (members, t + 1), None

        (members, _), _ = jax.lax.scan(
            step, (new.members, new.step), jax.random.split(k_train, self.ready)
        )
        steps_done = jnp.minimum(new.step + self.ready, num_steps)
        scores = self.evaluate(members, new.hparams)
        out = new.replace(
            members=members, scores=scores, key=key, step=steps_done, round=state.round + 1
        )
        record = {
            "step": steps_done,
            "scores": scores,
            "hparams": new.hparams,
            "parents": parents.astype(jnp.int32),
        }
        return canonicalize(out), record

    def _no_init(self, key: jax.Array, params: Any) -> PBTState:
        raise TypeError("a PBT population starts from PBT.init(key, init): it needs the init")

    def _step(
        self, state: PBTState, params: dict[str, jax.Array], inputs: Any = None
    ) -> tuple[PBTState, dict[str, jax.Array]]:
        """One round as a program step; ``params["until"]`` caps the training steps."""
        state, record = self.round(state, params["until"])
        scores = record["scores"]
        metrics = {
            "step": record["step"],
            "best_score": scores[jnp.argmax(rank_finite(scores, self.maximize))],
            "median_score": jnp.nanmedian(scores),
            "scores": scores,
            "parents": record["parents"],
        }
        metrics.update({f"hparams/{k}": v for k, v in record["hparams"].items()})
        return state, metrics

    def run(
        self,
        state: PBTState,
        num_steps: int,
        *,
        chunk_size: int | None = None,
        callbacks: Iterable[Callback] = (),
        history: PBTHistory | None = None,
        elapsed: float = 0.0,
    ) -> tuple[PBTState, PBTHistory]:
        """Train every member ``num_steps`` more steps, with exploit and explore every
        ``ready`` steps, in compiled chunks of ``chunk_size`` rounds (the one
        :class:`~evojax_nets.runner.Runner`: callbacks, checkpoints and metric files as for
        evolution; their rows are rounds).

        Returns the final state and the history (appended to ``history`` if given).

        Example:
          >>> from evojax_nets.search import Uniform
          >>> pbt = PBT(lambda s, b, h: s + h["lr"], lambda s: s, {"lr": Uniform(0.0, 1.0)},
          ...           population_size=4, ready=2)
          >>> state, hist = pbt.run(pbt.init(jax.random.key(0), jnp.float32(0.0)), 6)
          >>> hist.steps
          [2, 4, 6]
        """
        if not isinstance(num_steps, int | np.integer) or isinstance(num_steps, bool):
            raise TypeError(f"num_steps must be an int, got {num_steps!r}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be positive, got {num_steps}")
        if self.ready > num_steps:
            raise ValueError(
                f"ready={self.ready} is longer than the run (num_steps={num_steps}): no member "
                f"would ever be evaluated, exploited or explored; use ready <= {num_steps} "
                f"(for example ready={max(1, num_steps // 10)})"
            )
        if not isinstance(state, PBTState):
            raise TypeError(f"state must be a PBTState (from PBT.init), got {type(state).__name__}")
        num_rounds = -(-int(num_steps) // self.ready)
        if chunk_size is None:
            chunk_size = min(num_rounds, 25)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
            raise ValueError(f"chunk_size must be a positive int (rounds), got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int (rounds), got {chunk_size!r}")
        if history is None:
            history = self.history()
        params = {"until": jnp.int32(int(state.step) + int(num_steps))}
        state, rows = self.runner.run(
            state,
            params,
            num_rounds,
            chunk_size=int(chunk_size),
            callbacks=callbacks,
            elapsed=elapsed,
        )
        history.extend(rows.rows)
        return state, history

    def history(self, rows: Iterable[dict] = ()) -> PBTHistory:
        """An empty :class:`PBTHistory`, or one rebuilt from runner rows (for example the
        history a checkpoint hands back on resume)."""
        history = PBTHistory(space=dict(self.space), maximize=self.maximize)
        history.extend(list(rows))
        return history

    # -- for checkpoints ---------------------------------------------------------------------

    def abstract_state(self, init: Callable[[jax.Array], State] | None = None) -> Any:
        """The population state's shapes and dtypes: from ``init(key) -> state`` when given
        (remembered), else from the last :meth:`init`."""
        if init is not None:
            key = jax.eval_shape(lambda: jax.random.key(0))
            self._template = jax.eval_shape(lambda k: self._init_fn(k, init, None, None), key)
        if self._template is None:
            raise ValueError(
                "the population's shapes are not known yet: call pbt.init(key, init) first "
                "(it defines them), then resume"
            )
        return self._template

    def step_count(self, state: PBTState) -> int:
        return int(state.round)

    def fingerprint(self) -> dict[str, Any]:
        """The configuration a checkpoint must match to be resumed (JSON-serialisable)."""
        return {
            "kind": "pbt",
            "train_step": getattr(self.train_step, "__qualname__", repr(self.train_step)),
            "eval_fn": getattr(self.eval_fn, "__qualname__", repr(self.eval_fn)),
            "space": {k: repr(v) for k, v in sorted(self.space.items())},
            "population_size": self.population_size,
            "ready": self.ready,
            "maximize": self.maximize,
            "exploit": self.exploit_mode,
            "quantile": self.quantile,
            "explore": self.explore_mode,
            "perturb_factors": list(self.perturb_factors),
            "perturb_probability": self.perturb_probability,
            "resample_probability": self.resample_probability,
            "inject": self.inject,
            **self.fingerprint_extra,
        }

    # -- results ----------------------------------------------------------------------------

    def best_index(self, state: PBTState) -> int:
        """The slot of the best member by its last score (NaN ranks worst)."""
        s = np.asarray(state.scores, np.float64)
        s = s if self.maximize else -s
        return int(np.argmax(np.where(np.isfinite(s), s, -np.inf)))

    def member(self, state: PBTState, index: int) -> State:
        """Member ``index``'s state in the user's structure."""
        return _take(state.members, jnp.int32(index))

    def result(self, state: PBTState, history: PBTHistory, index: int | None = None) -> PBTResult:
        """The best member (or member ``index``), its final hyperparameters and the schedule
        its lineage followed."""
        if not history.steps:
            raise ValueError("the history is empty: run at least one round first")
        b = self.best_index(state) if index is None else int(index)
        return PBTResult(
            state=self.member(state, b),
            index=b,
            score=float(np.asarray(state.scores)[b]),
            hparams={k: np.asarray(v)[b].item() for k, v in jax.device_get(state.hparams).items()},
            schedule=history.schedule(b),
            steps=np.asarray(history.steps),
            lineage=history.lineage(b),
            history=history,
        )

    def fit(
        self,
        key: jax.Array,
        init: Callable[[jax.Array], State] | State,
        num_steps: int,
        *,
        chunk_size: int | None = None,
        callbacks: Iterable[Callback] = (),
    ) -> PBTResult:
        """``init``, ``run`` and ``result`` in one call (see the class example)."""
        state = self.init(key, init)
        state, history = self.run(state, num_steps, chunk_size=chunk_size, callbacks=callbacks)
        return self.result(state, history)
