"""The training side of a run directory: its orbax checkpoints, saved and restored.

`Checkpoints` saves and restores the whole train state with the items below
(`pasta_jax.runs` describes the run directory, and its `load_run` reads a run
back for decoding and evaluation); a stage-2 round, whose batch order is a
function of the step, has no `data` item (`Checkpoints(..., data=False)`):

  params                  the model params
  optimizer               {'step', 'opt_state'}
  data                    the input pipeline's state, one file per host
                          (grain's orbax handler: process_<i>-of-<n>.json)
  config                  the effective config (JSON)

It refuses to save non-finite params (`TrainingDiverged`). A checkpoint that
cannot be restored (a missing item, an unreadable array, a config that is not
JSON, non-finite values) is a `CheckpointError` that names the earlier steps;
a disk that fills up during a save (also an asynchronous one, which surfaces in
the next `save`, `wait` or `close`) is a `ResourceError`, and orbax's own
reports of it are kept off the log.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging as std_logging
import os
import re
from typing import Any, Iterator, Mapping

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from pasta_jax import errors
from pasta_jax import runs
from pasta_jax.data import pipeline
from pasta_jax.training.state import TrainState

ITEMS = ('params', 'optimizer', 'data', 'config')


class Checkpoints:
  """An orbax CheckpointManager for the items of a training run.

  Saves are asynchronous (when `async_save`): `save` returns once the arrays
  have been copied off the devices, so the next step may reuse (donate) them.
  """

  def __init__(self, workdir: str, *, keep: int | None = None, async_save: bool = True,
               read_only: bool = False, data: bool = True,
               lr_key: str = 'config.optimizer.lr'):
    """`data`: whether checkpoints hold the input pipeline's state; `lr_key`: the
    learning-rate key that a refused (non-finite) save tells the user to lower."""
    self.directory = runs.checkpoint_dir(workdir)
    self.items = ITEMS if data else tuple(i for i in ITEMS if i != 'data')
    self._lr_key = lr_key
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only,
        read_only=read_only, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=self.items)
    self._saving: int | None = None  # the step of the latest save started
    self._disk_full = False
    self._quiet = _DiskFullFilter()
    std_logging.getLogger('absl').addFilter(self._quiet)
    runs.quiet_orbax_aborts()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, *, data: grain.DatasetIterator | None = None,
           config: ml_collections.ConfigDict) -> bool:
    """Saves at `state.step` (`data`: this host's input pipeline, None without a
    data item); True when a save started.

    Raises:
      TrainingDiverged: the params are not finite (nothing is saved).
      ResourceError: the disk is full (this save's or an earlier async one's).
    """
    step = int(jax.device_get(state.step))
    bad = runs.nonfinite_reason(state.params, 'params')
    if bad:
      raise errors.TrainingDiverged(
          f'not saving the checkpoint of step {step}: {bad}\nthe last good checkpoint is '
          f'step {self.latest_step()} in {self.directory}; lower {self._lr_key}')
    if (data is not None) != ('data' in self.items):
      raise ValueError(f'data={data!r} for checkpoints with the items {self.items}')
    items = dict(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state}),
        config=ocp.args.JsonSave(runs.config_to_json(config)))
    if data is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data)
    args = ocp.args.Composite(**items)
    with self._disk_errors():
      started = self._manager.save(step, args=args, force=True)
    self._saving = step
    return started

  def restore(self, step: int, target: TrainState, *,
              data: grain.DatasetIterator | None = None) -> tuple[TrainState, dict]:
    """(state in target's shardings, config item) of `step`; puts `data` (this
    host's input pipeline; None without a data item) where it was.

    Saved by as many hosts as now, each host takes its own state; saved by
    another number, its state is host `process_index`'s (host 0's if there were
    fewer), which the pipeline maps onto this host layout (`Batches.set_state`).
    A checkpoint from before the grain pipeline (one JSON item for all hosts)
    resumes at the same epoch and position in it, in the new example order.

    Raises:
      CheckpointError: the checkpoint is damaged or holds non-finite values (the
        message names the earlier steps and how to resume from one).
    """
    items = dict(params=ocp.args.StandardRestore(target.params),
                 optimizer=ocp.args.StandardRestore({'step': target.step,
                                                     'opt_state': target.opt_state}),
                 config=ocp.args.JsonRestore())
    self._check_items(step, self.items)
    if (data is not None) != ('data' in self.items):
      raise ValueError(f'data={data!r} for checkpoints with the items {self.items}')
    states, own = {}, (jax.process_index(), jax.process_count())
    if data is not None:
      data_dir = os.path.join(self.directory, str(step), 'data')
      states = _data_state_files(data_dir)
      if not states and not os.path.exists(os.path.join(data_dir, 'metadata')):
        raise self._damaged(step, 'its data/ directory holds no input-pipeline state '
                            '(no process_<i>-of-<n>.json file)')
      if own in states:
        items['data'] = grain.checkpoint.CheckpointRestore(data)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      if data is not None and not states:
        data.set_state(_legacy_state(self._legacy_item(step), step))
      elif data is not None and own not in states:
        data.set_state(_other_layout_state(states))
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(step, runs.restore_failure(e)) from e
    optimizer = restored['optimizer']
    state = TrainState(step=optimizer['step'], params=restored['params'],
                       opt_state=optimizer['opt_state'])
    bad = (runs.nonfinite_reason(state.params, 'params')
           or runs.nonfinite_reason(state.opt_state, 'optimizer/opt_state'))
    if bad:
      raise self._damaged(step, bad)
    return state, restored['config']

  def _check_items(self, step: int, items) -> None:
    what = runs.missing_items(self.directory, step, items)
    if what:
      raise self._damaged(step, what)

  def _damaged(self, step: int, what: str) -> errors.CheckpointError:
    return runs.damaged(self.directory, step, what, self.all_steps(), training=True)

  def _legacy_item(self, step: int) -> Any:
    """The `data` item as the pre-grain pipeline saved it (JSON), read by a
    manager of its own: the training manager's `data` item is grain's."""
    manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=('data',))
    try:
      return manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data']
    finally:
      manager.close()

  def restore_config(self, step: int) -> dict:
    """The config item of `step` (CheckpointError if it is missing or damaged)."""
    self._check_items(step, ('config',))
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))['config']
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(step, runs.restore_failure(e)) from e

  def wait(self) -> None:
    """Waits for the save in flight (ResourceError if the disk filled up)."""
    if self._disk_full:
      return  # reported once; the manager would raise it again
    with self._disk_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    try:
      if self._disk_full:
        try:
          self._manager.close()
        except Exception:  # pylint: disable=broad-except
          pass  # the disk-full error again, reported already
      else:
        with self._disk_errors():
          self._manager.close()
    finally:
      if not self._disk_full:
        std_logging.getLogger('absl').removeFilter(self._quiet)

  @contextlib.contextmanager
  def _disk_errors(self) -> Iterator[None]:
    """Turns a full disk met by an orbax save into one ResourceError."""
    try:
      yield
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      path = disk_full_path(e)
      if path is None:
        raise
      self._disk_full = True
      raise self._disk_full_error(path) from None

  def _disk_full_error(self, path: str) -> errors.ResourceError:
    # The failing save: the step directory the error names, else the latest started.
    named = re.search(rf'{re.escape(self.directory)}/(\d+)', path)
    step = int(named.group(1)) if named else self._saving
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    complete = [s for s in self.all_steps() if s != step]
    resume = (f'training resumes from step {max(complete)}, the last complete checkpoint'
              if complete else 'no checkpoint was complete yet')
    detail = f' ({path})' if path and not path.startswith(where) else ''
    return errors.ResourceError(
        f'no space left on device writing the checkpoint {where}{detail}; free some space '
        f'and run the same command again ({resume})')

def disk_full_path(exc: BaseException) -> str | None:
  """The file a 'no space left on device' error names ('' if none); None if `exc`
  (or an exception it was raised from) is no such error."""
  seen = 0
  while exc is not None and seen < 10:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
      return exc.filename or ''
    text = str(exc)
    if 'No space left on device' in text or "os_error_code='28'" in text:
      found = re.search(r'Failed writing: "([^"]+)"', text) or re.search(
          r'local file "([^"]+)"', text)
      return found.group(1) if found else ''
    exc, seen = exc.__cause__ or exc.__context__, seen + 1
  return None


_SHUTDOWN = 'cannot schedule new futures after shutdown'


class _DiskFullFilter(std_logging.Filter):
  """Drops orbax's log records (with tracebacks) of a full disk: the error is
  raised once, in the main thread, as a ResourceError."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and (disk_full_path(error) is not None or runs.abort_noise(error)):
      return False
    message = record.getMessage()
    # The other background writes of an aborted save, failing as the executor shuts down.
    return not ('No space left on device' in message or "os_error_code='28'" in message
                or _SHUTDOWN in message)


