"""A real SIGTERM: the training process saves a checkpoint and exits cleanly, and the
run resumed from it equals an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pasta_jax.training import checkpointing
from pasta_jax.training import loop

from tests.training.conftest import ROOT
from tests.training.conftest import tiny_config

# A constant learning rate makes the updates independent of train.num_steps, so
# the interrupted run (num_steps 10000) and the comparison runs agree step by step.
OVERRIDES = {'optimizer.schedule': 'constant', 'optimizer.warmup_steps': 0,
             'checkpoint.every_steps': 10000, 'eval.every_steps': 0, 'train.log_every': 1}


def _last_step(workdir):
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return max([json.loads(line)['step'] for line in f] or [0])
  except FileNotFoundError:
    return 0


@pytest.mark.slow  # over 25 s on 2 cores: the newest Python only (CI's budget)
def test_sigterm_saves_and_exits_cleanly_then_resumes_exactly(tfds_dir, tmp_path):
  workdir = str(tmp_path / 'killed')
  args = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
         'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}
  process = subprocess.Popen(
      [sys.executable, '-m', 'pasta_jax.train', '--config', 'configs/synth.py:tiny',
       '--workdir', workdir, f'--config.data.data_dir={tfds_dir}',
       '--config.train.num_steps=10000', '--config.data.prefetch=0', *args],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while _last_step(workdir) < 3:
      assert process.poll() is None, process.communicate()
      assert time.time() < deadline, 'training did not start'
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, stderr[-3000:]
  steps = checkpointing.Checkpoints(workdir, read_only=True).all_steps()
  assert len(steps) == 1 and 3 <= steps[0] < 10000, steps
  k = steps[0]
  assert f'stopped by signal {int(signal.SIGTERM)} at step {k}; checkpoint saved' in stdout

  n = k + 3
  resumed = loop.train_and_evaluate(tiny_config(tfds_dir, **OVERRIDES,
                                                **{'train.num_steps': n}), workdir)
  straight = loop.train_and_evaluate(tiny_config(tfds_dir, **OVERRIDES,
                                                 **{'train.num_steps': n}),
                                     str(tmp_path / 'straight'))
  assert resumed.step == straight.step == n
  for x, y in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(resumed.eval['loss'], straight.eval['loss'], rtol=1e-5)
