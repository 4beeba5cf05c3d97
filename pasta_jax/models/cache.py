"""The KV cache: per layer a fixed-length `LayerCache`, written at indices the caller picks.

    cache = init_cache(config, batch, length)      # {'layer_{i}': LayerCache}
    logits, cache = Transformer(config).apply(..., cache=cache, cache_index=index_BT)

Shape letters: B batch, S cache entries per row, T new tokens, K kv heads,
H head_dim.

Invariants (the model, the interpreter and the tests rely on them):
* The layout is fixed: k [B, K, H, S], v [B, K, S, H], positions [B, S] int32,
  every layer the same S. These are the layouts attention's two batched
  products read (queries x keys contracts H against k's H-major columns, the
  probabilities x values contracts S against v's S-major rows, both batched over
  B and K), so a decode step reads the cache as it is stored; in a
  [B, S, K, H] layout XLA:CPU copied every layer's whole K and V into these
  layouts on every step (docs/design.md section 5, docs/benchmarks.md). The
  logical axes are CACHE_K_AXES, CACHE_V_AXES and CACHE_POSITION_AXES, and
  every function here that returns a cache constrains it to them, so a cache
  keeps one sharding through prefill, decoding and growth.
* The new entries a read-only model call returns (`write_cache=False`) are a
  cache of T entries in the same layout, written with `write_entries`.
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
CACHE_K_AXES = ('batch', 'kv_heads', 'head_dim', 'cache_length')
CACHE_V_AXES = ('batch', 'kv_heads', 'cache_length', 'head_dim')
CACHE_POSITION_AXES = ('batch', 'cache_length')

PartitionSpec = jax.sharding.PartitionSpec


@flax.struct.dataclass
class LayerCache:
  """Fixed-length KV cache of one layer.

  Attributes:
    k: [B, K, H, S] keys, RoPE already applied at their own positions.
    v: [B, K, S, H] values.
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


# The axis of each LayerCache field that holds its entries, and the fields' logical axes.
ENTRY_AXIS = {'k': 3, 'v': 2, 'positions': 1}
_AXES = {'k': CACHE_K_AXES, 'v': CACHE_V_AXES, 'positions': CACHE_POSITION_AXES}


def write_at(cache: jax.Array, index_BT: jax.Array, update: jax.Array,
             axis: int = 1) -> jax.Array:
  """cache[b, ..., index[b, t], ...] = update[b, ..., t, ...]: a scatter per batch
  row along the entry axis `axis` (update has T entries there, cache S).

  Invariants the caller keeps: the indices of one row are distinct (two writes
  to one entry in one call leave either value). An index outside [0, S) is
  dropped: the caller points writes it wants discarded (e.g. idle slots) at S.
  """
  length = cache.shape[axis]
  # A negative index would count from the end in jnp indexing: point it at S,
  # which mode='drop' discards, like every other index outside [0, S).
  index_BT = jnp.where(index_BT < 0, length, index_BT)
  # One index array at the entry axis keeps the other axes in place, so the
  # update is indexed in the cache's own layout (no transposes).
  lead = (slice(None),) * (axis - 1)
  return jax.vmap(lambda c, i, u: c.at[lead + (i,)].set(u, mode='drop'))(
      cache, index_BT, update.astype(cache.dtype))


def _constrain(layer: LayerCache) -> LayerCache:
  return LayerCache(**{name: layers.constrain(getattr(layer, name), axes)
                       for name, axes in _AXES.items()})


def _map_entries(fn, layer: LayerCache) -> LayerCache:
  """LayerCache(field=fn(array, entry axis of the field)) for each field."""
  return LayerCache(**{name: fn(getattr(layer, name), axis)
                       for name, axis in ENTRY_AXIS.items()})


def entries(k_BTKH: jax.Array, v_BTKH: jax.Array, positions_BT: jax.Array) -> LayerCache:
  """T new entries ([B, T, K, H] keys and values) in the cache layout."""
  return LayerCache(k=k_BTKH.transpose(0, 2, 3, 1), v=v_BTKH.transpose(0, 2, 1, 3),
                    positions=positions_BT)


