"""Logical axis rules: how the model's logical names map onto the mesh.

Mesh axes are ('data', 'fsdp', 'tensor'). Params carry the logical names
'vocab', 'embed', 'heads', 'kv_heads', 'head_dim', 'mlp'; activations 'batch',
'length', 'embed', 'heads', 'kv_heads', 'kv', 'mlp', 'vocab'; the cache 'batch',
'kv_heads', 'head_dim', 'cache_length'. Names without a rule stay unsharded.

Activations are constrained only under `jax.set_mesh(mesh)` (a mesh with Auto
axes) together with `flax.linen.logical_axis_rules(rules)`; elsewhere the
constraints are no-ops.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import numpy as np

from pasta_jax.models import cache as cache_lib
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig

MESH_AXES = ('data', 'fsdp', 'tensor')

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes (GSPMD propagation)."""
  return jax.make_mesh(tuple(shape), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def default_rules(config: TransformerConfig, mesh: jax.sharding.Mesh) -> Rules:
  """Batch over data x fsdp, weights' embed over fsdp, heads / mlp / vocab over
  tensor; a dimension that the tensor axis does not divide (e.g. one kv head of
  MQA) stays unsharded. Flax never uses a mesh axis twice in one spec, so the
  activations' 'embed' stays unsharded where 'batch' already took fsdp."""
  sizes = dict(zip(mesh.axis_names, mesh.devices.shape))

  def over(axis: str, dim: int):
    return axis if dim % sizes.get(axis, 1) == 0 else None

  return [
      ('batch', ('data', 'fsdp')),
      ('embed', over('fsdp', config.embed_dim)),
      ('heads', over('tensor', config.num_heads)),
      ('kv_heads', over('tensor', config.num_kv_heads)),
      ('mlp', over('tensor', config.hidden_dim)),
      ('vocab', over('tensor', config.vocab_size)),
  ]


def param_shardings(config: TransformerConfig, mesh: jax.sharding.Mesh,
                    rules: Rules):
  """NamedSharding tree of the params."""
  return nn.logical_to_mesh_sharding(transformer.logical_axes(config), mesh,
                                     rules)


def cache_shardings(config: TransformerConfig, mesh: jax.sharding.Mesh,
                    rules: Rules):
  """NamedSharding tree of the cache (structured like `init_cache`'s)."""
  return nn.logical_to_mesh_sharding(cache_lib.cache_logical_axes(config),
                                     mesh, rules)


def put(x: Any, sharding: jax.sharding.NamedSharding) -> jax.Array:
  """`jax.device_put(x, sharding)`, also when the mesh spans several processes
  and `x` is this process's copy of the whole value (numpy or a local array):
  every process must then pass the same value; each puts its own devices' part."""
  if sharding.is_fully_addressable or (isinstance(x, jax.Array)
                                       and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def fetch(tree: Any) -> Any:
  """`jax.device_get(tree)`, also for arrays split over the devices of several
  processes: each process gets the whole value (a collective for those arrays:
  every process must call it with the same tree)."""

  def one(x: Any) -> Any:
    if (not isinstance(x, jax.Array) or x.is_fully_addressable
        or x.is_fully_replicated):
      return jax.device_get(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)