def _data_state_files(directory: str) -> dict[tuple[int, int], str]:
  """{(process index, process count): file} of a saved `data` item."""
  files = {}
  for path in glob.glob(os.path.join(directory, 'process_*-of-*.json')):
    index, count = map(int, re.fullmatch(r'process_(\d+)-of-(\d+)\.json',
                                         os.path.basename(path)).groups())
    files[index, count] = path
  return files


def _other_layout_state(states: Mapping[tuple[int, int], str]) -> dict:
  """The saved state this host resumes from when the hosts were another number."""
  index = jax.process_index()
  count = max(count for _, count in states)
  path = states.get((index, count), states.get((0, count)))
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _legacy_state(item: Any, step: int) -> dict:
  """This host's pipeline state from a checkpoint of the pre-grain pipeline.

  That pipeline saved every host's state, `{'hosts': [state, ...]}` (state
  version 1), and shuffled with another permutation: the position carries
  over, the order within the interrupted epoch does not.
  """
  hosts = item.get('hosts') if isinstance(item, Mapping) else None
  if not hosts:
    raise ValueError(f'the checkpoint of step {step} holds no input-pipeline state '
                     '(neither process_<i>-of-<n>.json files nor the older JSON item)')
  index = jax.process_index()
  state = dict(hosts[index] if index < len(hosts) else hosts[0])
  logging.warning(
      'the checkpoint of step %d comes from an older pasta_jax input pipeline: training '
      'resumes at epoch %d, example %d of it, but that epoch\'s order is new (some of its '
      'examples come twice, others not at all); later epochs are complete', step,
      state['epoch'], state['index'])
  return dict(state, version=pipeline.STATE_VERSION)
