"""What every round does with its samples, PASTA or sequential: teacher forcing, and
the log of sampled tokens (the timeline and, with record_logits, their logits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.interpreter.state import NOT_FORCED, Requests, State, scatter


def force(token_BS: jax.Array, requests: Requests, count_BS: jax.Array,
          thread_BS: jax.Array | None = None) -> jax.Array:
  """`token_BS` with each slot's forced token where its thread has one (tests,
  replay): `requests.forced[b, thread, count]`, count the tokens the thread has
  sampled. `thread_BS` None: every slot runs the main thread (sequential mode),
  read without the thread gather."""
  forced_len = requests.forced.shape[-1]
  index_BS = jnp.minimum(count_BS, forced_len - 1)
  if thread_BS is None:
    forced = jnp.take_along_axis(requests.forced[:, 0, :], index_BS, axis=1)
  else:
    b = token_BS.shape[0]
    forced = requests.forced[jnp.arange(b)[:, None], thread_BS, index_BS]
  forced = jnp.where(count_BS < forced_len, forced, NOT_FORCED)
  return jnp.where(forced != NOT_FORCED, forced, token_BS)


def log(state: State, config: InterpreterConfig, got_BS: jax.Array, token_BS: jax.Array,
        thread_BS: jax.Array, logits_BSV: jax.Array | None) -> dict[str, jax.Array]:
  """The `State.out_*` fields after a round appends the tokens of the slots that
  `got` one, in slot order (`logits_BSV`: their logits, record_logits only)."""
  b, s = got_BS.shape
  if s == 1:  # one slot (sequential mode): its token goes to entry out_len
    log_index = jnp.where(got_BS, state.out_len[:, None], config.log_size)
  else:
    log_index = jnp.where(got_BS, state.out_len[:, None] + jnp.cumsum(got_BS, axis=1) - 1,
                          config.log_size)
  out_logits = state.out_logits
  if config.record_logits:
    out_logits = jax.vmap(lambda o, i, u: o.at[i].set(u, mode='drop'))(
        out_logits, log_index, logits_BSV.astype(jnp.float32))
  return dict(
      out_token=scatter(state.out_token, log_index, token_BS),
      out_thread=scatter(state.out_thread, log_index, thread_BS),
      out_round=scatter(state.out_round, log_index, jnp.broadcast_to(state.round, (b, s))),
      out_len=state.out_len + (got_BS[:, 0] if s == 1 else got_BS.sum(axis=1)),
      out_logits=out_logits)
