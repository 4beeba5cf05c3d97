"""Fixtures: the tiny synthetic dataset (built once, in a tmp dir) and tiny configs."""

import os

import jax
import ml_collections
import pytest

from pasta_jax.data import build

from configs import synth

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

# Training tests compile small models many times; XLA's optimisations cost more
# compile time than they save at these sizes.
jax.config.update('jax_disable_most_optimizations', True)


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A data_dir holding pasta_synth/tiny (400/40/40 examples)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = synth.get_config('tiny')
  config.data.data_dir = data_dir
  build.builder(config.data)
  return data_dir


def tiny_config(tfds_dir, preset='tiny', **overrides):
  """configs/synth.py:tiny on the tmp dataset, fields overridden by 'a.b' keys."""
  config = synth.get_config(preset)
  config.data.data_dir = tfds_dir
  config.data.prefetch = 0
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  return config


@pytest.fixture
def no_compile(monkeypatch):
  """Fails the test if training gets as far as building or compiling a step."""
  def forbidden(*args, **kwargs):
    raise AssertionError('compiled before the error')
  from pasta_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from pasta_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(step_lib, 'jit_steps', forbidden)
  monkeypatch.setattr(state_lib, 'init_state', forbidden)
  monkeypatch.setattr(state_lib, 'state_shardings', forbidden)


# A 10-step run with checkpoints every 4 steps (used by the resume tests).
RESUMABLE = {'train.num_steps': 10, 'checkpoint.every_steps': 4, 'eval.every_steps': 0,
             'train.log_every': 2, 'optimizer.warmup_steps': 3}


@pytest.fixture(scope='session')
def interrupted(tfds_dir, tmp_path_factory):
  """(straight, stopped): RESUMABLE run to the end, and the same run stopped after
  step 6 (its workdir holds checkpoints 4 and 6; copy it before resuming)."""
  from pasta_jax.training import loop  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('interrupted')
  straight = loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE), str(root / 'straight'))
  with pytest.MonkeyPatch.context() as monkeypatch:
    stop_after(monkeypatch, 6)
    stopped = loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE),
                                      str(root / 'stopped'))
  return straight, stopped, root


def stop_after(monkeypatch, k):
  """Makes train_and_evaluate act as if SIGTERM arrived during step k: it saves and
  returns (the signal path of `loop.StopRequest`, without a signal)."""
  from pasta_jax.training import loop  # pylint: disable=g-import-not-at-top

  class StopAfter(loop.StopRequest):

    def requested(self):
      self.calls = getattr(self, 'calls', 0) + 1
      if self.calls >= k:
        self.signal = 15
      return self.signal is not None

  monkeypatch.setattr(loop, 'StopRequest', StopAfter)
