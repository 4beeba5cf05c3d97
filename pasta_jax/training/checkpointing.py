"""The training side of a run directory: its orbax checkpoints, saved and restored.

`Checkpoints` saves and restores the whole train state with the items below
(`pasta_jax.runs` describes the run directory, and its `load_run` reads a run
back for decoding and evaluation):

  params                  the model params
  optimizer               {'step', 'opt_state'}
  data                    the input pipeline's state, one file per host
                          (grain's orbax handler: process_<i>-of-<n>.json)
  config                  the effective config (JSON)
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Mapping

from absl import logging
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

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
               read_only: bool = False):
    self.directory = runs.checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only,
        read_only=read_only, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: TrainState, *, data: grain.DatasetIterator,
           config: ml_collections.ConfigDict) -> bool:
    """Saves at `state.step` (`data`: this host's input pipeline); True when a
    save started."""
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state}),
        data=grain.checkpoint.CheckpointSave(data),
        config=ocp.args.JsonSave(runs.config_to_json(config)))
    return self._manager.save(step, args=args, force=True)

  def restore(self, step: int, target: TrainState, *, data: grain.DatasetIterator
              ) -> tuple[TrainState, dict]:
    """(state in target's shardings, config item) of `step`; puts `data` (this
    host's input pipeline) where it was.

    Saved by as many hosts as now, each host takes its own state; saved by
    another number, its state is host `process_index`'s (host 0's if there were
    fewer), which the pipeline maps onto this host layout (`Batches.set_state`).
    A checkpoint from before the grain pipeline (one JSON item for all hosts)
    resumes at the same epoch and position in it, in the new example order.
    """
    items = dict(params=ocp.args.StandardRestore(target.params),
                 optimizer=ocp.args.StandardRestore({'step': target.step,
                                                     'opt_state': target.opt_state}),
                 config=ocp.args.JsonRestore())
    states = _data_state_files(os.path.join(self.directory, str(step), 'data'))
    own = (jax.process_index(), jax.process_count())
    if own in states:
      items['data'] = grain.checkpoint.CheckpointRestore(data)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if not states:
      data.set_state(_legacy_state(self._legacy_item(step), step))
    elif own not in states:
      data.set_state(_other_layout_state(states))
    optimizer = restored['optimizer']
    state = TrainState(step=optimizer['step'], params=restored['params'],
                       opt_state=optimizer['opt_state'])
    return state, restored['config']

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
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


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
