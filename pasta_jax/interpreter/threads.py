"""The thread state machine of a PASTA round (docs/design.md sections 2 and 3): queued
threads take slots, which slots feed, `<sync/>` joins, and what the sampled tokens do
(promises open and close, threads fork and finish, requests end).

Invariants (beside those of `state`):

* A slot feeds its pending token in a round iff it has one, its request is
  running, and (main slot) the token is not a `<sync/>` waiting for outstanding
  threads. The token sampled from a slot's logits is the slot's next pending
  token, except right after an async slot fed `</async>`: that slot is released.
* Thread k forks when the main thread samples its length token in round r; it
  feeds `<async>` in the first round > r that has a free slot (FIFO over
  promises), at position p + 1 where p is the length token's position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pasta_jax import masks
from pasta_jax import tokens as tokens_lib
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter import record
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.interpreter.state import DONE, NO_THREAD, RUNNING, Requests, State


def start_queued(state: State, control: tokens_lib.ControlTokens) -> State:
  """Gives free async slots to queued threads, oldest promise first."""
  b, s = state.slot_thread.shape
  free = (state.slot_thread == NO_THREAD) & (jnp.arange(s) > 0)
  queued = state.n_threads - state.n_started
  rank = jnp.cumsum(free, axis=1) - 1
  take = free & (rank < queued[:, None]) & (state.status == RUNNING)[:, None]
  thread = state.n_started[:, None] + 1 + rank
  start = jnp.take_along_axis(state.start_pos, jnp.where(take, thread, 0), axis=1)
  return state.replace(
      slot_thread=jnp.where(take, thread, state.slot_thread).astype(jnp.int32),
      slot_token=jnp.where(take, control.async_open, state.slot_token),
      slot_pos=jnp.where(take, start, state.slot_pos),
      slot_ready=state.slot_ready | take,
      slot_count=jnp.where(take, 0, state.slot_count),
      n_started=state.n_started + take.sum(axis=1))


def sync_waits(state: State, control: tokens_lib.ControlTokens,
               thread_ids_P: jax.Array) -> jax.Array:
  """bool [B]: the main thread's pending token is a `<sync/>` that waits for
  outstanding threads (then the main slot does not feed)."""
  outstanding = jnp.any((thread_ids_P >= 1) & (thread_ids_P <= state.n_threads[:, None])
                        & ~state.thread_done, axis=1)
  return (state.slot_token[:, 0] == control.sync) & outstanding


def join(state: State, control: tokens_lib.ControlTokens, thread_ids_P: jax.Array,
         main_fed_B: jax.Array) -> jax.Array:
  """int [B, P]: the join clocks after the round: a `<sync/>` fed now joins every
  thread created so far at its own clock."""
  joins = main_fed_B & (state.slot_token[:, 0] == control.sync)
  newly_joined = (joins[:, None] & (thread_ids_P >= 1)
                  & (thread_ids_P <= state.n_threads[:, None]) & (state.join == masks.NEVER))
  return jnp.where(newly_joined, state.clock[:, None], state.join)


def advance(state: State, token_BS: jax.Array, logits_BSV: jax.Array | None,
            fed_BS: jax.Array, fed_token_BS: jax.Array, requests: Requests, *,
            config: InterpreterConfig, tables: grammar.TokenTables) -> State:
  """The state machine after a round: `token_BS` sampled per slot (read where a
  slot fed), `logits_BSV` their logits (record_logits; else None)."""
  c = tables.control
  b, s = fed_BS.shape
  is_main = jnp.broadcast_to(jnp.arange(s) == 0, (b, s))
  slot_thread = jnp.maximum(state.slot_thread, 0)
  # Teacher forcing (tests, replay): the forced token of the slot's thread.
  token = record.force(token_BS, requests, state.slot_count, slot_thread)

  # An async slot that just fed </async> is released; its sample means nothing.
  release = fed_BS & ~is_main & (fed_token_BS == c.async_close)
  got = fed_BS & ~release
  length = jnp.asarray(tables.length)

  # Main thread.
  main_got, main_token = got[:, 0], token[:, 0]
  opens = main_got & ~state.in_topic & (main_token == c.promise)
  closes = main_got & state.in_topic & (length[main_token] >= 0)
  ends = main_got & (main_token == c.eos)
  main_fed_token = fed_token_BS[:, 0]
  # The positions reserved for a promise's thread: the rule of the training layout.
  reserve = config.position_strategy.reserved(length[main_fed_token], 0)
  jump = jnp.where(length[main_fed_token] >= 0, reserve, 0)
  main_pos = jnp.where(fed_BS[:, 0], state.slot_pos[:, 0] + 1 + jump, state.slot_pos[:, 0])
  clock = state.clock + fed_BS[:, 0]
  # A closed promise creates thread k; it forks at the length token's clock.
  # (Selects over the P thread ids rather than scatters: on an accelerator
  # each scatter is a kernel launch of its own.)
  thread_ids = jnp.arange(config.max_threads + 1)
  created = closes[:, None] & (thread_ids == (state.n_threads + 1)[:, None])
  fork = jnp.where(created, clock[:, None], state.fork)
  start_pos = jnp.where(created, (main_pos + 1)[:, None], state.start_pos)

  # Async threads: </async> sampled -> the thread is done (fed next round).
  ended = got & ~is_main & (token == c.async_close)
  thread_done = state.thread_done | jnp.any(
      ended[:, :, None] & (state.slot_thread[:, :, None] == thread_ids), axis=1)

  slot_pos = jnp.where(is_main, main_pos[:, None],
                       jnp.where(fed_BS, state.slot_pos + 1, state.slot_pos))
  slot_ready = jnp.where(release, False, jnp.where(got, ~(is_main & ends[:, None]),
                                                   state.slot_ready))
  n_threads = state.n_threads + closes

  # Log every meaningful sample in slot order.
  logged = record.log(state, config, got, token, state.slot_thread, logits_BSV)

  main_done = state.main_done | ends
  all_joined = ~jnp.any((thread_ids >= 1) & (thread_ids <= n_threads[:, None])
                        & ~thread_done, axis=1)
  finished = (state.status == RUNNING) & main_done & all_joined
  return state.replace(
      clock=clock, fork=fork, start_pos=start_pos, thread_done=thread_done,
      n_threads=n_threads,
      slot_thread=jnp.where(release, NO_THREAD, state.slot_thread),
      slot_token=jnp.where(got, token, state.slot_token), slot_pos=slot_pos,
      slot_ready=slot_ready, slot_count=state.slot_count + got,
      in_topic=(state.in_topic | opens) & ~closes,
      topic_len=jnp.where(opens, 0, state.topic_len + (main_got & state.in_topic & ~closes)),
      main_done=main_done,
      status=jnp.where(finished, DONE, state.status),
      steps=jnp.where(finished | (state.status == RUNNING), state.round, state.steps),
      **logged)
