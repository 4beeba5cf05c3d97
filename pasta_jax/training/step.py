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

A train step whose loss, gradient norm or updated params are not finite keeps
the old params and optimizer state (the step counter still advances) and says
so in its metrics (`nonfinite_*`, `skipped`); `NonfiniteGuard` turns those
into `errors.TrainingDiverged` as `train.on_nonfinite` says.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pasta_jax import errors
from pasta_jax.data import pipeline
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig
from pasta_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]

# Sums a step reports; `summarize` divides each *_loss / *_correct by its weight.
KINDS = ('', 'main_', 'async_')


def target_log_probs(params, batch: Batch, model: transformer.Transformer
                     ) -> tuple[jax.Array, jax.Array]:
  """(float32 log-prob of each token's target [B, T], float32 logits [B, T, V]).

  The training forward pass; `loss_weights` says which entries are targets.
  """
  meta = pipeline.meta_of(batch)
  logits_BTV, _ = model.apply({'params': params}, batch['tokens'], batch['positions'],
                              (meta, meta))
  logits_BTV = logits_BTV.astype(jnp.float32)
  target_logit_BT = jnp.take_along_axis(logits_BTV, batch['targets'][..., None],
                                        axis=-1)[..., 0]
  return target_logit_BT - jax.nn.logsumexp(logits_BTV, axis=-1), logits_BTV


def loss_sums(params, batch: Batch, model: transformer.Transformer
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(sum of weighted cross-entropy, metric sums) of one batch."""
  logp_BT, logits_BTV = target_log_probs(params, batch, model)
  targets_BT = batch['targets']
  ce_BT = -logp_BT
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


def accumulated_grads(loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]],
                      params, batch: Batch, accum: int, keys: Sequence[str]):
  """(gradients, sums) of `loss_fn(params, batch) -> (summed loss, metric sums)`
  (the gradients not yet normalised); stage 1 and stage 2 share it.

  With accum > 1 the batch is cut into `accum` micro-batches of rows
  {j, j + accum, j + 2 accum, ...}, so each keeps an even share of every batch
  shard; their gradients and sums (`keys`) add up to the whole batch's.
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if accum == 1:
    return grad_fn(params, batch)

  def split(x):  # [B, ...] -> [accum, B / accum, ...]
    x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  def body(carry, micro):
    return jax.tree.map(jnp.add, carry, grad_fn(params, micro)), None

  zeros = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
           {k: jnp.zeros((), jnp.float32) for k in keys})
  (grads, sums), _ = jax.lax.scan(body, zeros, jax.tree.map(split, dict(batch)))
  return grads, sums


def sum_keys() -> tuple[str, ...]:
  """Names of the summed metrics (`loss_sums`)."""
  return ('tokens',) + tuple(f'{k}{m}' for k in KINDS for m in ('loss', 'correct', 'weight'))


