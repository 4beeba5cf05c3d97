"""The jittable core of the PASTA interpreter (docs/design.md sections 2, 3 and 5).

Everything a generation needs lives in one fixed-shape `state.State`; `prefill`
writes the prompts and samples each request's first token, `step` runs one decode
round for every request (`round`), and `generate` runs the rounds inside one
`lax.while_loop`, so the host never looks at a token between rounds (and, with
`rounds_per_check`, tests the loop's condition every few rounds only). The cache and
clock invariants are written in `state`, the thread state machine's in `threads`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pasta_jax import masks
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter import layouts
from pasta_jax.interpreter import round as round_lib
from pasta_jax.interpreter import threads
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.interpreter.state import BUDGET, NO_THREAD, RUNNING, Requests, State
from pasta_jax.models import cache as cache_lib
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig

# A status only `Engine.step_if` sets, and resets in the same round: the request
# is not RUNNING, so the round leaves it alone.
_HELD = -1


def decoding_model(model_config: TransformerConfig) -> transformer.Transformer:
  """The model the interpreter runs: `model_config` without remat. Remat is a
  training setting (decoding has no backward pass), and under it the model's
  Python arguments (`write_cache`) would be traced."""
  return transformer.Transformer(dataclasses.replace(model_config, remat=False))


class Engine:
  """Pure functions over `State` for one model, vocabulary and config."""

  def __init__(self, model: nn.Module, config: InterpreterConfig,
               tables: grammar.TokenTables):
    self.model, self.config, self.tables = model, config, tables
    self.num_thread_ids = config.max_threads + 1  # P: 0 = main, k = the k-th promise
    self.round = round_lib.Round(model, config, tables)

  @property
  def widths(self) -> tuple[int, ...]:
    """Query widths a PASTA round is compiled for (`round.Round.widths`)."""
    return self.round.widths

  @property
  def rounds_per_check(self) -> int:
    """Rounds per test of the decode loop's condition
    (`InterpreterConfig.rounds_per_check`, resolved for the default backend)."""
    return self.config.for_backend(jax.default_backend()).rounds_per_check

  # -- construction ----------------------------------------------------------

  def new_cache(self, batch: int) -> Any:
    """An empty cache of `cache_size` entries for `batch` requests (`generate`'s)."""
    return cache_lib.init_cache(self.model.config, batch, self.config.cache_size)

  def prefill(self, params: Any, prompt_BT: jax.Array, prompt_len_B: jax.Array,
              requests: Requests, cache: Any) -> State:
    """Writes the prompts into the cache and samples each first token (round 1)."""
    cfg = self.config
    b, t = prompt_BT.shape
    # The cache may be a stage smaller than cache_size (see `decode`).
    c_size = cache_lib.cache_length(cache)
    s, p = cfg.slots, self.num_thread_ids
    index = jnp.arange(t, dtype=jnp.int32)
    valid_BT = index[None, :] < prompt_len_B[:, None]
    positions = jnp.broadcast_to(index, (b, t))
    meta_q = masks.AttentionMeta(
        thread=jnp.zeros((b, t), jnp.int32), anchor=positions,
        visible_from=positions, order=positions, segment=valid_BT.astype(jnp.int32))
    # The prompt attends to itself only ([T, T], not [T, cache]): the model reads an
    # empty cache and returns the prompt's entries, written at 0..T-1.
    entry = jnp.arange(c_size, dtype=jnp.int32)
    written = entry[None, :] < prompt_len_B[:, None]
    entry_thread = jnp.where(written, 0, NO_THREAD).astype(jnp.int32)
    entry_clock = jnp.broadcast_to(entry, (b, c_size))
    empty = cache_lib.truncate_cache(cache, 0)
    logits, entries = self.model.apply(
        {'params': params}, prompt_BT, positions, (meta_q, meta_q), cache=empty,
        logits_index=(prompt_len_B - 1)[:, None], write_cache=False)
    cache = cache_lib.write_entries(cache, entries, jnp.broadcast_to(index, (b, t)))
    is_main = jnp.arange(s) == 0
    state = State(
        cache=cache, entry_thread=entry_thread, entry_clock=entry_clock,
        ptr=prompt_len_B.astype(jnp.int32),
        # The last prompt token acts as the main slot's fed token of round 1.
        clock=(prompt_len_B - 1).astype(jnp.int32),
        fork=jnp.zeros((b, p), jnp.int32), start_pos=jnp.zeros((b, p), jnp.int32),
        join=jnp.full((b, p), masks.NEVER, jnp.int32),
        thread_done=jnp.zeros((b, p), bool),
        n_threads=jnp.zeros(b, jnp.int32), n_started=jnp.zeros(b, jnp.int32),
        slot_thread=jnp.broadcast_to(jnp.where(is_main, 0, NO_THREAD), (b, s)).astype(jnp.int32),
        slot_token=jnp.zeros((b, s), jnp.int32),
        slot_pos=jnp.zeros((b, s), jnp.int32).at[:, 0].set(prompt_len_B - 1),
        slot_ready=jnp.zeros((b, s), bool),
        slot_count=jnp.zeros((b, s), jnp.int32),
        in_topic=jnp.zeros(b, bool), topic_len=jnp.zeros(b, jnp.int32),
        main_done=jnp.zeros(b, bool), status=jnp.full(b, RUNNING, jnp.int32),
        steps=jnp.zeros(b, jnp.int32), round=jnp.array(1, jnp.int32),
        out_token=jnp.zeros((b, cfg.log_size), jnp.int32),
        out_thread=jnp.zeros((b, cfg.log_size), jnp.int32),
        out_round=jnp.zeros((b, cfg.log_size), jnp.int32),
        out_len=jnp.zeros(b, jnp.int32),
        out_logits=jnp.zeros((b, cfg.log_size if cfg.record_logits else 0,
                              self.tables.vocab_size), jnp.float32))
    fed = jnp.broadcast_to(is_main, (b, s))
    fed_token = jnp.zeros((b, s), jnp.int32).at[:, 0].set(
        jnp.take_along_axis(prompt_BT, (prompt_len_B - 1)[:, None], 1)[:, 0])
    main = jnp.zeros((b, 1), jnp.int32)
    token = jnp.zeros((b, s), jnp.int32).at[:, :1].set(
        self.round.sample(state, logits, main, requests))
    full_logits = None
    if cfg.record_logits:
      full_logits = jnp.zeros((b, s, logits.shape[-1]), logits.dtype).at[:, 0].set(
          logits[:, 0])
    return threads.advance(state, token, full_logits, fed, fed_token, requests,
                           config=cfg, tables=self.tables)

  # -- one round -------------------------------------------------------------

  def step(self, params: Any, state: State, requests: Requests,
           hoisted: Any | None = None) -> State:
    """One decode round for every running request (`round.Round`).

    `hoisted`: optional `hoist(params)`, the decode loop's weight layouts
    (read as they are stored by the round's model, `Round.model_for`).
    """
    state = state.replace(round=state.round + 1)
    if self.config.sequential:
      return self.round.sequential(params, hoisted, state, requests)
    return self.round.pasta(params, hoisted, state, requests)

  def step_if(self, go: jax.Array, params: Any, state: State, requests: Requests,
              hoisted: Any | None = None) -> State:
    """`step` where the bool scalar `go` holds; else `state` unchanged, without a
    conditional (on a GPU a conditional waits for its predicate on the host).

    A round changes only requests whose status is RUNNING (every change of
    `round.Round` and `threads` is masked by it: they feed no slot, write no
    cache entry, log nothing and keep their status and steps) and the round
    counter. So the round runs with every request HELD, then their statuses
    and the counter are put back.
    """
    status = state.status
    held = state.replace(status=jnp.where(go, status, _HELD),
                         round=state.round - (~go).astype(jnp.int32))
    state = self.step(params, held, requests, hoisted)
    return state.replace(status=jnp.where(go, state.status, status))

  # -- the whole generation --------------------------------------------------

  def hoist(self, params: Any,
            transpose: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None
            ) -> Any:
    """The decode loop's copies of `params` in its layouts (`layouts`, at the
    widest round); `step(params, state, requests, hoisted=...)` and `decode`
    read them. `transpose(x, perm)` makes them (see `layouts.hoist`)."""
    return layouts.hoist(params, self.round.layouts(max(self.widths)), transpose)

  def generate(self, params: Any, prompt_BT: jax.Array, prompt_len_B: jax.Array,
               requests: Requests, cache: Any, hoisted: Any | None = None) -> State:
    """Prefill, then rounds until every request stops (`decode`); one program.

    `cache` is `init_cache(..., cache_size)`; the prefill writes the prompts into
    the first cache stage that holds them (see `decode`).
    """
    cache = self.first_stage(cache, prompt_BT.shape[1])
    state = self.prefill(params, prompt_BT, prompt_len_B, requests, cache)
    return self.decode(params, state, requests, hoisted)

  def first_stage(self, cache: Any, prompt_length: int) -> Any:
    """`cache` cut to the first stage that holds a prompt of `prompt_length`."""
    first = next(n for n in self.config.stages if n >= prompt_length)
    return cache_lib.truncate_cache(cache, first)

  def decode(self, params: Any, state: State, requests: Requests,
             hoisted: Any | None = None) -> State:
    """The decode rounds of a prefilled state, until every request stops.

    The rounds run in stages (`InterpreterConfig.stages`): a stage's loop holds
    a cache of its own size, so attention reads no more entries than that; it
    ends when a round might not fit, and the next stage pads the cache (once).
    Requests still running after max_steps rounds end with status BUDGET.
    `hoisted` is `hoist(params)`, made here when not given (a caller that
    decodes many times makes it once, so as not to pay the transposes again;
    docs/benchmarks.md).
    """
    cfg = self.config
    if hoisted is None:
      hoisted = self.hoist(params)
    for size in (n for n in cfg.stages if n >= state.capacity):
      state = self.decode_stage(params, self.grow(state, size), requests, hoisted)
    return state.replace(status=jnp.where(state.status == RUNNING, BUDGET, state.status))

  def decode_stage(self, params: Any, state: State, requests: Requests,
                   hoisted: Any) -> State:
    """The rounds of one cache stage (`decode`): until every request stops, the
    budget is spent or, on a stage smaller than `cache_size`, a running request
    might not fit another round. Statuses stay RUNNING at the budget."""
    cfg = self.config
    last = state.capacity == cfg.cache_size
    chunk = self.rounds_per_check

    def go(state: State) -> jax.Array:
      """Whether the loop runs another round."""
      running = state.status == RUNNING
      go = jnp.any(running) & (state.round < cfg.max_steps)
      if not last:  # every running request has room for a full round
        go &= jnp.all(~running | (state.ptr + cfg.slots <= state.capacity))
      return go

    def rounds(state: State) -> State:
      """`rounds_per_check` rounds; each changes nothing once `go` fails
      (`step_if`), so a request stops, and the stage ends, at the round they
      would with a check per round. One round in an inner loop, not several
      unrolled: the round compiles once, and with a known trip count XLA:GPU
      runs the loop without reading a condition back."""
      return jax.lax.fori_loop(
          0, chunk, lambda _, st: self.step_if(go(st), params, st, requests, hoisted), state)

    step = lambda st: self.step(params, st, requests, hoisted)
    return jax.lax.while_loop(go, step if chunk == 1 else rounds, state)

  def grow(self, state: State, size: int) -> State:
    """The state with its cache padded to `size` entries (empty, invisible)."""
    old = state.capacity
    if size == old:
      return state
    b = state.ptr.shape[0]
    return state.replace(
        cache=cache_lib.grow_cache(state.cache, size),
        entry_thread=jnp.pad(state.entry_thread, [(0, 0), (0, size - old)],
                             constant_values=NO_THREAD),
        entry_clock=jnp.concatenate(
            [state.entry_clock,
             jnp.broadcast_to(jnp.arange(old, size, dtype=jnp.int32), (b, size - old))], 1))
