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
import re
import sys
from typing import Any, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp

from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.models import checkpoint as model_checkpoint
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


def latest_step(workdir: str) -> int | None:
  """The step of a run's newest finished checkpoint (orbax renames a checkpoint to
  its step once it is complete), None when there is none."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return None
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()]
  return max(steps) if steps else None


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
  """The tokenizer `save_tokenizer` wrote into `workdir`.

  Raises:
    CheckpointError: `workdir` has no tokenizer.
  """
  path = os.path.join(workdir, TOKENIZER_FILE)
  if not os.path.isfile(path):
    raise errors.CheckpointError(
        f'{path} not found: not a training run directory, or its first start did not get '
        'as far as writing the tokenizer')
  return tokenizer_lib.Tokenizer.load(path)


# ----------------------------------------------------------------------------
# Damaged checkpoints: one-line reasons instead of orbax's tracebacks.


def step_dir(directory: str, step: int) -> str:
  """The directory of checkpoint `step` in a checkpoints directory."""
  return os.path.join(directory, str(step))


def missing_items(directory: str, step: int, items: Sequence[str]) -> str | None:
  """What is wrong with the items of checkpoint `step` before orbax reads them
  (a missing item directory, a config item that is not JSON); None if nothing."""
  where = step_dir(directory, step)
  for item in items:
    if not os.path.isdir(os.path.join(where, item)):
      return f'its {item}/ directory is missing'
  if 'config' in items:
    path = os.path.join(where, 'config', 'metadata')  # orbax's JsonSave file
    try:
      with open(path, encoding='utf-8') as f:
        json.load(f)
    except FileNotFoundError:
      return f'{path} is missing'
    except (ValueError, UnicodeDecodeError) as e:
      return f'{path} is not valid JSON ({e})'
  return None


def restore_failure(e: BaseException) -> str:
  """One line for an exception of an orbax restore: what could not be read."""
  chain, seen = [], e
  while seen is not None and len(chain) < 10:
    chain.append(seen)
    seen = seen.__cause__ or seen.__context__
  for exc in chain:
    found = re.search(r'([A-Z_]+): Error (?:reading|opening) "([^"]+)" in OCDBT database at '
                      r'local file "([^"]+)"', str(exc))
    if found:
      code, array, path = found.groups()
      return (f'the array {array} in {path.rstrip("/")} cannot be read ({code}: a truncated '
              'or corrupt file)')
  for exc in chain:
    if isinstance(exc, OSError) and exc.filename:
      return f'{exc.filename}: {exc.strerror or exc}'
  inner = chain[-1]
  text = (str(inner).strip().splitlines() or [''])[0]
  text = re.sub(r'\s*See full TensorStore details.*', '', text)
  if len(text) > 200:
    text = text[:200] + '...'
  return f'{type(inner).__name__}: {text}'


def damaged(directory: str, step: int, what: str, steps: Sequence[int], *,
            training: bool) -> errors.CheckpointError:
  """The CheckpointError of a checkpoint that cannot be used, naming the others."""
  others = sorted(s for s in steps if s != step)
  earlier = [s for s in others if s < step]
  message = f'the checkpoint of step {step} in {directory} is damaged: {what}'
  where = step_dir(directory, step)
  if training:
    if earlier:
      hint = (f'earlier checkpoints: steps {earlier}; to resume from step {earlier[-1]}, '
              f'move {where} out of {directory} (or delete it) and run the same command again')
    else:
      hint = (f'there is no earlier checkpoint; move {where} out of {directory} (or delete '
              'it) to train from the start')
  elif others:
    hint = (f'other checkpoints: steps {others} (load one with step=..., e.g. '
            f'`--step {(earlier or others)[-1]}` of pasta_jax.decode)')
  else:
    hint = 'there is no other checkpoint of this run'
  return errors.CheckpointError(f'{message}\n{hint}')


def abort_noise(exc: BaseException | None) -> bool:
  """Whether `exc` is what orbax's abandoned background work raises after an abort."""
  text = str(exc)
  return ((isinstance(exc, RuntimeError) and text in (
      'Event loop is closed', 'cannot schedule new futures after shutdown'))
          or (isinstance(exc, ImportError) and 'Python is likely shutting down' in text))


_quiet = False


def quiet_orbax_aborts() -> None:
  """Keeps orbax's abandoned background work off stderr (once per process).

  When a read or write fails (a damaged array, a full disk), the error reaches
  the main thread, where it becomes a one-line user error; the other pending
  array transfers then report `Event loop is closed` (and, at exit, import
  errors of a shutting-down interpreter) as unraisable exceptions, dozens of
  tracebacks. Those two kinds are dropped; any other goes to the previous hook.
  """
  global _quiet
  if _quiet:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not abort_noise(unraisable.exc_value):
      previous(unraisable)

  sys.unraisablehook = hook
  _quiet = True


def nonfinite_reason(tree: Any, name: str) -> str | None:
  """'non-finite values (NaN or Inf) in ...' naming `tree`'s bad arrays; None if none."""
  bad = model_checkpoint.nonfinite_paths(tree)
  if not bad:
    return None
  shown = ', '.join(f'{name}/{p}' for p in bad[:3])
  more = f' and {len(bad) - 3} more arrays' if len(bad) > 3 else ''
  return f'non-finite values (NaN or Inf) in {shown}{more}'


def _missing_run(workdir: str) -> errors.CheckpointError:
  """A CheckpointError for a `workdir` without checkpoints, naming runs beside it."""
  parent = os.path.dirname(workdir)
  beside = sorted(n for n in (os.listdir(parent) if os.path.isdir(parent) else ())
                  if os.path.isdir(os.path.join(parent, n, CHECKPOINTS)))
  if not os.path.exists(workdir):
    what = f'{workdir} does not exist'
  else:
    what = (f'{workdir} has no {CHECKPOINTS}/ directory: not a training run directory '
            '(python -m pasta_jax.train --workdir ...)')
  if beside:
    shown = ', '.join(beside[:10]) + (', ...' if len(beside) > 10 else '')
    what += f'; run directories in {parent}: {shown}'
  return errors.CheckpointError(what)


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
    CheckpointError: no run or no checkpoint (or not that step) in `workdir`, or
      the checkpoint is damaged (a missing item, a file that cannot be read,
      non-finite params); the message names the run's other steps.
  """
  workdir = os.path.abspath(workdir)
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise _missing_run(workdir)
  quiet_orbax_aborts()
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False))
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise errors.CheckpointError(f'{directory} holds no checkpoint (training saves one '
                                   'every checkpoint.every_steps and at the end)')
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise errors.CheckpointError(f'{directory} has no checkpoint of step {step}; it has '
                                   f'steps {steps}')
    what = missing_items(directory, step, ('config', 'params'))
    if what:
      raise damaged(directory, step, what, steps, training=False)
    try:
      config = ml_collections.ConfigDict(manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))['config'])
    except Exception as e:  # pylint: disable=broad-except
      raise damaged(directory, step, restore_failure(e), steps, training=False) from e
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
    try:
      params = manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(target)))['params']
    except Exception as e:  # pylint: disable=broad-except
      raise damaged(directory, step, restore_failure(e), steps, training=False) from e
    what = nonfinite_reason(params, 'params')
    if what:
      raise damaged(directory, step, what, steps, training=False)
  finally:
    manager.close()
  return Run(config=config, model_config=model_config, params=params,
             tokenizer=load_tokenizer(workdir), step=step, workdir=workdir)
