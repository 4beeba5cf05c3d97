"""The training run: `train_and_evaluate(config, workdir)`.

Starts or resumes the run in `workdir` (the latest checkpoint there wins),
trains to `train.num_steps`, validates every `eval.every_steps` and at the end,
checkpoints every `checkpoint.every_steps`, at the end, and when SIGTERM or
SIGINT arrives (then it returns early; a second Ctrl-C aborts at once).

Everything that can be checked without compiling is checked first: config keys
and values, the mesh against the devices, the batch against hosts, batch
shards and micro-batches, the dataset, the init checkpoint, the model against
the mesh. Each failure is a `ConfigError` (or the data/checkpoint loaders' own
error) that names the offending value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as std_logging
import os
import signal
import threading
import time
from typing import IO, Any, Iterator

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from pasta_jax import config as config_lib
from pasta_jax import runs
from pasta_jax.config import ConfigError
from pasta_jax.data import pipeline
from pasta_jax.data import sources as sources_lib
from pasta_jax.models import checkpoint as model_checkpoint
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig
from pasta_jax.training import checkpointing
from pasta_jax.training import inputs
from pasta_jax.training import metrics as metrics_lib
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib


@dataclasses.dataclass(frozen=True)
class TrainingResult:
  """What `train_and_evaluate` ends with.

  Attributes:
    step: the last step trained (the run's checkpoint at that step is saved).
    eval: the last validation metrics (`step.summarize` names), {} if none ran.
    state: the final `TrainState` (device arrays, sharded like in training).
    stopped_by: the signal that stopped the run early, None if it finished.
  """

  step: int
  eval: dict[str, float]
  state: state_lib.TrainState
  stopped_by: int | None = None


class Interrupted(Exception):
  """A signal arrived while the run waited in `StopRequest.interruptible()`."""


class StopRequest:
  """Turns SIGTERM / SIGINT into a request to save and stop (main thread only).

  The loop checks `requested()` after every step. A wait that may be long (for
  the next batch) runs in `interruptible()`: there a signal raises `Interrupted`
  at once, so no wait outlives a signal. A second SIGINT raises
  KeyboardInterrupt as usual.
  """

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}
    self._waiting = False

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> bool:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def _handle(self, sig, frame) -> None:
    del frame
    if self.signal is not None and sig == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = sig
    if self._waiting:
      raise Interrupted(sig)

  @contextlib.contextmanager
  def interruptible(self) -> Iterator[None]:
    """A block that a signal ends with `Interrupted` (one host only: with several,
    every host must reach the same step before they stop together)."""
    self._waiting = jax.process_count() == 1
    try:
      if self._waiting and self.signal is not None:
        raise Interrupted(self.signal)
      yield
    finally:
      self._waiting = False

  def requested(self) -> bool:
    """Whether any host got a signal (a collective when there are several hosts);
    then every host's `signal` is set, so that all of them save and stop."""
    if jax.process_count() == 1:
      return self.signal is not None
    got = int(np.max(multihost_utils.process_allgather(np.int32(self.signal or 0))))
    if got and self.signal is None:
      self.signal = got
    return bool(got)


def _check_init_checkpoint(config: ml_collections.ConfigDict) -> str:
  path = os.path.abspath(os.path.expanduser(config.init.checkpoint))
  needed = ([path, os.path.join(path, model_checkpoint.CONFIG_FILE),
             os.path.join(path, model_checkpoint.PARAMS_DIR)]
            if config.init.format == 'converted' else [path])
  for p in needed:
    if not os.path.exists(p):
      what = ('a directory written by scripts/convert_hf_checkpoint.py (config.json and '
              'params/)' if config.init.format == 'converted' else
              'an orbax checkpoint directory of Gemma params')
      raise ConfigError(f'config.init.checkpoint={config.init.checkpoint!r}: {p} does not '
                        f'exist (expected {what}, as config.init.format='
                        f'{config.init.format!r} says)')
  return path


def _load_init_params(config: ml_collections.ConfigDict, path: str,
                      model_config: TransformerConfig, shardings):
  """Params of a Gemma checkpoint, restored straight into `shardings`."""
  if config.init.format == 'converted':
    found = model_checkpoint.read_config(path)
    diffs = model_checkpoint.architecture_differences(found, model_config,
                                                      trim_vocab=config.init.trim_vocab)
    if diffs:
      raise ConfigError(f'config.init.checkpoint={config.init.checkpoint!r} holds another '
                        'architecture than config.model: ' + '; '.join(
                            f'{n}: checkpoint {a!r}, config {b!r}' for n, a, b in diffs))
    path = os.path.join(path, model_checkpoint.PARAMS_DIR)
  return model_checkpoint.load_params(path, model_config, trim_vocab=config.init.trim_vocab,
                                      shardings=shardings)


def _config_differences(old: Any, new: Any, prefix: str = '') -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _config_differences(old.get(key), new.get(key), f'{prefix}{key}.')
    return out
  return [] if old == new else [f'{prefix.rstrip(".")}: {old!r} -> {new!r}']


def _decoding_differences(saved: dict, data: ml_collections.ConfigDict) -> list[str]:
  """The data keys that define how the run's model decodes and that `data` changes."""
  keys = ['mode', 'position_strategy', 'prompt_template']
  if data.position_strategy == 'fixed' or saved.get('position_strategy') == 'fixed':
    keys.append('fixed_reserve')
  return [f'config.data.{key}: {saved[key]!r} in the run, {data[key]!r} now'
          for key in keys if key in saved and saved[key] != data[key]]


def _rows(batch_size: int, process_count: int) -> int:
  return batch_size // process_count


def check_batches(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                  process_count: int) -> None:
  """The training and eval batches against the hosts, the mesh's batch shards and
  the micro-batches (`partitioning.check_batch`)."""
  batch_axes = partitioning.batch_axes(config.mesh.rules)
  partitioning.check_batch(config.data.batch_size, mesh=mesh, batch_axes=batch_axes,
                           process_count=process_count,
                           grad_accum_steps=config.optimizer.grad_accum_steps)
  if config.eval.batch_size:
    partitioning.check_batch(config.eval.batch_size, mesh=mesh, batch_axes=batch_axes,
                             process_count=process_count, key='eval.batch_size')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stream: IO[str] | None = None) -> TrainingResult:
  """Trains (or resumes) the run in `workdir` to `config.train.num_steps`.

  Args:
    config: a training config (`configs/*.py`); missing fields take the defaults
      of `pasta_jax.config.defaults()`.
    workdir: the run directory; resumed from its latest checkpoint if it has one.
    stream: where the progress bar and messages go (process 0; default: the bar
      on stderr, the messages on stdout).
  """
  config = config_lib.resolve(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  process_index, process_count = jax.process_index(), jax.process_count()
  primary = process_index == 0
  if not primary:
    std_logging.getLogger('absl').setLevel(std_logging.WARNING)

  # -- Checks that need neither data nor compilation. ------------------------
  config_lib.model_config(config, vocab_size=config.model.vocab_size or 1)
  mesh = partitioning.make_mesh(config.mesh.shape)
  check_batches(config, mesh, process_count)
  init_path = _check_init_checkpoint(config) if config.init.checkpoint else None

  os.makedirs(workdir, exist_ok=True)
  checkpoints = checkpointing.Checkpoints(workdir, keep=config.checkpoint.keep,
                                          async_save=config.checkpoint.async_save)
  latest = checkpoints.latest_step()

  # -- Data and tokenizer. ---------------------------------------------------
  sources = inputs.data_sources(config.data, ['train', config.eval.split])
  if latest is not None:
    saved = checkpoints.restore_config(latest)
    tok = runs.load_tokenizer(workdir)
  else:
    tok = sources_lib.make_tokenizer(config, sources['train'])
    if primary:
      runs.save_tokenizer(tok, workdir)
  with config.unlocked():
    if not config.model.vocab_size:
      config.model.vocab_size = tok.vocab_size
  model_config = config_lib.model_config(config)
  if model_config.vocab_size < tok.vocab_size:
    raise ConfigError(f'config.model.vocab_size={model_config.vocab_size} is smaller than '
                      f'the tokenizer\'s {tok.vocab_size} ids')
  if latest is not None:
    diffs = _config_differences(saved.get('model'),
                                runs.config_to_json(config)['model'], 'model.')
    if diffs:
      raise ConfigError(f'{workdir} holds a run of another model than config.model: '
                        + '; '.join(diffs))
    diffs = _decoding_differences(saved.get('data', {}), config.data)
    if diffs:
      raise ConfigError(f'{workdir} holds a run that decodes differently: ' + '; '.join(diffs)
                        + '. These define what the model learns; train it in a new workdir')
  rules = config_lib.rules_for(model_config, mesh, config.mesh.rules)
  partitioning.check_params(model_config, mesh, rules)

  notes: list[str] = []
  rows = _rows(config.data.batch_size, process_count)
  eval_rows = _rows(config_lib.eval_batch_size(config), process_count)
  for split, train in (('train', True), (config.eval.split, False)):
    note = inputs.check_lengths(config, inputs.batches(
        config, sources[split], tok, rows=rows if train else eval_rows, train=train,
        num_epochs=1, process_index=process_index, process_count=process_count),
                                split, show_progress=primary)
    if note:
      notes.append(note)
  if not config.train.num_steps:
    if latest is not None and saved['train']['num_epochs'] == config.train.num_epochs \
        and saved['data'] == runs.config_to_json(config)['data']:
      num_steps = saved['train']['num_steps']  # counted when the run started
    else:
      num_steps = inputs.steps_for_epochs(config, sources['train'], tok, rows=rows,
                                          process_index=process_index,
                                          process_count=process_count)
    with config.unlocked():
      config.train.num_steps = num_steps
    notes.append(f'train.num_epochs={config.train.num_epochs} -> {num_steps} steps')
  num_steps = config.train.num_steps
  if latest is not None:
    for line in _config_differences(saved, runs.config_to_json(config)):
      notes.append(f'config changed since the checkpoint: {line}')

  # -- State: restored, from a Gemma checkpoint, or fresh. -------------------
  optimizer, schedule = state_lib.make_optimizer(config.optimizer, num_steps)
  shardings = state_lib.state_shardings(model_config, optimizer, mesh, rules)
  train_batches = inputs.batches(config, sources['train'], tok, rows=rows, train=True,
                                 process_index=process_index, process_count=process_count)
  feed = pipeline.prefetch(train_batches, config.data.prefetch)
  if latest is not None:
    target = state_lib.abstract_state(model_config, optimizer, shardings)
    state, _ = checkpoints.restore(latest, target, data=feed)
    notes.append(f'resumed from the checkpoint of step {latest}')
  elif init_path is not None:
    params = _load_init_params(config, init_path, model_config, shardings.params)
    state = state_lib.state_from_params(params, optimizer, shardings)
    notes.append(f'params from {init_path}')
  else:
    state = state_lib.init_state(model_config, optimizer,
                                 jax.random.key(config.seed), shardings)
  if primary:
    runs.write_config(config, workdir)

  eval_batches = inputs.eval_batches(config, sources[config.eval.split], tok, rows=eval_rows,
                                     process_index=process_index,
                                     process_count=process_count)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  train_step, eval_step = step_lib.jit_steps(
      model_config=model_config, optimizer=optimizer, schedule=schedule,
      grad_accum_steps=config.optimizer.grad_accum_steps, state_shardings=shardings,
      batch_sharding=batch_sharding)

  step = int(jax.device_get(state.step))
  writer = metrics_lib.MetricWriter(workdir, enabled=primary,
                                    resume_step=step if latest is not None else None)
  bar = metrics_lib.ProgressBar(num_steps, initial=step, stream=stream, enabled=primary)
  bar.message(f'{workdir}: {config.data.mode} training of a '
              f'{transformer.count_params(model_config) / 1e6:.2f}M-param model on '
              f'{jax.device_count()} device(s), mesh {dict(mesh.shape)}, '
              f'{process_count} host(s); steps {step} -> {num_steps}')
  for note in notes:
    bar.message(note)

  def evaluate() -> dict[str, float]:
    total = None
    for batch in eval_batches:
      total = step_lib.add_sums(total, eval_step(
          state.params, partitioning.global_batch(batch, batch_sharding)))
    result = step_lib.summarize(jax.device_get(total)) if total is not None else {}
    writer.write(step, 'eval', result)
    bar.message(f'step {step}: {config.eval.split} ' + _describe(result))
    return result

  def save(force: bool) -> bool:
    if not (force or step % config.checkpoint.every_steps == 0):
      return False
    guard.check(window, step)  # a run that diverged since the last check saves nothing
    return checkpoints.save(state, data=feed, config=config)

  guard = step_lib.NonfiniteGuard(
      config.train.on_nonfinite, config.train.max_skipped_steps, lr=config.optimizer.lr,
      last_checkpoint=lambda: (checkpoints.latest_step(), checkpoints.directory),
      message=bar.message)
  last_eval: dict[str, float] = {}
  window: list[dict[str, jax.Array]] = []
  window_start = time.time()
  stopped_by = None
  try:
    with step_lib.sharded(mesh, rules), StopRequest() as stop:
      while step < num_steps:
        position = feed.get_state()
        try:
          with stop.interruptible():
            rows_of_host = next(feed)
        except Interrupted:
          feed.set_state(position)  # the batch may have been taken: it was not trained on
          stopped_by = stop.signal
          break
        batch = partitioning.global_batch(rows_of_host, batch_sharding)
        state, metrics = train_step(state, batch)
        step += 1
        window.append(metrics)
        bar.update(step)
        if step % config.train.log_every == 0 or step == num_steps:
          guard.check(window, step)
          sums = jax.device_get(window)
          elapsed = time.time() - window_start
          applied = [s for s in sums if not s['skipped']]  # skipped steps' sums are not finite
          if applied:
            total = step_lib.add_sums(None, {k: applied[0][k] for k in step_lib.sum_keys()})
            for s in applied[1:]:
              total = step_lib.add_sums(total, {k: s[k] for k in step_lib.sum_keys()})
            scalars = step_lib.summarize(total)
            scalars.update(grad_norm=float(applied[-1]['grad_norm']),
                           lr=float(applied[-1]['lr']),
                           tokens_per_s=float(total['tokens']) / elapsed,
                           steps_per_s=len(sums) / elapsed)
            if len(applied) < len(sums):
              scalars['skipped_steps'] = float(len(sums) - len(applied))
            writer.write(step, 'train', scalars)
            bar.set_metrics(**scalars)
          window, window_start = [], time.time()
        if config.eval.every_steps and step % config.eval.every_steps == 0 \
            and step < num_steps:
          last_eval = evaluate()
        if stop.requested():
          stopped_by = stop.signal
          break
        save(force=False)
    if stopped_by is not None or step >= num_steps:
      if stopped_by is None:
        last_eval = evaluate()
      if step not in checkpoints.all_steps():
        save(force=True)
      checkpoints.wait()
      if stopped_by is not None:
        bar.message(f'stopped by signal {stopped_by} at step {step}; checkpoint saved '
                    f'in {checkpoints.directory}')
  finally:
    bar.close()
    feed.close()
    checkpoints.wait()
    checkpoints.close()
    writer.close()
  return TrainingResult(step=step, eval=last_eval, state=state, stopped_by=stopped_by)


def _describe(result: dict[str, float]) -> str:
  parts = []
  for kind, name in (('', 'all'), ('main_', 'main'), ('async_', 'async')):
    if f'{kind}loss' in result:
      parts.append(f'{name}: loss {result[f"{kind}loss"]:.4f} '
                   f'acc {100 * result[f"{kind}accuracy"]:.2f}%')
  return ' | '.join(parts) if parts else 'no targets'

