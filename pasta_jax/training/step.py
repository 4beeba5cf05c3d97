"""The loss, the train step and the eval step.

A batch is the input pipeline's dict of [B, T] arrays (`data.pipeline.FIELDS`).
The model sees tokens, positions and the pair `(meta, meta)` of
`masks.AttentionMeta`, from which it builds the PASTA mask (or, for the
sequential baseline's metadata, the causal mask) inside the jitted function.

Each token predicts `targets` (the next token of its own thread) with weight
`loss_weights`. Steps return *sums* (weighted loss, weight, correct
predictions; overall, on main-thread tokens and on async-thread tokens), so
that metrics over several steps, hosts or micro-batches add up exactly;
`summarize` turns them into means.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from pasta_jax.data import pipeline
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig
from pasta_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]

# Sums a step reports; `summarize` divides each *_loss / *_correct by its weight.
KINDS = ('', 'main_', 'async_')


def loss_sums(params, batch: Batch, model: transformer.Transformer
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(sum of weighted cross-entropy, metric sums) of one batch."""
  meta = pipeline.meta_of(batch)
  logits_BTV, _ = model.apply({'params': params}, batch['tokens'], batch['positions'],
                              (meta, meta))
  logits_BTV = logits_BTV.astype(jnp.float32)
  targets_BT = batch['targets']
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  ce_BT = jax.nn.logsumexp(logits_BTV, axis=-1) - target_logit_BT
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  weights_BT = batch['loss_weights'].astype(jnp.float32)
  main_BT = (batch['thread'] == 0).astype(jnp.float32)
  sums = {'tokens': jnp.sum((batch['segment'] > 0).astype(jnp.float32))}
  for kind, w_BT in (('', weights_BT), ('main_', weights_BT * main_BT),
                     ('async_', weights_BT * (1.0 - main_BT))):
    sums[f'{kind}loss'] = jnp.sum(ce_BT * w_BT)
    sums[f'{kind}correct'] = jnp.sum(correct_BT * w_BT)
    sums[f'{kind}weight'] = jnp.sum(w_BT)
  return sums['loss'], sums


def _grads_and_sums(params, batch: Batch, model, accum: int):
  """Gradients of the summed loss (not yet normalised) and the metric sums.

  With accum > 1 the batch is cut into `accum` micro-batches of rows
  {j, j + accum, j + 2 accum, ...}, so each keeps an even share of every batch
  shard; their gradients and sums add up to the whole batch's.
  """
  grad_fn = jax.grad(loss_sums, has_aux=True)
  if accum == 1:
    return grad_fn(params, batch, model)

  def split(x):  # [B, ...] -> [accum, B / accum, ...]
    x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  def body(carry, micro):
    grads, sums = grad_fn(params, micro, model)
    return jax.tree.map(jnp.add, carry, (grads, sums)), None

  zeros = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
           {k: jnp.zeros((), jnp.float32) for k in sum_keys()})
  (grads, sums), _ = jax.lax.scan(body, zeros, jax.tree.map(split, dict(batch)))
  return grads, sums


def sum_keys() -> tuple[str, ...]:
  """Names of the summed metrics (`loss_sums`)."""
  return ('tokens',) + tuple(f'{k}{m}' for k in KINDS for m in ('loss', 'correct', 'weight'))


def train_step(state: TrainState, batch: Batch, *, model_config: TransformerConfig,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the batch's weighted mean cross-entropy."""
  model = transformer.Transformer(model_config)
  grads, sums = _grads_and_sums(state.params, batch, model, grad_accum_steps)
  scale = 1.0 / jnp.maximum(sums['weight'], 1.0)
  grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(sums, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: Batch, *, model_config: TransformerConfig
              ) -> dict[str, jax.Array]:
  """Metric sums of the batch (no update)."""
  return loss_sums(params, batch, transformer.Transformer(model_config))[1]


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
  """Means from summed metrics: loss and accuracy overall, on main and async targets."""
  out = {}
  for kind in KINDS:
    weight = float(sums[f'{kind}weight'])
    if weight > 0:
      out[f'{kind}loss'] = float(sums[f'{kind}loss']) / weight
      out[f'{kind}accuracy'] = float(sums[f'{kind}correct']) / weight
    out[f'{kind}targets'] = weight
  return out


def add_sums(total: dict[str, Any] | None, sums: Mapping[str, Any]) -> dict[str, Any]:
  if total is None:
    return dict(sums)
  return {k: total[k] + sums[k] for k in total}


def jit_steps(*, model_config: TransformerConfig, optimizer, schedule,
                  grad_accum_steps: int, state_shardings: TrainState, batch_sharding):
  """(train_step, eval_step) jitted with explicit shardings; the state is donated.

  Call them inside `sharded(mesh, rules)` so that the model's activation
  constraints apply.
  """
  batch_shardings = {k: batch_sharding for k in pipeline.FIELDS}
  train = jax.jit(
      functools.partial(train_step, model_config=model_config, optimizer=optimizer,
                        schedule=schedule, grad_accum_steps=grad_accum_steps),
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, None), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, model_config=model_config),
                     in_shardings=(state_shardings.params, batch_shardings))
  return train, evaluate


@contextlib.contextmanager
def sharded(mesh: jax.sharding.Mesh, rules):
  """The mesh and the logical axis rules that the jitted steps trace under."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
