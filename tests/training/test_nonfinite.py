"""A non-finite loss, gradient norm or update: the step keeps the old state, training
stops (or skips, as configured) and no non-finite state reaches a checkpoint."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax import runs
from pasta_jax.training import loop
from pasta_jax.training import step as step_lib

from tests.training.conftest import tiny_config
from tests.training.test_state_and_step import _batch
from tests.training.test_state_and_step import _opt
from tests.training.test_state_and_step import _step

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = pytest.mark.slow

# Checkpoints every 2 steps, only the newest kept: before the guard, the NaN
# checkpoints of steps 4 and 6 replaced the good one of step 2.
SHORT = {'train.num_steps': 6, 'checkpoint.every_steps': 2, 'checkpoint.keep': 1,
         'eval.every_steps': 0, 'eval.num_batches': 1, 'train.log_every': 1}


def test_a_nonfinite_update_is_not_applied():
  config = config_lib.resolve({'model': config_lib.model_fields('tiny')})
  batch = _batch(config_lib.model_config(config))
  # An infinite learning rate makes every updated param non-finite (the loss and
  # the gradients of the step are still finite).
  before, after, metrics = _step(config, _opt(warmup_steps=0, lr=float('inf')), batch)
  assert metrics['skipped'] == 1 and metrics['nonfinite_params'] == 1
  assert metrics['nonfinite_loss'] == 0 and metrics['nonfinite_grad_norm'] == 0
  assert np.isfinite(metrics['loss']) and int(after.step) == 1
  for x, y in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(before.opt_state)):
    np.testing.assert_array_equal(x, y)


def _poison(monkeypatch, steps):
  """Makes the train step see NaN loss weights when state.step is in `steps` (so
  training steps steps + 1 get a NaN loss and NaN gradients)."""
  original = step_lib.train_step

  def poisoned(state, batch, **kw):
    bad = jnp.isin(state.step, jnp.asarray(sorted(steps)))
    weights = jnp.where(bad, jnp.nan, batch['loss_weights'])
    return original(state, dict(batch, loss_weights=weights), **kw)

  monkeypatch.setattr(step_lib, 'train_step', poisoned)


def _train_rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r for r in map(json.loads, f) if r['split'] == 'train'}


def test_training_stops_at_the_first_nonfinite_step_and_keeps_the_good_checkpoint(
    tfds_dir, tmp_path, monkeypatch):
  _poison(monkeypatch, {2})
  workdir = str(tmp_path / 'run')
  with pytest.raises(errors.TrainingDiverged) as raised:
    loop.train_and_evaluate(tiny_config(tfds_dir, **SHORT), workdir, stream=io.StringIO())
  message = str(raised.value)
  assert raised.value.exit_status == 5
  assert message.startswith('training diverged at step 3: non-finite loss nan, gradient '
                            'norm nan; its update was not applied and nothing after step 2 '
                            'was saved\n')
  assert (f'the last good checkpoint is step 2 in {workdir}/checkpoints (the same command '
          'resumes from it); lower config.optimizer.lr (now 0.003)') in message
  assert "config.train.on_nonfinite='skip'" in message
  assert len(message.splitlines()) == 2
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['2']
  run = runs.load_run(workdir)
  assert run.step == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.params))
  assert set(_train_rows(workdir)) == {1, 2}


def test_skip_mode_skips_updates_until_too_many(tfds_dir, tmp_path, monkeypatch):
  _poison(monkeypatch, {1, 3})
  workdir = str(tmp_path / 'run')
  config = tiny_config(tfds_dir, **SHORT, **{'train.on_nonfinite': 'skip',
                                             'train.max_skipped_steps': 1})
  out = io.StringIO()
  with pytest.raises(errors.TrainingDiverged) as raised:
    loop.train_and_evaluate(config, workdir, stream=out)
  assert 'step 2: non-finite loss nan, gradient norm nan; update skipped (1 of at most 1' \
      in out.getvalue()
  assert str(raised.value).startswith(
      'training diverged: 2 steps were skipped for non-finite values, more than '
      'config.train.max_skipped_steps=1 (the last, step 4: non-finite loss nan')
  assert 'the last good checkpoint is step 2' in str(raised.value)
  # Step 2 was skipped, step 3 trained on (finite loss logged), step 4 stopped it.
  rows = _train_rows(workdir)
  assert sorted(rows) == [1, 3] and all(np.isfinite(r['loss']) for r in rows.values())
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['2']


def test_the_policy_keys_are_checked():
  config = tiny_config('', **{'train.on_nonfinite': 'ignore'})
  with pytest.raises(config_lib.ConfigError, match=r"config\.train\.on_nonfinite='ignore': "
                     r"expected one of \('stop', 'skip'\)"):
    config_lib.resolve(config)
  config = tiny_config('', **{'train.max_skipped_steps': -1})
  with pytest.raises(config_lib.ConfigError, match=r'train\.max_skipped_steps=-1'):
    config_lib.resolve(config)
  resolved = config_lib.resolve(tiny_config(''))
  assert resolved.train.on_nonfinite == 'stop' and resolved.train.max_skipped_steps == 10
