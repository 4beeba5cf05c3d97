"""Damaged checkpoints and full disks are one- or two-line user errors.

A damaged latest checkpoint (a truncated array file, a missing item, a missing
input-pipeline state, a config that is not JSON, non-finite params) is a
CheckpointError naming the step, what is wrong and the earlier steps, for
training's resume and for `runs.load_run`; a disk that fills up in an async save
is one ResourceError.
"""

import errno
import glob
import io
import logging
import os
import re
import shutil
import subprocess
import sys

import grain
import jax.numpy as jnp
import ml_collections
import pytest

from pasta_jax import errors
from pasta_jax import runs
from pasta_jax.models import checkpoint as model_checkpoint
from pasta_jax.training import checkpointing
from pasta_jax.training import loop
from pasta_jax.training.state import TrainState

from tests.training.conftest import ROOT
from tests.training.conftest import tiny_config

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = pytest.mark.slow

RUN = {'train.num_steps': 4, 'checkpoint.every_steps': 2, 'eval.every_steps': 0,
       'eval.num_batches': 1, 'train.log_every': 2}


@pytest.fixture(scope='module')
def saved(tfds_dir, tmp_path_factory):
  """A tiny run with checkpoints 2 and 4 (copy it before damaging it)."""
  workdir = str(tmp_path_factory.mktemp('saved') / 'run')
  loop.train_and_evaluate(tiny_config(tfds_dir, **RUN), workdir, stream=io.StringIO())
  return workdir


def _truncate(step_dir):
  path = max(glob.glob(os.path.join(step_dir, 'params', 'ocdbt.process_0', 'd', '*')),
             key=os.path.getsize)
  os.truncate(path, os.path.getsize(path) // 2)
  return r'the array \S+ in {dir}/params cannot be read \(OUT_OF_RANGE: a truncated or corrupt'


def _remove_params(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'params'))
  return 'its params/ directory is missing'


def _remove_data_state(step_dir):
  os.remove(os.path.join(step_dir, 'data', 'process_0-of-1.json'))
  return r'its data/ directory holds no input-pipeline state \(no process_<i>-of-<n>\.json'


def _break_config(step_dir):
  with open(os.path.join(step_dir, 'config', 'metadata'), 'w') as f:
    f.write('{"model": ')
  return r'{dir}/config/metadata is not valid JSON \(Expecting value'


def _nan_params(step_dir):
  path = os.path.join(step_dir, 'params')
  params = runs.load_run(os.path.dirname(os.path.dirname(step_dir))).params
  params['final_norm']['scale'] = params['final_norm']['scale'].at[3].set(jnp.nan)
  shutil.rmtree(path)
  model_checkpoint.save_params(path, params)
  return r'non-finite values \(NaN or Inf\) in params/final_norm/scale'


@pytest.mark.parametrize('damage', [_truncate, _remove_params, _remove_data_state,
                                    _break_config, _nan_params])
def test_a_damaged_latest_checkpoint_names_the_earlier_one(saved, tfds_dir, tmp_path, damage):
  workdir = str(tmp_path / 'run')
  shutil.copytree(saved, workdir)
  directory = os.path.join(workdir, 'checkpoints')
  step_dir = os.path.join(directory, '4')
  reason = damage(step_dir).replace('{dir}', re.escape(step_dir))
  first = rf'the checkpoint of step 4 in {re.escape(directory)} is damaged: {reason}'

  with pytest.raises(errors.CheckpointError) as raised:
    loop.train_and_evaluate(tiny_config(tfds_dir, **{**RUN, 'train.num_steps': 6}), workdir,
                            stream=io.StringIO())
  lines = str(raised.value).splitlines()
  assert raised.value.exit_status == 4 and len(lines) == 2, str(raised.value)
  assert re.match(first, lines[0]), (first, lines[0])
  assert lines[1] == (f'earlier checkpoints: steps [2]; to resume from step 2, move '
                      f'{step_dir} out of {directory} (or delete it) and run the same '
                      'command again')

  if damage is not _remove_data_state:  # decoding does not read the pipeline state
    with pytest.raises(errors.CheckpointError) as raised:
      runs.load_run(workdir)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2 and re.match(first, lines[0]), (first, lines[0])
    assert lines[1] == 'other checkpoints: steps [2] (load one with step=..., e.g. `--step 2` ' \
        'of pasta_jax.decode)'
  # The earlier step loads, and is the latest once the damaged one is moved away.
  assert runs.load_run(workdir, step=2).step == 2
  shutil.move(step_dir, str(tmp_path / 'damaged_4'))
  assert runs.load_run(workdir).step == 2


def test_missing_runs_and_steps_name_what_exists(saved, tmp_path):
  with pytest.raises(errors.CheckpointError, match=r'has no checkpoint of step 3; it has '
                     r'steps \[2, 4\]'):
    runs.load_run(saved, step=3)
  typo = os.path.join(os.path.dirname(saved), 'rnu')
  with pytest.raises(errors.CheckpointError, match=rf'^{re.escape(typo)} does not exist; run '
                     rf'directories in {re.escape(os.path.dirname(saved))}: run$'):
    runs.load_run(typo)
  (tmp_path / 'checkpoints').mkdir()
  with pytest.raises(errors.CheckpointError, match='holds no checkpoint'):
    runs.load_run(str(tmp_path))
  with pytest.raises(errors.CheckpointError, match='tokenizer.model not found'):
    runs.load_tokenizer(str(tmp_path))


