"""The BoNBoN loss against numpy, and the stage-2 train step on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pasta_jax import config as config_lib
from pasta_jax import models
from pasta_jax.data import synthetic
from pasta_jax.preference import logprobs
from pasta_jax.preference import loss as loss_lib
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib

from tests import fixtures

_fast_compiles = pytest.fixture(scope='module', autouse=True)(fixtures.fast_compiles)


def numpy_bonbon(c, r, rc, rr, mask, alpha, beta):
  """(mean loss, d mean loss / d (c, r, rc, rr)) straight from the formula, float64."""
  c, r, rc, rr = (np.asarray(x, np.float64) for x in (c, r, rc, rr))
  w = mask.astype(np.float64)
  n = max(w.sum(), 1.0)
  h = (c - r) - (rc - rr)
  per_pair = alpha * (-c) + (1 - alpha) * (h - 1 / (2 * beta)) ** 2
  d_h = (1 - alpha) * 2 * (h - 1 / (2 * beta)) * w / n  # dL/dh per pair
  grads = (-alpha * w / n + d_h, -d_h, -d_h, d_h)
  return (per_pair * w).sum() / n, grads


@pytest.mark.parametrize('alpha,beta', [(0.0, 0.1), (0.0, 5.0), (0.3, 0.5), (1.0, 0.1),
                                        (1.0, 100.0)])
def test_loss_and_gradient_against_numpy(alpha, beta):
  rng = np.random.default_rng(0)
  shape = (3, 4)
  c, r, rc, rr = (-rng.uniform(5, 60, shape).astype(np.float32) for _ in range(4))
  mask = rng.random(shape) < 0.7
  expected, expected_grads = numpy_bonbon(c, r, rc, rr, mask, alpha, beta)

  def f(*xs):
    return loss_lib.bonbon_loss(*xs, alpha=alpha, beta=beta, mask=jnp.asarray(mask))

  (value, metrics), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3),
                                                       has_aux=True))(c, r, rc, rr)
  assert float(value) == pytest.approx(expected, rel=1e-5)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not np.asarray(got)[~mask].any()  # no pair, no gradient
  h = (c - r) - (rc - rr)
  n = mask.sum()
  assert float(metrics['pairs']) == n
  assert float(metrics['sft']) == pytest.approx(-c[mask].sum() / n, rel=1e-5)
  assert float(metrics['ipo']) == pytest.approx(
      ((h[mask].astype(np.float64) - 1 / (2 * beta)) ** 2).sum() / n, rel=1e-5)
  assert float(metrics['h']) == pytest.approx(h[mask].sum() / n, rel=1e-4, abs=1e-4)
  assert float(metrics['margin']) == pytest.approx((c - r)[mask].sum() / n, rel=1e-5)
  assert float(metrics['h_positive']) == pytest.approx((h[mask] > 0).mean())
  if alpha == 1.0:  # pure SFT on y+: the rest has no say
    assert float(value) == pytest.approx(float(metrics['sft']), rel=1e-6)
    assert not any(np.asarray(g).any() for g in grads[1:])
  if alpha == 0.0:  # pure IPO
    assert float(value) == pytest.approx(float(metrics['ipo']), rel=1e-6)


def test_ipo_minimum_is_at_h_equal_one_over_two_beta():
  beta = 0.25
  zero = jnp.zeros(2)
  value, metrics = loss_lib.bonbon_loss(jnp.array([2.0, -1.0]), jnp.array([0.0, -3.0]),
                                        zero, zero, alpha=0.0, beta=beta)
  assert float(metrics['h']) == 2.0
  assert float(value) == 0.0
  assert float(loss_lib.bonbon_loss(jnp.ones(1), jnp.ones(1), jnp.zeros(1), jnp.zeros(1),
                                    alpha=0.0, beta=beta)[0]) == 4.0


def test_bad_hyperparameters():
  with pytest.raises(ValueError, match='alpha'):
    loss_lib.check_hyperparameters(1.5, 0.1)
  with pytest.raises(ValueError, match='beta'):
    loss_lib.check_hyperparameters(0.5, 0.0)


# -- the train step ------------------------------------------------------------


@pytest.fixture(scope='module')
def tok():
  return fixtures.synthetic_tokenizer(300)


def _pair_batch(tok, num_pairs=4):
  """One pair batch (2 rows, 2 pairs per row) of short synthetic prompts: y+ the
  reference answer, y- the next prompt's."""
  examples = sorted(synthetic.generate('train', 40), key=lambda e: len(e.annotated))
  examples = examples[:num_pairs + 1]
  pairs = [logprobs.layout_pair(e.prompt, e.annotated, examples[i + 1].annotated, tok)
           for i, e in enumerate(examples[:num_pairs])]
  packed = logprobs.pack_pairs(pairs, batch_size=2, seq_len=2 * max(map(len, pairs)),
                               pairs_per_row=2, pad_id=tok.pad_id)
  assert len(packed.batches) == 1 and not packed.too_long
  return packed


