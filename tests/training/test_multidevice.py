"""Sharded training on 8 faked CPU devices (fresh processes: the device count is
fixed when JAX starts; see multidevice_check.py)."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from pasta_jax import runs
from pasta_jax.models import checkpoint as model_checkpoint

from tests.training.conftest import ROOT

SCRIPT = os.path.join(ROOT, 'tests', 'training', 'multidevice_check.py')


def _run(*args):
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run([sys.executable, SCRIPT, *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return result.stdout


def test_sharded_step_equals_single_device_step(tfds_dir):
  assert 'sharded step == single-device step' in _run('step', tfds_dir)


@pytest.mark.slow  # over 25 s on 2 cores: the newest Python only (CI's budget)
def test_resume_on_another_device_count_and_load_sharded(interrupted, tfds_dir, tmp_path):
  straight, stopped, root = interrupted
  assert stopped.step == 6
  shutil.copytree(root / 'stopped', tmp_path / 'moved')
  # Steps 7..10 on a (2, 2, 2) mesh of 8 devices, from the 1-device checkpoint.
  assert 'resumed on 8 devices' in _run('resume', tfds_dir, tmp_path / 'moved')
  moved = runs.load_run(str(tmp_path / 'moved'))
  assert moved.step == 10
  for x, y in zip(jax.tree.leaves(moved.params), jax.tree.leaves(straight.state.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  # load_run straight into the shardings of an 8-device mesh.
  assert 'loaded onto 8 devices' in _run('load', root / 'straight', tmp_path / 'p.npz')
  loaded = np.load(tmp_path / 'p.npz')
  expected = model_checkpoint.flatten(jax.device_get(straight.state.params))
  assert sorted(loaded.files) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)
