"""Train state, optimizer and learning-rate schedule; init straight into shardings.

    optimizer, schedule = make_optimizer(config.optimizer, num_steps)
    shardings = state_shardings(model_config, optimizer, mesh, rules)
    state = init_state(model_config, optimizer, jax.random.key(0), shardings)

`abstract_state` gives the ShapeDtypeStruct tree (with shardings) that a
checkpoint is restored into; nothing is allocated until `init_state` or the
restore writes each array directly in its target sharding.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import optax

from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, optimizer updates done so far.
    params: the model params (structured like `models.param_shapes`).
    opt_state: the optax state.
  """

  step: jax.Array
  params: Any
  opt_state: Any


def lr_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to opt.lr, then linear / cosine decay to lr * end_lr_factor
  at num_steps (or constant)."""
  warmup = min(opt.warmup_steps, num_steps)
  peak, end = opt.lr, opt.lr * opt.end_lr_factor
  decay_steps = max(num_steps - warmup, 1)
  if opt.schedule == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_lr_factor)
  elif opt.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f'unknown schedule {opt.schedule!r}')
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params):
  """Decoupled weight decay on matrices only (norm scales are left alone)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with the schedule, after global-norm clipping (when grad_clip_norm > 0)."""
  schedule = lr_schedule(opt, num_steps)
  adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                      weight_decay=opt.weight_decay, mask=_decay_mask)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw), schedule
  return adamw, schedule


def _boxed_param_shapes(model_config: TransformerConfig):
  """Param ShapeDtypeStructs boxed with their logical axis names."""
  return jax.tree.map(
      lambda shape, spec: nn.LogicallyPartitioned(shape, tuple(spec)),
      transformer.param_shapes(model_config), transformer.logical_axes(model_config),
      is_leaf=lambda x: isinstance(x, P))


def state_shardings(model_config: TransformerConfig, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, rules) -> TrainState:
  """NamedSharding tree of the train state.

  The optimizer's moments inherit the logical axes of their params: optax maps its
  init over the boxed params, so the boxes (and their names) carry over.
  """
  boxed = _boxed_param_shapes(model_config)
  logical = TrainState(step=P(), params=nn.get_partition_spec(boxed),
                       opt_state=nn.get_partition_spec(jax.eval_shape(optimizer.init, boxed)))
  return jax.tree.map(lambda spec: nn.logical_to_mesh_sharding(spec, mesh, rules),
                      logical, is_leaf=lambda x: isinstance(x, P))


def _init_fn(model_config: TransformerConfig, optimizer: optax.GradientTransformation
             ) -> Callable[[jax.Array], TrainState]:
  def init(rng):
    params = transformer.init_params(model_config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))
  return init


def abstract_state(model_config: TransformerConfig, optimizer: optax.GradientTransformation,
                   shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs of the state, each with its target sharding (restore target)."""
  shapes = jax.eval_shape(_init_fn(model_config, optimizer), jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_state(model_config: TransformerConfig, optimizer: optax.GradientTransformation,
               rng: jax.Array, shardings: TrainState) -> TrainState:
  """A fresh state, every array created directly in its sharding (one jit)."""
  return jax.jit(_init_fn(model_config, optimizer), out_shardings=shardings)(rng)


def state_from_params(params, optimizer: optax.GradientTransformation,
                      shardings: TrainState) -> TrainState:
  """A step-0 state around given params (e.g. a Gemma checkpoint), in `shardings`."""
  def init(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))
  return jax.jit(init, out_shardings=shardings, donate_argnums=0)(params)

