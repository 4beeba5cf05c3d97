"""The Gemma-family decoder: one call for training, prefill and decoding.

    logits_BTV, new_cache = Transformer(config).apply(
        {'params': params}, tokens_BT, positions_BT, attention,
        cache=None, cache_index=None)

* `positions_BT`: RoPE positions of the T new tokens, chosen by the caller
  (PASTA positions are not token indices).
* `attention`: a boolean mask [B, T, S] (True = may attend) or a pair
  `(query_meta, key_meta)` of `masks.AttentionMeta` with fields [B, T] and
  [B, S]; the mask is then built inside the jitted function by
  `masks.visibility_mask`, the project's one visibility rule. S = T without a
  cache; S = cache length with one.
* `cache`: None, or the pytree of `cache.init_cache` (per layer `LayerCache`);
  then `cache_index` [B, T] int gives the cache entry each new token's K/V goes
  to, and attention runs over the whole cache. The key metadata / mask columns
  describe the cache entries *after* this call's writes.
* `write_cache=False` (with a cache, no `cache_index`): the cache is only read.
  The keys are the S cache entries as they are, then the T new tokens (the mask's
  key axis is S + T), and the call returns the new entries (per layer a
  `LayerCache` of [B, T] rows) instead of an updated cache;
  `cache.write_entries` puts them at their indices. A decoder that picks among
  compiled widths with `lax.switch` uses this to keep the cache out of the
  branches (a cache that goes through a conditional is copied in and out of it).

The model keeps no state between calls and has no special case for threads:
everything PASTA needs is in positions, the mask and the cache indices.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pasta_jax import masks
from pasta_jax.models import layers
from pasta_jax.models.cache import Cache, LayerCache, layer_shapes
from pasta_jax.models.config import TransformerConfig
from pasta_jax.models.modules import Block, Embedder


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _is_meta_pair(attention) -> bool:
  return (isinstance(attention, (tuple, list)) and len(attention) == 2 and
          all(isinstance(m, masks.AttentionMeta) for m in attention))


def attention_mask(attention, batch: int, length: int, keys: int) -> jax.Array:
  """The boolean mask [B, T, S] described by an `attention` argument."""
  if _is_meta_pair(attention):
    query, key = attention
    for side, meta, shape in (('query', query, (batch, length)),
                              ('key', key, (batch, keys))):
      for field, value in zip(masks.AttentionMeta._fields, meta):
        if _shape(value) != shape:
          raise ValueError(
              f'{side} AttentionMeta.{field} has shape {_shape(value)}, '
              f'expected {shape} ([B, T] for the query side, [B, S] for the '
              f'key side; S = {keys})')
        if not jnp.issubdtype(jnp.result_type(value), jnp.integer):
          raise ValueError(f'{side} AttentionMeta.{field} must be integer, got '
                           f'{jnp.result_type(value)}')
    as_jnp = lambda m: masks.AttentionMeta(*(jnp.asarray(a) for a in m))
    return masks.visibility_mask(as_jnp(query), as_jnp(key))
  if isinstance(attention, (tuple, list)) or not hasattr(attention, 'shape'):
    raise TypeError(
        'attention must be a boolean mask [B, T, S] or a pair (query_meta, '
        f'key_meta) of masks.AttentionMeta, got {type(attention).__name__}')
  if _shape(attention) != (batch, length, keys):
    raise ValueError(f'attention mask has shape {_shape(attention)}, expected '
                     f'[B, T, S] = {(batch, length, keys)}')
  if jnp.result_type(attention) != jnp.bool_:
    raise ValueError('attention mask must be boolean (True = may attend), got '
                     f'{jnp.result_type(attention)}')
  return jnp.asarray(attention)


def split_written(mask_BTS: jax.Array, index_BT: jax.Array) -> jax.Array:
  """The mask [B, T, S] of queries over a cache after T writes, as a mask
  [B, T, S + T] over the cache before them, then the T written entries.

  Entry `index[b, t]` holds the t-th new token after the writes, so the old
  entry there is hidden and the new token's column is that entry's column;
  an index outside [0, S) is a dropped write (`cache.write_at`), whose token no
  query sees.
  """
  s = mask_BTS.shape[2]
  valid_BT = (index_BT >= 0) & (index_BT < s)
  written_BS = jnp.any((index_BT[:, :, None] == jnp.arange(s)) & valid_BT[:, :, None], axis=1)
  new_BTT = jnp.take_along_axis(mask_BTS, jnp.clip(index_BT, 0, s - 1)[:, None, :], axis=2)
  return jnp.concatenate([mask_BTS & ~written_BS[:, None, :],
                          new_BTT & valid_BT[:, None, :]], axis=2)


class Transformer(nn.Module):
  """Gemma 1/2/3 text decoder (see the module docstring for the call).

  `layouts` (`layers.Layouts`): weights given stored permuted, which the model
  then reads in that layout (the interpreter's decode loop; the results are
  the same). The default reads every weight in the checkpoints' layout.
  """

  config: TransformerConfig
  layouts: layers.Layouts = ()

  def _check_inputs(self, tokens_BT, positions_BT, cache, cache_index_BT,
                    write_cache: bool = True) -> int:
    """Validates shapes and returns S, the number of keys."""
    cfg = self.config
    if len(_shape(tokens_BT)) != 2:
      raise ValueError(f'tokens must be [B, T], got shape {_shape(tokens_BT)}')
    b, t = _shape(tokens_BT)
    for name, x in (('tokens', tokens_BT), ('positions', positions_BT)):
      if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise ValueError(f'{name} must be integer, got {jnp.result_type(x)}')
    if _shape(positions_BT) != (b, t):
      raise ValueError(f'positions has shape {_shape(positions_BT)}, expected '
                       f'tokens\' shape {(b, t)}')
    if cache is None:
      if cache_index_BT is not None:
        raise ValueError('cache_index given without a cache')
      if not write_cache:
        raise ValueError('write_cache=False needs a cache to read')
      return t
    if not write_cache:
      if cache_index_BT is not None:
        raise ValueError('write_cache=False reads the cache only: pass no cache_index '
                         '(write the returned entries with write_entries)')
    elif cache_index_BT is None:
      raise ValueError('a cache needs cache_index [B, T]: the cache entries '
                       'the new tokens are written to')
    elif _shape(cache_index_BT) != (b, t):
      raise ValueError(f'cache_index has shape {_shape(cache_index_BT)}, '
                       f'expected {(b, t)}')
    elif not jnp.issubdtype(jnp.result_type(cache_index_BT), jnp.integer):
      raise ValueError(
          f'cache_index must be integer, got {jnp.result_type(cache_index_BT)}')
    names = [f'layer_{i}' for i in range(cfg.num_layers)]
    if not isinstance(cache, Mapping) or sorted(cache) != sorted(names):
      got = sorted(cache) if isinstance(cache, Mapping) else type(cache).__name__
      raise ValueError(f'cache must be a dict with keys layer_0..layer_'
                       f'{cfg.num_layers - 1} (see init_cache), got {got}')
    length = _shape(getattr(cache['layer_0'], 'positions', ()))[1:2]
    if not length:
      raise ValueError('cache positions must be [B, S]')
    s = length[0]
    k_shape, v_shape, positions_shape = layer_shapes(cfg, b, s)
    for name in names:
      c = cache[name]
      if not isinstance(c, LayerCache):
        raise ValueError(f'cache[{name!r}] must be a LayerCache, got '
                         f'{type(c).__name__}')
      if (_shape(c.k), _shape(c.v), _shape(c.positions)) != (k_shape, v_shape,
                                                             positions_shape):
        raise ValueError(
            f'cache[{name!r}] has k {_shape(c.k)}, v {_shape(c.v)}, positions '
            f'{_shape(c.positions)}; expected k {k_shape}, v {v_shape} and positions '
            f'{positions_shape} (see init_cache)')
    return s if write_cache else s + t

  @nn.compact
  def __call__(self, tokens_BT, positions_BT, attention,
               cache: Cache | None = None, cache_index=None, logits_index=None,
               write_cache: bool = True):
    """See the module docstring; `logits_index` [B, U] (optional) computes the
    logits only at those token positions (e.g. the last prompt token of each
    row in a prefill), returning [B, U, V] instead of [B, T, V]."""
    cfg = self.config
    s = self._check_inputs(tokens_BT, positions_BT, cache, cache_index, write_cache)
    b, t = _shape(tokens_BT)
    # With a cache, the mask's key axis is the cache as it is after this
    # call's writes: a new token sees itself (and earlier new tokens of its
    # thread) only through the entries at its cache_index.
    mask_BTS = attention_mask(attention, b, t, s)
    positions_BT = jnp.asarray(positions_BT, jnp.int32)
    if cache_index is not None:
      cache_index = jnp.asarray(cache_index, jnp.int32)
      # Attention reads the cache as it comes in, then the new tokens
      # (modules.Attention): the mask of the written cache, split once for
      # every layer.
      mask_BTS = split_written(mask_BTS, cache_index)

    embedder = Embedder(cfg, self.layouts, name='embedder')
    x_BTD = layers.constrain(embedder.encode(tokens_BT),
                             ('batch', 'length', 'embed'))
    block_cls = nn.remat(Block) if cfg.remat else Block
    new_cache = None if cache is None else {}
    for i, attn_type in enumerate(cfg.attention_types):
      name = f'layer_{i}'
      x_BTD, layer_cache = block_cls(cfg, attn_type, self.layouts, name=name)(
          x_BTD, positions_BT, mask_BTS,
          None if cache is None else cache[name], cache_index, write_cache)
      if cache is not None:
        new_cache[name] = layer_cache
    if logits_index is not None:
      # Only these positions need logits: [B, U, D] before the vocab matmul.
      x_BTD = jnp.take_along_axis(
          x_BTD, jnp.asarray(logits_index, jnp.int32)[:, :, None], axis=1)
    x_BTD = layers.RMSNorm('embed', cfg.param_dtype, name='final_norm')(x_BTD)
    logits_BTV = layers.soft_cap(embedder.decode(x_BTD), cfg.final_logit_softcap)
    logits_BTV = layers.constrain(logits_BTV, ('batch', 'length', 'vocab'))
    return logits_BTV, new_cache


def _init_boxed(config: TransformerConfig, rng: jax.Array):
  """Flax init on a 1-token dummy batch; params keep their logical boxes."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return Transformer(config).init(rng, tokens, tokens, jnp.ones((1, 1, 1), bool))


