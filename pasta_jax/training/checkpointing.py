"""The training side of a run directory: its orbax checkpoints, saved and restored.

`Checkpoints` saves and restores the whole train state with the items below
(`pasta_jax.runs` describes the run directory, and its `load_run` reads a run
back for decoding and evaluation):

  params                  the model params
  optimizer               {'step', 'opt_state'}
  data                    every host's input-pipeline state (JSON)
  config                  the effective config (JSON)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp

from pasta_jax import runs
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

  def save(self, state: TrainState, *, data: Mapping[str, Any],
           config: ml_collections.ConfigDict) -> bool:
    """Saves at `state.step`; True when a save started."""
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state}),
        data=ocp.args.JsonSave(dict(data)),
        config=ocp.args.JsonSave(runs.config_to_json(config)))
    return self._manager.save(step, args=args, force=True)

  def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict, dict]:
    """(state in target's shardings, data item, config item) of `step`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target.params),
        optimizer=ocp.args.StandardRestore({'step': target.step,
                                            'opt_state': target.opt_state}),
        data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    optimizer = restored['optimizer']
    state = TrainState(step=optimizer['step'], params=restored['params'],
                       opt_state=optimizer['opt_state'])
    return state, restored['data'], restored['config']

  def restore_config(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

