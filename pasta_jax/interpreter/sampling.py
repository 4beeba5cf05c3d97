"""Sampling from masked logits: greedy, temperature, top-k, top-p, per-request RNG."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -jnp.inf


def check_settings(temperature: float | Sequence[float] = 0.0,
                   top_p: float | Sequence[float] = 1.0) -> None:
  """Raises ValueError unless every temperature is finite and >= 0 and every
  top_p is in (0, 1]. The message starts with the argument's name and value
  (`temperature=-1.0: ...`), so a command line can prefix its flag's `--`."""
  for name, values, ok, expected in (
      ('temperature', temperature, lambda t: math.isfinite(t) and t >= 0,
       'a finite number >= 0 (0 = greedy)'),
      ('top_p', top_p, lambda p: 0 < p <= 1, 'a number in (0, 1] (1 = no nucleus cut)')):
    for value in np.atleast_1d(np.asarray(values, np.float64)).ravel():
      if not ok(float(value)):
        raise ValueError(f'{name}={float(value)!r}: expected {expected}')


def sample(logits_BSV: jax.Array, allowed_BSV: jax.Array, keys_B: jax.Array,
           round_: jax.Array, temperature_B: jax.Array, top_p_B: jax.Array, *,
           top_k: int, use_top_p: bool, slot_ids_BS: jax.Array | None = None,
           draws: bool = True) -> jax.Array:
  """Next token per slot, int32 [B, S].

  Disallowed tokens get probability 0 (the grammar); temperature 0 is greedy.
  The randomness of request b, slot s at a round depends only on (keys[b], round,
  slot_ids[b, s]) (default: s), so a request samples the same tokens alone or in
  any batch, and whichever subset of its slots is sampled.

  `draws` (static; `Requests.draws`) False promises that every temperature is
  0: only the greedy tokens are computed, no random numbers and no conditional.
  True draws for every request and keeps the greedy token where the
  temperature is 0, so the tokens are the same either way.
  """
  logits = jnp.where(allowed_BSV, logits_BSV.astype(jnp.float32), NEG_INF)
  greedy = argmax(logits)
  if not draws:
    return greedy
  temperature = temperature_B[:, None]
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[..., None]
  if top_k:
    kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
    scaled = jnp.where(scaled >= kth, scaled, NEG_INF)
  if use_top_p:
    scaled = _top_p(scaled, top_p_B[:, None, None])
  ids = (jnp.broadcast_to(jnp.arange(scaled.shape[1]), scaled.shape[:2])
         if slot_ids_BS is None else slot_ids_BS)

  def one(key: jax.Array, row_SV: jax.Array, ids_S: jax.Array) -> jax.Array:
    key = jax.random.fold_in(key, round_)
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(ids_S)
    return jax.vmap(jax.random.categorical)(keys, row_SV)

  sampled = jax.vmap(one)(keys_B, scaled, ids).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled, greedy)


def argmax(x: jax.Array) -> jax.Array:
  """int32 index of the maximum over the last axis, the first one on ties, NaN
  counting as the maximum: `jnp.argmax`'s result.

  Computed as two plain reductions (the maximum, then the smallest index that
  holds it): XLA:CPU runs `jnp.argmax`'s single (value, index) reduction
  several times slower, which was a visible share of a wide decode round
  (docs/benchmarks.md).
  """
  top = jnp.max(x, axis=-1, keepdims=True)
  is_top = (x == top) | jnp.isnan(x)
  index = jnp.arange(x.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(is_top, index, x.shape[-1] - 1), axis=-1)


def _top_p(scaled: jax.Array, top_p: jax.Array) -> jax.Array:
  """Keeps the smallest set of most likely tokens whose probability reaches top_p."""
  order = jnp.argsort(-scaled, axis=-1)
  sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
  keep_sorted = before < top_p
  keep = jnp.zeros_like(keep_sorted).at[
      jnp.arange(scaled.shape[0])[:, None, None],
      jnp.arange(scaled.shape[1])[None, :, None], order].set(keep_sorted)
  return jnp.where(keep, scaled, NEG_INF)
