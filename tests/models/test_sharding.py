"""Logical axes on a faked 8-device CPU mesh ('data', 'fsdp', 'tensor') = (2, 2, 2).

The device count must be fixed before JAX starts, so the check runs in a
fresh Python process (sharded_check.py).
"""

import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def test_sharded_forward_and_decode_equal_unsharded(tmp_path):
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep +
         os.environ.get('PYTHONPATH', '')}
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'models', 'sharded_check.py'),
       str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'sharded == unsharded' in result.stdout
