"""The device mesh, the logical axis rules and the checks that they fit.

Mesh axes are ('data', 'fsdp', 'tensor') (`models.sharding.MESH_AXES`); the
config gives their sizes (`mesh.shape`, one of them may be -1: the remaining
devices) and optionally rules that replace `models.sharding.default_rules` for
the logical names they mention (`pasta_jax.config.rules_for` merges them). Every
check here runs before anything compiles
and raises `ConfigError` naming the value and what would fit.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from pasta_jax.config import ConfigError
from pasta_jax.models import sharding as model_sharding
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig

Rules = model_sharding.Rules
# The 'batch' rule of models.sharding.default_rules.
DEFAULT_BATCH_AXES = ('data', 'fsdp')


def mesh_shape(shape: Sequence[int], device_count: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with -1 filled in; ConfigError if it cannot cover the devices."""
  shape = tuple(int(n) for n in shape)
  if len(shape) != 3 or shape.count(-1) > 1 or any(n == 0 or n < -1 for n in shape):
    raise ConfigError(f'config.mesh.shape={shape}: expected (data, fsdp, tensor), three '
                      'ints >= 1 with at most one -1 (the remaining devices)')
  known = math.prod(n for n in shape if n != -1)
  if -1 in shape:
    if device_count % known:
      raise ConfigError(f'config.mesh.shape={shape}: the fixed axes ({known} devices) do '
                        f'not divide the {device_count} devices')
    shape = tuple(device_count // known if n == -1 else n for n in shape)
  if math.prod(shape) != device_count:
    raise ConfigError(f'config.mesh.shape={shape} needs {math.prod(shape)} devices; there '
                      f'are {device_count} (use -1 on one axis to take the rest)')
  return shape  # type: ignore[return-value]


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  resolved = mesh_shape(shape, len(devices))
  return model_sharding.make_mesh(resolved, devices=devices)


def _axes_of(rules: Rules, name: str) -> tuple[str, ...]:
  for logical, axes in rules:
    if logical == name:
      if axes is None:
        return ()
      return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
  return ()


def batch_axes(overrides: Sequence[Sequence] = ()) -> tuple[str, ...]:
  """Mesh axes of the 'batch' logical axis: an override's, else the default rules'."""
  for name, axes in overrides:
    if name == 'batch':
      return _axes_of([(name, axes)], 'batch')
  return DEFAULT_BATCH_AXES


def check_batch(batch_size: int, *, mesh: jax.sharding.Mesh, batch_axes: Sequence[str],
                process_count: int, grad_accum_steps: int = 1,
                key: str = 'data.batch_size') -> None:
  """The global batch must split evenly over hosts, batch shards and micro-batches."""
  shards = math.prod(mesh.shape[a] for a in batch_axes)
  axes = ' x '.join(f'{a}={mesh.shape[a]}' for a in batch_axes) or 'none'
  if batch_size % process_count:
    raise ConfigError(f'config.{key}={batch_size} is not divisible by the {process_count} '
                      'hosts: each host reads batch_size / hosts rows')
  if shards % process_count:
    raise ConfigError(f'the batch is split over {shards} shards ({axes}) but there are '
                      f'{process_count} hosts, each reading its own rows: make the batch '
                      'axes (data x fsdp) a multiple of the number of hosts')
  if batch_size % shards:
    raise ConfigError(f'config.{key}={batch_size} is not divisible by the batch shards '
                      f'of the mesh ({axes}: {shards}); use a multiple of {shards}')
  if grad_accum_steps > 1 and batch_size % (shards * grad_accum_steps):
    raise ConfigError(
        f'config.{key}={batch_size} cannot be cut into optimizer.grad_accum_steps='
        f'{grad_accum_steps} micro-batches of whole batch shards ({axes}: {shards}); '
        f'use a multiple of {shards * grad_accum_steps}')


def check_params(model_config: TransformerConfig, mesh: jax.sharding.Mesh,
                 rules: Rules) -> None:
  """Every sharded parameter dimension must divide evenly over its mesh axes."""
  shapes = transformer.param_shapes(model_config)
  specs = transformer.logical_axes(model_config)
  problems = []
  flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  for (path, shape), spec in zip(flat_shapes, flat_specs):
    for dim, name in zip(shape.shape, tuple(spec)):
      if name is None:
        continue
      size = math.prod(mesh.shape[a] for a in _axes_of(rules, name))
      if dim % size:
        where = '/'.join(str(getattr(k, 'key', k)) for k in path)
        problems.append(f'{where} {name!r}={dim} over {_axes_of(rules, name)} ({size})')
  if problems:
    raise ConfigError(
        f'config.mesh.shape={tuple(mesh.shape.values())} does not fit the model: '
        f'{"; ".join(problems[:6])}{" ..." if len(problems) > 6 else ""}. Choose mesh '
        'sizes that divide these dimensions, or rules that leave them unsharded')


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
  """The sharding of [batch, length] input arrays."""
  return nn.logical_to_mesh_sharding(P('batch', 'length'), mesh, rules)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding
                 ) -> dict[str, jax.Array]:
  """Per-host numpy rows -> global jax arrays (rows of all hosts, in host order)."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}
