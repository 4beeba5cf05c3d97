"""Run directories: what training leaves, and `load_run` to read it back.

A run directory (`--workdir` of `python -m pasta_jax.train`) holds

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

Training writes it (`training.checkpointing.Checkpoints` saves the checkpoints);
decoding, evaluation and later stages read it with `load_run`, which needs
nothing from `pasta_jax.training`:

    run = load_run('workdir/synth_pasta')               # latest step, one device
    run.params, run.model_config, run.tokenizer, run.config, run.step
    run.interpreter_config(slots=4)                     # the decoder's settings
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from pasta_jax import config as config_lib
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.models import sharding as model_sharding
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig
from pasta_jax.settings import Mode, PositionStrategy

CHECKPOINTS = 'checkpoints'
CONFIG_FILE = 'config.json'
TOKENIZER_FILE = 'tokenizer.model'


def checkpoint_dir(workdir: str) -> str:
  """The directory of a run's orbax checkpoints."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON-compatible dict (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict()))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes `workdir/config.json`; returns its path."""
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
  """The tokenizer `save_tokenizer` wrote into `workdir`."""
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

  @property
  def mode(self) -> Mode:
    """What the run trained on: PASTA documents or the sequential baseline."""
    return config_lib.mode(self.config)

  @property
  def position_strategy(self) -> PositionStrategy:
    """The position strategy the run trained with."""
    return config_lib.position_strategy(self.config)

  @property
  def prompt_template(self) -> str:
    """How the run rendered prompts in training (decoding renders them the same)."""
    return config_lib.prompt_template(self.config)

  def interpreter_config(self, **overrides: Any) -> InterpreterConfig:
    """The decoder's config for this run (`pasta_jax.config.interpreter_config`);
    `overrides` replace InterpreterConfig fields."""
    return config_lib.interpreter_config(self.config, **overrides)


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
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(
      read_only=True, create=False))
  try:
    steps = list(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f'{checkpoint_dir(workdir)} holds no checkpoint')
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise FileNotFoundError(f'{checkpoint_dir(workdir)} has no checkpoint of step {step}; '
                              f'it has steps {sorted(steps)}')
    config = ml_collections.ConfigDict(manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config'])
    model_config = config_lib.model_config(config)
    shapes = transformer.param_shapes(model_config)
    if mesh is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, shapes)
    else:
      if rules is None:
        rules = config_lib.rules_for(model_config, mesh, config.mesh.rules)
      shardings = model_sharding.param_shardings(model_config, mesh, rules)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
    params = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))['params']
  finally:
    manager.close()
  return Run(config=config, model_config=model_config, params=params,
             tokenizer=load_tokenizer(workdir), step=step, workdir=workdir)
