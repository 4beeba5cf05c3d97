"""Schedules, optimizer, loss and metrics, gradient accumulation (one device)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax import config as config_lib
from pasta_jax import masks
from pasta_jax.models import config as model_config_lib
from pasta_jax.models import transformer
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib


def _opt(**kw):
  opt = config_lib.defaults().optimizer
  opt.update(kw)
  return opt


@pytest.mark.parametrize('schedule', ['linear', 'cosine', 'constant'])
def test_schedules(schedule):
  fn = state_lib.lr_schedule(_opt(lr=1e-3, schedule=schedule, warmup_steps=10,
                                  end_lr_factor=0.1), num_steps=110)
  values = np.array([float(fn(s)) for s in range(111)])
  np.testing.assert_allclose(values[:11], np.linspace(0, 1e-3, 11), rtol=1e-6)
  if schedule == 'constant':
    np.testing.assert_allclose(values[10:], 1e-3)
  else:
    assert values[110] == pytest.approx(1e-4)
    assert (np.diff(values[10:]) < 0).all()
    mid = 1e-4 + 0.5 * (1e-3 - 1e-4)  # half-way through the decay
    assert values[60] == pytest.approx(mid, rel=1e-5)
    if schedule == 'cosine':
      assert values[35] > 1e-4 + 0.75 * (1e-3 - 1e-4)  # slow at first
  fn = state_lib.lr_schedule(_opt(lr=1e-5, schedule='linear', warmup_steps=0,
                                  end_lr_factor=0.0), num_steps=4)
  np.testing.assert_allclose([float(fn(s)) for s in range(5)],
                             [1e-5, 7.5e-6, 5e-6, 2.5e-6, 0.0], rtol=1e-6, atol=1e-12)


def _batch(config, rows=4, length=24, seed=0):
  """Two packed examples per row; the second has an async thread."""
  rng = np.random.default_rng(seed)
  half = length // 2
  meta = masks.causal_meta(length)
  batch = {f: np.broadcast_to(getattr(meta, f), (rows, length)).astype(np.int32).copy()
           for f in meta._fields}
  batch['segment'][:, half:] = 2
  batch['thread'][:, half + 4:half + 8] = 1
  batch['tokens'] = rng.integers(0, config.vocab_size, (rows, length)).astype(np.int32)
  batch['targets'] = rng.integers(0, config.vocab_size, (rows, length)).astype(np.int32)
  batch['positions'] = batch['order'].copy()
  batch['loss_weights'] = (rng.random((rows, length)) < 0.7).astype(np.float32)
  batch['segment'][-1, -3:] = 0  # padding
  batch['loss_weights'][-1, -3:] = 0
  return batch


def test_loss_and_metrics_against_numpy():
  config = model_config_lib.get_config('tiny')
  params = transformer.init_params(config, jax.random.key(0))
  batch = _batch(config)
  model = transformer.Transformer(config)
  total, sums = jax.jit(lambda p, b: step_lib.loss_sums(p, b, model))(params, batch)
  meta = step_lib.pipeline.meta_of(batch)
  logits = np.asarray(model.apply({'params': params}, batch['tokens'], batch['positions'],
                                  (meta, meta))[0], np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                           keepdims=True)) \
      - logits.max(-1, keepdims=True)
  ce = -np.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0]
  right = logits.argmax(-1) == batch['targets']
  w = batch['loss_weights']
  for kind, mask in (('', np.ones_like(w, bool)), ('main_', batch['thread'] == 0),
                     ('async_', batch['thread'] > 0)):
    assert float(sums[f'{kind}loss']) == pytest.approx((ce * w * mask).sum(), rel=1e-5)
    assert float(sums[f'{kind}correct']) == pytest.approx((right * w * mask).sum())
    assert float(sums[f'{kind}weight']) == pytest.approx((w * mask).sum())
  assert float(sums['tokens']) == (batch['segment'] > 0).sum()
  assert float(total) == pytest.approx(float(sums['loss']))
  summary = step_lib.summarize(jax.device_get(sums))
  assert summary['loss'] == pytest.approx((ce * w).sum() / w.sum(), rel=1e-5)
  assert summary['main_targets'] + summary['async_targets'] == summary['targets']
  assert 0 < summary['async_targets'] < summary['targets']


def _step(config, opt, batch):
  model_config = config_lib.model_config(config)
  mesh = partitioning.make_mesh((1, 1, 1))
  rules = config_lib.rules_for(model_config, mesh)
  optimizer, schedule = state_lib.make_optimizer(opt, 100)
  shardings = state_lib.state_shardings(model_config, optimizer, mesh, rules)
  state = state_lib.init_state(model_config, optimizer, jax.random.key(1), shardings)
  before = jax.device_get(state)
  train, _ = step_lib.jit_steps(model_config=model_config, optimizer=optimizer,
                                schedule=schedule, grad_accum_steps=opt.grad_accum_steps,
                                state_shardings=shardings,
                                batch_sharding=partitioning.batch_sharding(mesh, rules))
  with step_lib.sharded(mesh, rules):
    state, metrics = train(state, batch)
  return before, jax.device_get(state), jax.device_get(metrics)


def test_gradient_accumulation_equals_the_whole_batch():
  config = config_lib.resolve({'model': config_lib.model_fields('tiny')})
  batch = _batch(config_lib.model_config(config), rows=8)
  # A large eps keeps Adam's first update proportional to the gradient (with a small
  # one it is lr * sign(g), which float noise flips where g is ~0).
  _, whole, whole_metrics = _step(config, _opt(warmup_steps=0, lr=1e-2, eps=1e-3), batch)
  _, accumulated, metrics = _step(
      config, _opt(warmup_steps=0, lr=1e-2, eps=1e-3, grad_accum_steps=4), batch)
  for key in step_lib.sum_keys():
    assert metrics[key] == pytest.approx(whole_metrics[key], rel=1e-5), key
  assert metrics['grad_norm'] == pytest.approx(whole_metrics['grad_norm'], rel=1e-4)
  for x, y in zip(jax.tree.leaves(accumulated), jax.tree.leaves(whole)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_step_updates_decay_and_clipping():
  config = config_lib.resolve({'model': config_lib.model_fields('tiny')})
  batch = _batch(config_lib.model_config(config))
  opt = _opt(warmup_steps=0, lr=1e-2, grad_clip_norm=1e-3, weight_decay=0.5)
  before, after, metrics = _step(config, opt, batch)
  assert int(after.step) == 1 and metrics['lr'] == pytest.approx(1e-2)
  assert metrics['grad_norm'] > 1e-3  # clipped to 1e-3 before Adam
  # Adam's first step moves every weight by about lr (sign of the gradient); decay
  # adds lr * 0.5 * w on matrices only.
  w0 = before.params['layer_0']['mlp']['linear']
  w1 = after.params['layer_0']['mlp']['linear']
  assert np.abs(w1 - w0).max() == pytest.approx(1e-2 * (1 + 0.5 * np.abs(w0).max()), rel=0.05)
  scale0 = before.params['final_norm']['scale']
  scale1 = after.params['final_norm']['scale']
  assert np.abs(scale1 - scale0).max() == pytest.approx(1e-2, rel=0.05)


def test_state_shardings_follow_the_params():
  model_config = model_config_lib.get_config('tiny')
  mesh = partitioning.make_mesh((1, 1, 1))
  rules = config_lib.rules_for(model_config, mesh)
  optimizer, _ = state_lib.make_optimizer(_opt(), 10)
  shardings = state_lib.state_shardings(model_config, optimizer, mesh, rules)
  abstract = state_lib.abstract_state(model_config, optimizer, shardings)
  assert abstract.step.shape == () and abstract.step.dtype == jnp.int32
  specs = jax.tree.leaves(jax.tree.map(lambda s: s.spec, shardings.opt_state))
  assert jax.sharding.PartitionSpec(None, 'tensor', 'fsdp') in specs  # mu/nu of gating
  assert jax.tree.structure(abstract) == jax.tree.structure(shardings)


def test_bfloat16_compute_keeps_float32_params():
  config = config_lib.resolve({'model': config_lib.model_fields('tiny', dtype='bfloat16')})
  batch = _batch(config_lib.model_config(config))
  f32_config = config_lib.resolve({'model': config_lib.model_fields('tiny')})
  _, after, metrics = _step(config, _opt(warmup_steps=0), batch)
  _, _, f32_metrics = _step(f32_config, _opt(warmup_steps=0), batch)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(after.params))
  # Same init, same batch: the bf16 forward pass is close to, but not exactly, f32's.
  assert metrics['loss'] != f32_metrics['loss']
  assert metrics['loss'] == pytest.approx(f32_metrics['loss'], rel=0.02)