@functools.lru_cache(maxsize=64)
def _abstract_boxed(config: TransformerConfig):
  return jax.eval_shape(functools.partial(_init_boxed, config),
                        jax.random.key(0))['params']


def param_shapes(config: TransformerConfig):
  """ShapeDtypeStruct tree of the params, via jax.eval_shape (no allocation)."""
  return nn.unbox(_abstract_boxed(config))


def logical_axes(config: TransformerConfig):
  """PartitionSpec tree of logical axis names, structured like the params.

  Names: 'vocab', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp' (None on the
  stacking axis of qkv/kv/gating einsums).
  """
  return nn.get_partition_spec(_abstract_boxed(config))


def count_params(config: TransformerConfig) -> int:
  """Number of parameters of the model `config` describes (from the shapes:
  nothing is allocated); the same as that of any param tree of the config."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(config)))


def init_params(config: TransformerConfig, rng: jax.Array, *, mesh=None,
                rules=None):
  """Random params (plain arrays in config.param_dtype).

  With a mesh and logical axis rules, each param is created directly in its
  sharding (jit with out_shardings), so no host materialises the whole model.
  """
  def init(rng):
    return nn.unbox(_init_boxed(config, rng)['params'])

  if mesh is None:
    return jax.jit(init)(rng)
  shardings = nn.logical_to_mesh_sharding(logical_axes(config), mesh, rules)
  return jax.jit(init, out_shardings=shardings)(rng)