def test_a_broken_converted_config_names_the_file(tmp_path):
  path = tmp_path / model_checkpoint.CONFIG_FILE
  path.write_text('{"num_layers": 2,')
  with pytest.raises(errors.CheckpointError,
                     match=rf'^{re.escape(str(path))} is not a valid model config: '):
    model_checkpoint.read_config(str(tmp_path))
  path.unlink()
  with pytest.raises(errors.CheckpointError, match=rf'^{re.escape(str(path))} is missing$'):
    model_checkpoint.load_converted(str(tmp_path))


# -- A full disk. ------------------------------------------------------------


def _state(step):
  return TrainState(step=jnp.int32(step), params={'w': jnp.full((4,), float(step))},
                    opt_state={'m': jnp.zeros((4,))})


def _fill_the_disk(monkeypatch, directory):
  """Makes orbax's array writes fail as tensorstore does on a full disk."""
  # pylint: disable-next=g-import-not-at-top
  from orbax.checkpoint._src.serialization import serialization

  async def full(*args, **kwargs):
    del args, kwargs
    tmp = f'{directory}/2.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/ocdbt.process_0/'
    raise ValueError(
        f'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "{tmp}": '
        f'Failed writing: "{tmp}d/0123": Failed to write 16 bytes to file 11: No space left '
        "on device [os_error_code='28']")

  monkeypatch.setattr(serialization, 'async_serialize_from_host', full)


class _Records(logging.Handler):

  def __init__(self):
    super().__init__()
    self.texts = []

  def emit(self, record):
    self.texts.append(self.format(record))


def test_a_full_disk_during_an_async_save_is_one_resource_error(tmp_path, monkeypatch):
  checkpoints = checkpointing.Checkpoints(str(tmp_path), keep=2, async_save=True)
  data = iter(grain.MapDataset.range(8).to_iter_dataset())
  config = ml_collections.ConfigDict({'seed': 0})
  records = _Records()
  logging.getLogger('absl').addHandler(records)
  try:
    checkpoints.save(_state(1), data=data, config=config)
    checkpoints.wait()
    _fill_the_disk(monkeypatch, checkpoints.directory)
    with pytest.raises(errors.ResourceError) as raised:
      checkpoints.save(_state(2), data=data, config=config)
      checkpoints.wait()  # an async save's error surfaces here (or in the next save)
    checkpoints.wait()  # reported once
    checkpoints.close()
  finally:
    logging.getLogger('absl').removeHandler(records)
  assert str(raised.value) == (
      f'no space left on device writing the checkpoint {checkpoints.directory}/2; free some '
      'space and run the same command again (training resumes from step 1, the last '
      'complete checkpoint)')
  assert raised.value.exit_status == 6
  assert not [t for t in records.texts if 'No space left' in t or 'RESOURCE_EXHAUSTED' in t]
  assert checkpoints.all_steps() == [1]


def test_disk_full_errors_are_recognised():
  assert checkpointing.disk_full_path(OSError(errno.ENOSPC, 'No space left on device',
                                              '/d/f')) == '/d/f'
  try:
    try:
      raise OSError(errno.ENOSPC, 'No space left on device')
    except OSError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as wrapped:
    assert checkpointing.disk_full_path(wrapped) == ''
  assert checkpointing.disk_full_path(OSError(errno.EACCES, 'Permission denied')) is None
  assert checkpointing.disk_full_path(ValueError('RESOURCE_EXHAUSTED: out of memory')) is None


def test_the_aftermath_of_an_aborted_save_is_kept_off_the_log():
  """The other writes of an aborted save fail as orbax's executor shuts down; their
  log records (seen under load in CI) and unraisable reports are dropped, others kept."""
  quiet = checkpointing._DiskFullFilter()

  def record(error=None, message='x'):
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord('absl', logging.ERROR, 'future.py', 1, message, (), exc_info)

  shutdown = RuntimeError('cannot schedule new futures after shutdown')
  assert not quiet.filter(record(shutdown))
  assert not quiet.filter(record(message='_SignalingThread.run() raised an exception: cannot '
                                 'schedule new futures after shutdown'))
  assert not quiet.filter(record(RuntimeError('Event loop is closed')))
  assert quiet.filter(record(RuntimeError('something else')))
  assert quiet.filter(record(message='an unrelated warning'))
  assert runs.abort_noise(shutdown) and not runs.abort_noise(ValueError('x'))


# What a command line shows: a save, then one that meets a full disk.
_FULL_DISK_CLI = '''
import grain
import ml_collections
from pasta_jax import cli
from pasta_jax.training import checkpointing
from tests.training import test_damaged_checkpoints as t

class Patch:
  def setattr(self, obj, name, value):
    setattr(obj, name, value)

def main(argv):
  checkpoints = checkpointing.Checkpoints(argv[1], keep=2, async_save=True)
  data = iter(grain.MapDataset.range(8).to_iter_dataset())
  config = ml_collections.ConfigDict({'seed': 0})
  try:
    checkpoints.save(t._state(1), data=data, config=config)
    t._fill_the_disk(Patch(), checkpoints.directory)
    checkpoints.save(t._state(2), data=data, config=config)
    checkpoints.wait()
  finally:
    checkpoints.wait()
    checkpoints.close()

cli.run(main)
'''


def test_a_full_disk_ends_a_command_line_with_one_line(tmp_path):
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  # --verbosity=-1: warnings and errors only, as python -m pasta_jax.train logs.
  result = subprocess.run(
      [sys.executable, '-c', _FULL_DISK_CLI, '--verbosity=-1', str(tmp_path)],
      capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert result.returncode == 6, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
      f'error: no space left on device writing the checkpoint {tmp_path}/checkpoints/2; free '
      'some space and run the same command again (training resumes from step 1, the last '
      'complete checkpoint)'], result.stderr[-3000:]
