"""The last phase of a stage-2 round (docs/design.md section 7): BoNBoN training
of a copy of the round's starting model on its pairs, resumable from the latest
checkpoint (the batch of update k is a function of k: `batch_order`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from pasta_jax import runs
from pasta_jax.preference import common
from pasta_jax.preference import logprobs
from pasta_jax.preference import loss as loss_lib
from pasta_jax.preference import phases
from pasta_jax.training import checkpointing
from pasta_jax.training import metrics as metrics_lib
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib


def num_train_steps(po: ml_collections.ConfigDict, num_batches: int) -> int:
  """Updates of a round with `num_batches` pair batches (0 without pairs)."""
  if not num_batches:
    return 0
  return po.train_steps or max(1, math.ceil(po.epochs * num_batches))


def batch_order(seed: int, r: int, step: int, num_batches: int) -> int:
  """The pair batch of update `step` (0-based): each epoch a fresh permutation."""
  epoch, k = divmod(step, num_batches)
  return int(np.random.default_rng([seed, r, epoch]).permutation(num_batches)[k])


def _optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  for key in ('lr', 'schedule', 'warmup_steps', 'end_lr_factor'):
    opt[key] = config.po[key]
  return opt


def train(ctx: common.Context, r: int, directory: str, start_params,
           writer: metrics_lib.MetricWriter) -> bool:
  """Trains the round to its last step; False when a signal stopped it (saved)."""
  config, po = ctx.config, ctx.config.po
  packed, left_out = phases.packed_pairs(ctx, directory)
  reference = common.read_reference(directory)
  batches = [logprobs.with_reference(b, reference) for b in packed.batches]
  pairs = len(common.read_pairs(directory)) - len(left_out)
  num_steps = num_train_steps(po, len(batches))
  optimizer, schedule = state_lib.make_optimizer(_optimizer_config(config), max(num_steps, 1))
  shardings = state_lib.state_shardings(ctx.model_config, optimizer, ctx.mesh, ctx.rules)
  checkpoints = checkpointing.Checkpoints(directory, keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save,
                                         data=False, lr_key='config.po.lr')
  bar = None
  stopped = False
  last: dict[str, float] = {}
  try:
    latest = checkpoints.latest_step()
    if latest is not None:
      target = state_lib.abstract_state(ctx.model_config, optimizer, shardings)
      state, _ = checkpoints.restore(latest, target)
    else:
      state = loss_lib.policy_state(start_params, optimizer, shardings)
    step = int(jax.device_get(state.step))
    batch_sharding = partitioning.batch_sharding(ctx.mesh, ctx.rules)
    train_step = loss_lib.jit_train_step(
        model_config=ctx.model_config, optimizer=optimizer, schedule=schedule,
        alpha=po.alpha, beta=po.beta, grad_accum_steps=config.optimizer.grad_accum_steps,
        state_shardings=shardings, batch_sharding=batch_sharding)
    bar = metrics_lib.ProgressBar(num_steps, initial=step, stream=ctx.stream,
                                  enabled=ctx.primary)
    bar.message(f'round {r}: BoNBoN training on {pairs} pairs ({len(batches)} batches), '
                f'steps {step} -> {num_steps}')
    guard = step_lib.NonfiniteGuard(
        config.train.on_nonfinite, config.train.max_skipped_steps, lr=po.lr,
        last_checkpoint=lambda: (checkpoints.latest_step(), checkpoints.directory),
        message=bar.message)
    rows = po.batch_size // jax.process_count()
    first_row = jax.process_index() * rows
    window = []
    with step_lib.sharded(ctx.mesh, ctx.rules):
      while step < num_steps:
        batch = batches[batch_order(config.seed, r, step, len(batches))]
        local = {k: v[first_row:first_row + rows] for k, v in batch.items()}
        state, metrics = train_step(state, partitioning.global_batch(local, batch_sharding))
        step += 1
        window.append(metrics)
        bar.update(step)
        if step % po.log_every == 0 or step == num_steps:
          guard.check(window, step)
          last = _log(jax.device_get(window), step, writer, bar) or last
          window = []
        if step % po.checkpoint_every == 0 and step < num_steps:
          guard.check(window, step)
          checkpoints.save(state, config=config)
        if ctx.stop is not None and ctx.stop.requested():
          stopped = True
          break
    if checkpoints.latest_step() != step:
      guard.check(window, step)
      checkpoints.save(state, config=config)
    checkpoints.wait()
  finally:
    if bar is not None:
      bar.close()
    checkpoints.close()
  if stopped:
    ctx.message(f'stopped by signal {ctx.stop.signal} at step {step} of round {r}; '
                f'checkpoint saved in {runs.checkpoint_dir(directory)}')
    return False
  common.mark(directory, 'trained', dict(phases.reference_settings(ctx, r), alpha=po.alpha,
                                   beta=po.beta, lr=po.lr),
        pairs=pairs, steps=num_steps, train=last)
  return True


def _log(window: Sequence[Mapping[str, Any]], step: int, writer: metrics_lib.MetricWriter,
         bar: metrics_lib.ProgressBar) -> dict[str, float]:
  applied = [m for m in window if not m['skipped']]
  if not applied:
    return {}
  sums = {k: sum(float(m[k]) for m in applied) for k in loss_lib.SUM_KEYS}
  scalars = loss_lib.summarize(sums)
  scalars.update(grad_norm=float(applied[-1]['grad_norm']), lr=float(applied[-1]['lr']))
  if len(applied) < len(window):
    scalars['skipped_steps'] = float(len(window) - len(applied))
  writer.write(step, 'train', scalars)
  bar.set_metrics(**{k: v for k, v in scalars.items() if k == 'loss'})
  return scalars

