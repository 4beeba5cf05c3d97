"""Generation with params on a (data, fsdp, tensor) = (2, 2, 2) mesh of fake CPU
devices and requests split over the batch axes equals single-device generation."""

import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def test_sharded_generation_equals_single_device():
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'interpreter', 'sharded_check.py')],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  assert 'sharded generation == single-device generation' in result.stdout
