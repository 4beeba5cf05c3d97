"""Run directories: orbax checkpoints with named items, the tokenizer, the config.

A run directory (`--workdir`) holds

  config.json                 the effective config (also saved in every checkpoint)
  tokenizer.model (+ .json)   the tokenizer (`Tokenizer.load`), so the run is self-contained
  checkpoints/<step>/         one orbax checkpoint per saved step, with the items
      params                  the model params (nested like the model; also readable
                              by `models.checkpoint.load_params`)
      optimizer               {'step', 'opt_state'}
      data                    the input pipeline's state, one file per host
                              (grain's orbax handler: process_<i>-of-<n>.json)
      config                  the effective config (JSON)
  metrics.jsonl, events.*     what training logged (see `training.metrics`)

Later stages load a run with `load_run`:

    run = load_run('workdir/synth_pasta')               # latest step, one device
    run.params, run.model_config, run.tokenizer, run.config, run.step
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.models import sharding as model_sharding
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig
from pasta_jax.training import config as config_lib
from pasta_jax.training import partitioning
from pasta_jax.training.state import TrainState

CHECKPOINTS = 'checkpoints'
CONFIG_FILE = 'config.json'
TOKENIZER_FILE = 'tokenizer.model'
ITEMS = ('params', 'optimizer', 'data', 'config')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


class Checkpoints:
  """An orbax CheckpointManager for the items of a training run.

  Saves are asynchronous (when `async_save`): `save` returns once the arrays
  have been copied off the devices, so the next step may reuse (donate) them.
  """

  def __init__(self, workdir: str, *, keep: int | None = None, async_save: bool = True,
               read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
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
        config=ocp.args.JsonSave(config_to_json(config)))
    return self._manager.save(step, args=args, force=True)

  def restore(self, step: int, target: TrainState, *, data: grain.DatasetIterator
              ) -> tuple[TrainState, dict]:
    """(state in target's shardings, config item) of `step`; puts `data` (this
    host's input pipeline) where it was.

    Saved by as many hosts as now, each host takes its own state; saved by
    another number, its state is host `process_index`'s (host 0's if there were
    fewer), which the pipeline maps onto this host layout (`Batches.set_state`).
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
    if own not in states:
      data.set_state(_other_layout_state(states, step))
    optimizer = restored['optimizer']
    state = TrainState(step=optimizer['step'], params=restored['params'],
                       opt_state=optimizer['opt_state'])
    return state, restored['config']

  def restore_config(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def restore_params(self, step: int, target) -> Any:
    return self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))['params']

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


def _other_layout_state(states: dict[tuple[int, int], str], step: int) -> dict:
  """The saved state this host resumes from when the hosts were another number."""
  if not states:
    raise ValueError(f'the checkpoint of step {step} holds no input-pipeline state of '
                     'this version (process_<i>-of-<n>.json files): it was written by an '
                     'older pasta_jax, whose data order this one does not reproduce')
  index = jax.process_index()
  counts = {count for _, count in states}
  count = max(counts)
  path = states.get((index, count), states.get((0, count)))
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON-compatible dict (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict()))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  path = os.path.join(workdir, CONFIG_FILE)
  _write_text(path, json.dumps(config_to_json(config), indent=2, sort_keys=True) + '\n')
  return path


def _write_text(path: str, text: str) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def save_tokenizer(tok: tokenizer_lib.Tokenizer, workdir: str) -> str:
  """Writes `workdir/tokenizer.model` and its sidecar; returns the model path."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  tok.save(path)
  return path


def load_tokenizer(workdir: str) -> tokenizer_lib.Tokenizer:
  path = os.path.join(workdir, TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: not a training run directory, or its '
                            'first start did not get as far as writing the tokenizer')
  return tokenizer_lib.Tokenizer.load(path)


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained model as saved by `python -m pasta_jax.train`.

  Attributes:
    config: the run's effective `ml_collections.ConfigDict` (as saved at `step`).
    model_config: the frozen `models.TransformerConfig` (vocab size resolved).
    params: the param pytree (sharded when `load_run` got a mesh).
    tokenizer: the run's `pasta_jax.tokenizer.Tokenizer`.
    step: the training step of the checkpoint.
    workdir: the run directory.
  """

  config: ml_collections.ConfigDict
  model_config: TransformerConfig
  params: Any
  tokenizer: tokenizer_lib.Tokenizer
  step: int
  workdir: str


def load_run(workdir: str, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None,
             rules=None) -> Run:
  """Loads a training run: config, model config, params, tokenizer.

  Args:
    workdir: the `--workdir` of `python -m pasta_jax.train`.
    step: the checkpoint step; None = the latest.
    mesh: restore the params straight into shardings over this mesh (axes
      'data', 'fsdp', 'tensor'); None = the first local device.
    rules: logical axis rules for the mesh; None = the run's `mesh.rules` over
      `models.sharding.default_rules`.

  Raises:
    FileNotFoundError: no checkpoint (or not that step) in `workdir`.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(f'{workdir} has no {CHECKPOINTS}/ directory: not a training '
                            'run directory (python -m pasta_jax.train --workdir ...)')
  checkpoints = Checkpoints(workdir, read_only=True)
  try:
    steps = checkpoints.all_steps()
    if not steps:
      raise FileNotFoundError(f'{checkpoint_dir(workdir)} holds no checkpoint')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise FileNotFoundError(f'{checkpoint_dir(workdir)} has no checkpoint of step {step}; '
                              f'it has steps {sorted(steps)}')
    config = ml_collections.ConfigDict(checkpoints.restore_config(step))
    model_config = config_lib.model_config(config)
    shapes = transformer.param_shapes(model_config)
    if mesh is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, shapes)
    else:
      if rules is None:
        rules = partitioning.rules_for(model_config, mesh, config.mesh.rules)
      shardings = model_sharding.param_shardings(model_config, mesh, rules)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
    params = checkpoints.restore_params(step, target)
  finally:
    checkpoints.close()
  return Run(config=config, model_config=model_config, params=params,
             tokenizer=load_tokenizer(workdir), step=step, workdir=workdir)

