"""The BoNBoN loss and the stage-2 train step (docs/design.md section 7).

Per pair (y+, y-) of one prompt, with logp the summed target log-probs of
`logprobs.pair_logprobs` and logp_ref the frozen reference's (stored in the
batch as data):

  h = [logp(y+) - logp(y-)] - [logp_ref(y+) - logp_ref(y-)]
  L = alpha * (-logp(y+)) + (1 - alpha) * (h - 1 / (2 beta))**2

and the loss is L averaged over the batch's pairs. Like stage 1, the step
returns *sums* over pairs (`summarize` turns them into means), keeps the old
state when something is not finite (the same `nonfinite_*` / `skipped` metrics,
so `step.NonfiniteGuard` reads them), and shards by the same state shardings.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax

from pasta_jax.data import pipeline
from pasta_jax.models.config import TransformerConfig
from pasta_jax.preference import logprobs
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib
from pasta_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]

# Sums over pairs that a step reports; `summarize` divides all but `pairs` by it.
SUM_KEYS = ('loss', 'sft', 'ipo', 'h', 'margin', 'h_positive', 'chosen_logp',
            'rejected_logp', 'chosen_targets', 'rejected_targets', 'pairs')


def check_hyperparameters(alpha: float, beta: float) -> None:
  """Raises ValueError unless 0 <= alpha <= 1 and beta > 0."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'BoNBoN alpha must be in [0, 1], got {alpha}')
  if not beta > 0.0:
    raise ValueError(f'BoNBoN beta must be > 0, got {beta}')


def bonbon_sums(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
                ref_rejected: jax.Array, *, alpha: float | jax.Array,
                beta: float | jax.Array, mask: jax.Array | None = None
                ) -> dict[str, jax.Array]:
  """Sums over pairs of the loss and its parts; the inputs are per pair, any shape.

  `mask` (same shape; None: every entry) marks the entries that are pairs.
  Keys: loss, sft (-logp(y+)), ipo ((h - 1/(2 beta))**2), h, margin
  (logp(y+) - logp(y-)), h_positive (pairs with h > 0), pairs.
  """
  chosen = chosen.astype(jnp.float32)
  rejected = rejected.astype(jnp.float32)
  margin = chosen - rejected
  h = margin - (ref_chosen.astype(jnp.float32) - ref_rejected.astype(jnp.float32))
  sft = -chosen
  ipo = jnp.square(h - 1.0 / (2.0 * beta))
  loss = alpha * sft + (1.0 - alpha) * ipo
  w = jnp.ones_like(chosen) if mask is None else mask.astype(jnp.float32)
  # `where`, not a product: an entry that is no pair contributes exactly 0.
  total = lambda x: jnp.sum(jnp.where(w > 0, x * w, 0.0))
  return {'loss': total(loss), 'sft': total(sft), 'ipo': total(ipo), 'h': total(h),
          'margin': total(margin), 'h_positive': total((h > 0).astype(jnp.float32)),
          'pairs': jnp.sum(w)}


def bonbon_loss(chosen: jax.Array, rejected: jax.Array, ref_chosen: jax.Array,
                ref_rejected: jax.Array, *, alpha: float | jax.Array,
                beta: float | jax.Array, mask: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss averaged over pairs, means over pairs of sft, ipo, h, margin, h_positive).

  Differentiable in all four log-prob inputs; the train step feeds the
  reference ones as data, so only the policy's get a gradient there.
  """
  sums = bonbon_sums(chosen, rejected, ref_chosen, ref_rejected, alpha=alpha, beta=beta,
                     mask=mask)
  n = jnp.maximum(sums['pairs'], 1.0)
  metrics = {k: v / n for k, v in sums.items() if k != 'pairs'}
  metrics['pairs'] = sums['pairs']
  return metrics['loss'], metrics


def pair_sums(params, batch: Batch, *, model_config: TransformerConfig, alpha: float,
              beta: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(summed BoNBoN loss, `SUM_KEYS` sums) of a pair batch with reference fields."""
  logps = logprobs.pair_logprobs(params, batch, model_config=model_config)
  mask_BK = batch['pair_index'] >= 0
  sums = bonbon_sums(logps['chosen'], logps['rejected'], batch['ref_chosen'],
                     batch['ref_rejected'], alpha=alpha, beta=beta, mask=mask_BK)
  real = lambda x: jnp.sum(jnp.where(mask_BK, x, 0.0))
  sums.update(chosen_logp=real(logps['chosen']), rejected_logp=real(logps['rejected']),
              chosen_targets=real(logps['chosen_targets']),
              rejected_targets=real(logps['rejected_targets']))
  return sums['loss'], sums


