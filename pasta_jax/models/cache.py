"""The KV cache: per layer a fixed-length `LayerCache`, written at indices the caller picks.

    cache = init_cache(config, batch, length)      # {'layer_{i}': LayerCache}
    logits, cache = Transformer(config).apply(..., cache=cache, cache_index=index_BT)

Shape letters: B batch, S cache entries per row, T new tokens, K kv heads,
H head_dim.

Invariants (the model, the interpreter and the tests rely on them):
* The layout is fixed: k, v [B, S, K, H], positions [B, S] int32, every layer
  the same S; the logical axes are CACHE_KV_AXES and CACHE_POSITION_AXES, and
  every function here that returns a cache constrains it to them, so a cache
  keeps one sharding through prefill, decoding and growth.
* Nothing marks an entry as empty: an entry never written holds zeros, and the
  caller's mask hides it (key segment 0 in AttentionMeta terms).
* Entries go where the caller says (`cache_index` [B, T]), in any order, gaps
  allowed; an entry keeps its index for the life of the cache.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from pasta_jax.models import layers
from pasta_jax.models.config import TransformerConfig

# Logical axis names of the cache arrays.
CACHE_KV_AXES = ('batch', 'cache_length', 'kv_heads', 'head_dim')
CACHE_POSITION_AXES = ('batch', 'cache_length')

PartitionSpec = jax.sharding.PartitionSpec


@flax.struct.dataclass
class LayerCache:
  """Fixed-length KV cache of one layer.

  Attributes:
    k: [B, S, K, H] keys, RoPE already applied at their own positions.
    v: [B, S, K, H] values.
    positions: [B, S] int32 position of each stored key (used by sliding
      windows).

  Entries are written at explicit indices chosen by the caller, in any order;
  an entry never written holds zeros, and the caller's mask must hide it (in
  AttentionMeta terms: key segment 0).
  """

  k: jax.Array
  v: jax.Array
  positions: jax.Array


Cache = dict[str, LayerCache]


def write_at(cache_BS: jax.Array, index_BT: jax.Array,
             update_BT: jax.Array) -> jax.Array:
  """cache[b, index[b, t]] = update[b, t], a scatter per batch row.

  Invariants the caller keeps: the indices of one row are distinct (two writes
  to one entry in one call leave either value). An index outside [0, S) is
  dropped: the caller points writes it wants discarded (e.g. idle slots) at S.
  """
  length = cache_BS.shape[1]
  # A negative index would count from the end in jnp indexing: point it at S,
  # which mode='drop' discards, like every other index outside [0, S).
  index_BT = jnp.where(index_BT < 0, length, index_BT)
  return jax.vmap(lambda c, i, u: c.at[i].set(u, mode='drop'))(
      cache_BS, index_BT, update_BT.astype(cache_BS.dtype))


def write_layer(cache: LayerCache, index_BT: jax.Array,
                entries: LayerCache) -> LayerCache:
  """One layer's cache with `entries` ([B, T] rows) written at `index_BT`.

  The result stays in the cache's dtype and logical axes (the fixed layout).
  """
  return LayerCache(
      k=layers.constrain(write_at(cache.k, index_BT, entries.k), CACHE_KV_AXES),
      v=layers.constrain(write_at(cache.v, index_BT, entries.v), CACHE_KV_AXES),
      positions=layers.constrain(
          write_at(cache.positions, index_BT, entries.positions),
          CACHE_POSITION_AXES))


def init_cache(config: TransformerConfig, batch: int, length: int,
               dtype: Any = None) -> Cache:
  """An empty cache of `length` entries per batch row.

  k and v are zeros in `dtype` (default: the activation dtype), positions are
  zeros. Nothing marks an entry as empty: the caller's mask hides entries not
  yet written (key segment 0 in AttentionMeta terms).
  """
  dtype = jnp.dtype(config.dtype if dtype is None else dtype)
  kv_shape = (batch, length, config.num_kv_heads, config.head_dim)
  return {
      f'layer_{i}': LayerCache(
          k=jnp.zeros(kv_shape, dtype), v=jnp.zeros(kv_shape, dtype),
          positions=jnp.zeros((batch, length), jnp.int32))
      for i in range(config.num_layers)
  }


def write_entries(cache: Cache, entries: Cache, index_BT) -> Cache:
  """Writes the new entries of a `write_cache=False` call into the cache.

  `index_BT` [B, T] gives each new token's entry; an index outside [0, S) drops
  the token (e.g. an idle decoding slot). Indices of one row must be distinct.
  """
  index_BT = jnp.asarray(index_BT, jnp.int32)
  return {name: write_layer(c, index_BT, entries[name])
          for name, c in cache.items()}


def cache_length(cache: Cache) -> int:
  """Entries per batch row of a cache (`init_cache`'s `length`)."""
  lengths = {c.positions.shape[1] for c in cache.values()}
  if len(lengths) != 1:
    raise ValueError(f'cache layers disagree on the number of entries: {sorted(lengths)}')
  return lengths.pop()


def grow_cache(cache: Cache, length: int) -> Cache:
  """The cache with empty entries (zeros) appended up to `length` per row."""
  old = cache_length(cache)
  if length < old:
    raise ValueError(f'grow_cache: the cache has {old} entries, more than length={length}')
  # Appended at the end: every written entry keeps its index, and the new ones
  # are zeros, empty like those of init_cache.
  pad = lambda x: jnp.pad(x, [(0, 0), (0, length - old)] + [(0, 0)] * (x.ndim - 2))
  return {name: LayerCache(k=layers.constrain(pad(c.k), CACHE_KV_AXES),
                           v=layers.constrain(pad(c.v), CACHE_KV_AXES),
                           positions=layers.constrain(pad(c.positions), CACHE_POSITION_AXES))
          for name, c in cache.items()}


def cache_logical_axes(config: TransformerConfig) -> Cache:
  """Logical PartitionSpecs of the cache, structured like `init_cache`'s."""
  kv = PartitionSpec(*CACHE_KV_AXES)
  return {f'layer_{i}': LayerCache(k=kv, v=kv,
                                   positions=PartitionSpec(*CACHE_POSITION_AXES))
          for i in range(config.num_layers)}