def write_layer(cache: LayerCache, index_BT: jax.Array,
                new: LayerCache) -> LayerCache:
  """One layer's cache with the T entries `new` (the cache layout, T entries)
  written at `index_BT` [B, T].

  The result stays in the cache's dtype and logical axes (the fixed layout).
  """
  return _constrain(LayerCache(**{
      name: write_at(getattr(cache, name), index_BT, getattr(new, name), axis)
      for name, axis in ENTRY_AXIS.items()}))


def init_cache(config: TransformerConfig, batch: int, length: int,
               dtype: Any = None) -> Cache:
  """An empty cache of `length` entries per batch row.

  k and v are zeros in `dtype` (default: the activation dtype), positions are
  zeros. Nothing marks an entry as empty: the caller's mask hides entries not
  yet written (key segment 0 in AttentionMeta terms).
  """
  dtype = jnp.dtype(config.dtype if dtype is None else dtype)
  k_shape, v_shape, _ = layer_shapes(config, batch, length)
  return {
      f'layer_{i}': LayerCache(
          k=jnp.zeros(k_shape, dtype), v=jnp.zeros(v_shape, dtype),
          positions=jnp.zeros((batch, length), jnp.int32))
      for i in range(config.num_layers)
  }


def layer_shapes(config: TransformerConfig, batch: int,
                 length: int) -> tuple[tuple[int, ...], ...]:
  """The shapes of one layer's k, v and positions (the fixed layout)."""
  k, h = config.num_kv_heads, config.head_dim
  return (batch, k, h, length), (batch, k, length, h), (batch, length)


def after_reads(index_BT: jax.Array, length: int, read_B: jax.Array) -> jax.Array:
  """`index_BT`, made to depend on `read_B` [B, ...], a result computed from the
  reads of the cache that the writes at `index_BT` must follow.

  Nothing else orders a cache's writes after its reads (new entries do not
  depend on attention), and XLA then keeps the old entries readable by copying
  every layer's whole K and V while it updates the cache in place. Each row's
  indices go through a test of its first element of `read_B` that holds for no
  value (`x > inf`, NaN included) and that XLA does not fold; where it held,
  the index would be `length`, a dropped write. Under the default sharding
  rules every device holds its own rows of `read_B`: no collective is added.
  """
  never_B = jnp.reshape(read_B, (read_B.shape[0], -1))[:, 0] > jnp.inf
  return jnp.where(never_B[:, None], length, index_BT)


def write_entries(cache: Cache, entries: Cache, index_BT,
                  after: jax.Array | None = None) -> Cache:
  """Writes the new entries of a `write_cache=False` call (a cache of T entries)
  into the cache.

  `index_BT` [B, T] gives each new token's entry; an index outside [0, S) drops
  the token (e.g. an idle decoding slot). Indices of one row must be distinct.
  `after` [B, ...]: a result of the call that read `cache` (its logits), which
  the writes wait for (`after_reads`).
  """
  index_BT = jnp.asarray(index_BT, jnp.int32)
  if after is not None:
    index_BT = after_reads(index_BT, cache_length(cache), after)
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
  def pad(x: jax.Array, axis: int) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - old)
    return jnp.pad(x, widths)
  return {name: _constrain(_map_entries(pad, c)) for name, c in cache.items()}


def truncate_cache(cache: Cache, length: int) -> Cache:
  """The first `length` entries of each row of `cache` (a slice, same layout)."""
  old = cache_length(cache)
  if length > old:
    raise ValueError(f'truncate_cache: the cache has {old} entries, fewer than length={length}')
  cut = lambda x, axis: jax.lax.slice_in_dim(x, 0, length, axis=axis)
  return {name: _map_entries(cut, c) for name, c in cache.items()}


def cache_logical_axes(config: TransformerConfig) -> Cache:
  """Logical PartitionSpecs of the cache, structured like `init_cache`'s."""
  return {f'layer_{i}': LayerCache(**{name: PartitionSpec(*axes)
                                     for name, axes in _AXES.items()})
          for i in range(config.num_layers)}