def policy_state(reference_params, optimizer: optax.GradientTransformation,
                 shardings: TrainState) -> TrainState:
  """A step-0 train state whose params start as a *copy* of the reference params.

  `state.state_from_params` and the jitted step donate their inputs; the copy
  keeps the reference arrays alive and untouched.
  """
  copy = jax.tree.map(jnp.copy, reference_params)
  return state_lib.state_from_params(copy, optimizer, shardings)


def grads_and_sums(params, batch: Batch, accum: int, **kw):
  """Gradients of the summed loss (not yet normalised) and the sums
  (`step.accumulated_grads`: over `accum` micro-batches as in stage 1)."""
  return step_lib.accumulated_grads(functools.partial(pair_sums, **kw), params, batch, accum,
                                    SUM_KEYS)


def train_step(state: TrainState, batch: Batch, *, model_config: TransformerConfig,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               alpha: float, beta: float, grad_accum_steps: int = 1
               ) -> tuple[TrainState, dict[str, Any]]:
  """One optimizer update of the policy on the batch's mean BoNBoN loss.

  `batch`: a pair batch with `ref_chosen` / `ref_rejected` (`logprobs.with_reference`).
  The state holds the policy only; the reference enters as those stored numbers.
  Non-finite loss, gradient norm or params keep the old state, as in stage 1.
  """
  grads, sums = grads_and_sums(state.params, batch, grad_accum_steps,
                               model_config=model_config, alpha=alpha, beta=beta)
  return step_lib.guarded_update(state, grads, sums, count=sums['pairs'],
                                 optimizer=optimizer, schedule=schedule)


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
  """Means over pairs from summed metrics (`pairs` stays a count)."""
  n = float(sums['pairs'])
  out = {'pairs': n}
  if n > 0:
    out.update({k: float(sums[k]) / n for k in SUM_KEYS if k != 'pairs'})
  return out


def batch_shardings(batch_sharding: NamedSharding) -> dict[str, NamedSharding]:
  """Shardings of a pair batch's fields: the [B, T] ones like stage 1's batch, the
  [B, K] pair fields along the same batch axes only."""
  spec = batch_sharding.spec
  rows = NamedSharding(batch_sharding.mesh, P(spec[0] if len(spec) else None))
  out = {k: batch_sharding for k in pipeline.FIELDS}
  out.update({k: rows for k in logprobs.PAIR_FIELDS + logprobs.REFERENCE_FIELDS})
  return out


def jit_train_step(*, model_config: TransformerConfig, optimizer, schedule, alpha: float,
                   beta: float, grad_accum_steps: int, state_shardings: TrainState,
                   batch_sharding: NamedSharding):
  """`train_step` jitted with explicit shardings (`state.state_shardings`,
  `partitioning.batch_sharding`); the state is donated. Call it inside
  `step.sharded(mesh, rules)`, like stage 1's steps."""
  check_hyperparameters(alpha, beta)
  return jax.jit(
      functools.partial(train_step, model_config=model_config, optimizer=optimizer,
                        schedule=schedule, alpha=alpha, beta=beta,
                        grad_accum_steps=grad_accum_steps),
      in_shardings=(state_shardings, batch_shardings(batch_sharding)),
      out_shardings=(state_shardings, None), donate_argnums=0)