def test_train_step_trains_the_policy_and_never_the_reference(tok):
  model_config = models.get_config('tiny', vocab_size=tok.vocab_size)
  # Plain gradient descent (clipped): a small enough step lowers the loss every time.
  # (AdamW's first update, about lr * sign(g) on every weight, moves summed
  # log-probs so far that the IPO term overshoots even at lr 1e-5.)
  lr = 1e-3
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr))
  schedule = optax.constant_schedule(lr)
  mesh = partitioning.make_mesh((1, 1, 1))
  rules = config_lib.rules_for(model_config, mesh)
  shardings = state_lib.state_shardings(model_config, optimizer, mesh, rules)
  reference = models.init_params(model_config, jax.random.key(3))
  frozen = jax.device_get(reference)

  packed = _pair_batch(tok)
  ref = logprobs.reference_logprobs(reference, packed.batches, packed.num_pairs,
                                    model_config=model_config)
  assert np.isfinite(ref['chosen']).all() and np.isfinite(ref['rejected']).all()
  batch = logprobs.with_reference(packed.batches[0], ref)
  state = loss_lib.policy_state(reference, optimizer, shardings)
  train = loss_lib.jit_train_step(
      model_config=model_config, optimizer=optimizer, schedule=schedule, alpha=0.5,
      beta=0.5, grad_accum_steps=1, state_shardings=shardings,
      batch_sharding=partitioning.batch_sharding(mesh, rules))
  summaries = []
  with step_lib.sharded(mesh, rules):
    for _ in range(5):
      state, metrics = train(state, batch)
      metrics = jax.device_get(metrics)
      assert not metrics['skipped']
      summaries.append(loss_lib.summarize(metrics))
  # Step 1 starts at the reference: h = 0 for every pair, the IPO term (1 / 2 beta)^2.
  assert summaries[0]['pairs'] == packed.num_pairs
  assert summaries[0]['h'] == pytest.approx(0.0, abs=1e-3)
  assert summaries[0]['ipo'] == pytest.approx(1.0, rel=1e-3)
  assert summaries[0]['chosen_logp'] == pytest.approx(ref['chosen'].mean(), rel=1e-5)
  losses = [s['loss'] for s in summaries]
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  # The reference params are intact (not donated, not updated); the policy moved.
  for got, want in zip(jax.tree.leaves(jax.device_get(reference)), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(got, want)
  moved = [not np.array_equal(p, f) for p, f in
           zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(frozen))]
  assert all(moved)
  # The stored reference numbers are still the reference model's.
  again = logprobs.reference_logprobs(reference, packed.batches, packed.num_pairs,
                                      model_config=model_config)
  np.testing.assert_array_equal(again['chosen'], ref['chosen'])


def test_gradient_accumulation_equals_the_whole_batch(tok):
  model_config = models.get_config('tiny', vocab_size=tok.vocab_size)
  params = models.init_params(model_config, jax.random.key(3))
  packed = _pair_batch(tok)
  reference = logprobs.reference_logprobs(params, packed.batches, packed.num_pairs,
                                          model_config=model_config)
  reference['chosen'] = reference['chosen'] - 1.0  # h = 1 for every pair
  batch = logprobs.with_reference(packed.batches[0], reference)

  whole = jax.jit(lambda: loss_lib.grads_and_sums(
      params, batch, 1, model_config=model_config, alpha=0.3, beta=0.5))()
  split = jax.jit(lambda: loss_lib.grads_and_sums(
      params, batch, 2, model_config=model_config, alpha=0.3, beta=0.5))()
  for key in loss_lib.SUM_KEYS:
    assert float(split[1][key]) == pytest.approx(float(whole[1][key]), rel=1e-5, abs=1e-4)
  for x, y in zip(jax.tree.leaves(split[0]), jax.tree.leaves(whole[0])):
    # h is a difference of float32 sums over hundreds of targets (relative error
    # ~1e-4 in h - 1/(2 beta)): compare on the scale of the leaf.
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-3 * np.abs(y).max())