def train_step(state: TrainState, batch: Batch, *, model_config: TransformerConfig,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the batch's weighted mean cross-entropy.

  The update is not applied (params and optimizer state stay as they were) when
  the loss, the gradient norm or any updated param is not finite; the metrics
  `nonfinite_loss`, `nonfinite_grad_norm`, `nonfinite_params` and `skipped`
  (0. or 1.) say so.
  """
  model = transformer.Transformer(model_config)
  grads, sums = accumulated_grads(functools.partial(loss_sums, model=model), state.params,
                                  batch, grad_accum_steps, sum_keys())
  return guarded_update(state, grads, sums, count=sums['weight'], optimizer=optimizer,
                        schedule=schedule)


def guarded_update(state: TrainState, grads: Any, sums: Mapping[str, jax.Array], *,
                   count: jax.Array, optimizer: optax.GradientTransformation,
                   schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimizer update for gradients of a summed loss (divided by `count`), kept
  out when `sums['loss']`, the gradient norm or an updated param is not finite.

  Returns the new state and `sums` with grad_norm, lr and the `nonfinite_*` and
  `skipped` flags that `NonfiniteGuard` reads (stage 1 and stage 2 share it).
  """
  scale = 1.0 / jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grads, state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  bad_loss = ~jnp.isfinite(sums['loss'])
  bad_grad = ~jnp.isfinite(grad_norm)
  bad_params = ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
  skip = bad_loss | bad_grad | bad_params
  keep = lambda new, old: jnp.where(skip, old, new)
  params = jax.tree.map(keep, params, state.params)
  opt_state = jax.tree.map(keep, opt_state, state.opt_state)
  metrics = dict(sums, grad_norm=grad_norm, lr=schedule(state.step),
                 nonfinite_loss=bad_loss.astype(jnp.float32),
                 nonfinite_grad_norm=bad_grad.astype(jnp.float32),
                 nonfinite_params=bad_params.astype(jnp.float32),
                 skipped=skip.astype(jnp.float32))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


class NonfiniteGuard:
  """Reads the train steps' `skipped` flags and stops training as the config says.

  `train.on_nonfinite='stop'` raises `TrainingDiverged` at the first skipped
  step; 'skip' lets training go on and raises once more than
  `train.max_skipped_steps` steps were skipped (counted in this process, from
  its start or resume). The step kept the old state either way, so nothing
  non-finite reaches a checkpoint.
  """

  def __init__(self, on_nonfinite: str, max_skipped_steps: int, *, lr: float,
               last_checkpoint: Callable[[], tuple[int | None, str]],
               message: Callable[[str], None]):
    """`last_checkpoint()` gives (step or None, checkpoints directory)."""
    self.on_nonfinite = on_nonfinite
    self.max_skipped_steps = max_skipped_steps
    self.skipped: list[int] = []
    self._lr = lr
    self._last_checkpoint = last_checkpoint
    self._message = message
    self._checked = None

  def check(self, window: Sequence[Mapping[str, jax.Array]], step: int) -> None:
    """Reads the flags of the steps in `window` (the metrics of the steps up to
    `step`) not read before; raises TrainingDiverged as configured."""
    first = step - len(window) + 1
    for i, metrics in enumerate(window):
      at = first + i
      if self._checked is not None and at <= self._checked:
        continue
      self._checked = at
      if not float(np.asarray(metrics['skipped'])):
        continue
      self.skipped.append(at)
      what = _what_was_nonfinite(metrics)
      if self.on_nonfinite == 'stop':
        raise self._diverged(f'training diverged at step {at}: {what}; its update was not '
                             f'applied and nothing after step {at - 1} was saved')
      if len(self.skipped) > self.max_skipped_steps:
        raise self._diverged(
            f'training diverged: {len(self.skipped)} steps were skipped for non-finite '
            f'values, more than config.train.max_skipped_steps={self.max_skipped_steps} '
            f'(the last, step {at}: {what})')
      self._message(f'step {at}: {what}; update skipped ({len(self.skipped)} of at most '
                    f'{self.max_skipped_steps}, config.train.max_skipped_steps)')

  def _diverged(self, first_line: str) -> errors.TrainingDiverged:
    last, directory = self._last_checkpoint()
    advice = (f'lower config.optimizer.lr (now {self._lr:g}), keep '
              'config.optimizer.grad_clip_norm > 0, or check the data')
    if last is None:
      second = f'no checkpoint was saved before; {advice}'
    else:
      second = (f'the last good checkpoint is step {last} in {directory} (the same command '
                f'resumes from it); {advice}')
    if self.on_nonfinite == 'stop':
      second += " (config.train.on_nonfinite='skip' skips such steps instead)"
    return errors.TrainingDiverged(f'{first_line}\n{second}')


def _what_was_nonfinite(metrics: Mapping[str, Any]) -> str:
  """'loss nan, gradient norm inf' for a skipped step's metrics."""
  parts = []
  if float(np.asarray(metrics['nonfinite_loss'])):
    parts.append(f'loss {float(np.asarray(metrics["loss"]))}')
  if float(np.asarray(metrics['nonfinite_grad_norm'])):
    parts.append(f'gradient norm {float(np.asarray(metrics["grad_norm"]))}')
  if float(np.asarray(metrics['nonfinite_params'])) and not parts:
    parts.append('the params after the update')
  return 'non-finite ' + ', '.join(parts)


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


def abstract_batch(batch_size: int, seq_len: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of a global batch in `sharding` (the fields and dtypes of
  `data.pipeline.pack`): what the jitted steps are lowered for ahead of time."""
  fields = pipeline.pack([], seq_len, pad_id=0)
  return {k: jax.ShapeDtypeStruct((batch_size, seq_len), v.dtype, sharding=sharding)
          for k, v in fields.items()}


@contextlib.contextmanager
def sharded(mesh: jax.sharding.Mesh, rules):
  """The mesh and the logical axis rules that the jitted steps trace under."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
