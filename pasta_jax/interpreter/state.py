"""The fixed-shape decoder state of a batch of requests, and their inputs.

Shapes: B requests, S thread slots (slot 0 = main thread), C cache entries,
P = max_threads + 1 thread ids (0 = main, k = the k-th promise's async thread),
L = log entries (every sampled token), V vocabulary.

Invariants the interpreter relies on:

* Cache entries are appended in generation order: request b's next entry is
  `ptr[b]`; a round writes the tokens of all slots that feed, consecutively in slot
  order. Entries >= ptr are never visible (entry_thread -1 -> segment 0).
* The main clock of request b, `clock[b]`, is the number of main-thread entries
  written (prompt included). A main entry's `entry_clock` is the clock when it was
  written; an async entry's `entry_clock` is its thread's fork clock (the clock of
  the promise's length token). With `join[b, k]` the clock of the `<sync/>` that
  joined thread k (NEVER before), this is exactly the metadata of
  `masks.visibility_mask`: anchor = entry_clock, visible_from = entry_clock for main
  entries and join[thread] for async ones, order = entry index.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

RUNNING, DONE, BUDGET, CACHE_FULL = 0, 1, 2, 3
STATUS_NAMES = {RUNNING: 'running', DONE: 'done', BUDGET: 'budget', CACHE_FULL: 'cache_full'}
NO_THREAD = -1
NOT_FORCED = -1


@flax.struct.dataclass
class State:
  """The whole generation state of a batch of requests (all jax arrays)."""

  cache: Any                 # model KV cache, [B, C, ...] per layer
  entry_thread: jax.Array    # [B, C] thread of each cache entry, -1 = empty
  entry_clock: jax.Array     # [B, C] anchor clock of each entry
  ptr: jax.Array             # [B] next free cache entry
  clock: jax.Array           # [B] main clock (main entries written)
  fork: jax.Array            # [B, P] fork clock of each thread
  start_pos: jax.Array       # [B, P] position of each thread's <async>
  join: jax.Array            # [B, P] clock of the joining <sync/>, NEVER before
  thread_done: jax.Array     # [B, P] the thread sampled </async>
  n_threads: jax.Array       # [B] promises completed (threads created)
  n_started: jax.Array       # [B] threads that got a slot
  slot_thread: jax.Array     # [B, S] thread in each slot, -1 = free
  slot_token: jax.Array      # [B, S] the slot's pending input token
  slot_pos: jax.Array        # [B, S] position of the pending token
  slot_ready: jax.Array      # [B, S] the slot has a pending token
  slot_count: jax.Array      # [B, S] tokens the slot's thread has sampled
  in_topic: jax.Array        # [B] the main thread is inside a promise tag
  topic_len: jax.Array       # [B] topic tokens so far
  main_done: jax.Array       # [B] the main thread sampled EOS
  status: jax.Array          # [B] RUNNING / DONE / BUDGET / CACHE_FULL
  steps: jax.Array           # [B] decode rounds used (prefill = round 1)
  round: jax.Array           # [] the current round
  out_token: jax.Array       # [B, L] sampled tokens in sampling order
  out_thread: jax.Array      # [B, L] their threads
  out_round: jax.Array       # [B, L] the round each was sampled in
  out_len: jax.Array         # [B]
  out_logits: jax.Array      # [B, L, V] (record_logits) or [B, 0, V]

  @property
  def capacity(self) -> int:
    """C, the cache entries of this state (a stage of `Engine.decode`, or cache_size)."""
    return self.entry_thread.shape[1]


@flax.struct.dataclass
class Requests:
  """Per-request inputs that do not change during generation."""

  keys: jax.Array            # [B] PRNG keys
  temperature: jax.Array     # [B] 0 = greedy
  top_p: jax.Array           # [B]
  forced: jax.Array          # [B, P, F] tokens to force per thread (-1 = sample)
  logit_bias: jax.Array      # [B, V] added to the logits before the grammar mask
  # Whether some request samples (temperature > 0). Static: part of the pytree's
  # structure, so an all-greedy batch runs a program without the random draws
  # and without a conditional on the temperatures (on an accelerator, a
  # conditional waits for its predicate on the host every round).
  draws: bool = flax.struct.field(pytree_node=False, default=True)


def make_requests(seeds: Any, *, temperature: Any, top_p: Any, forced: Any,
                  logit_bias: Any) -> Requests:
  """`Requests` of len(seeds) requests: request i samples with the PRNG key of
  `seeds[i]` (uint32), `temperature` and `top_p` (one value, or one per
  request), `forced` [B, P, F] and `logit_bias` [V] (added to every request's logits).
  `draws` is set from the host's temperatures (`Requests.draws`)."""
  n = len(seeds)
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
  return Requests(
      keys=keys, temperature=jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (n,)),
      top_p=jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), (n,)),
      forced=jnp.asarray(forced, jnp.int32),
      logit_bias=jnp.broadcast_to(jnp.asarray(logit_bias, jnp.float32),
                                  (n, np.shape(logit_bias)[-1])),
      draws=bool(np.any(np.asarray(temperature) > 0)))


def no_forcing(batch: int, num_thread_ids: int) -> np.ndarray:
  """`Requests.forced` that forces nothing: [batch, num_thread_ids, 1] of NOT_FORCED."""
  return np.full((batch, num_thread_ids, 1), NOT_FORCED, np.int32)


def scatter(array_BN: jax.Array, index_BS: jax.Array, values_BS: jax.Array) -> jax.Array:
  """array[b, index[b, s]] = values[b, s]; indices outside the array are dropped."""
  return jax.vmap(lambda a, i, v: a.at[i].set(v.astype(a.dtype), mode='drop'))(
      array_BN, index_BS, values_BS)
