"""Stage 2: preference-optimisation rounds, resumable (docs/design.md section 7).

    result = run_rounds(config, workdir)  # `python -m pasta_jax.train` with a po section

Round r (1 .. `po.rounds`) starts from a model M: the latest checkpoint of the
stage-1 run `init.run` in round 1, round r - 1's final params after. It lives
in `workdir/round_<r>/`, and each of its phases ends with a marker file
`<phase>.done` (JSON: the settings it ran with and what it did):

  sampled    samples.jsonl: `po.num_samples` samples per prompt of `po.split`
             from M at `po.temperature` (`sampling.SampleStore`: a killed run
             resumes at the next unfinished chunk, with the same seeds).
  scored     pairs.jsonl (one pair per line: prompt id, sample indices, scores,
             documents) and summary.json (`scoring.RoundSummary` at `po.lam`).
  reference  reference.npz: logp of each pair's y+ and y- (and their target
             counts) under M, by line of pairs.jsonl; NaN for a pair left out
             (malformed, or longer than a row of `po.seq_len`).
  trained    checkpoints/<step>/: BoNBoN training of a copy of M for the round's
             steps, resumed from the latest checkpoint of the round.

A round directory is a run directory (`runs.load_run`): config.json,
tokenizer.model and checkpoints/<step>/ with the `params` and `config` items
(plus `optimizer`), so `python -m pasta_jax.evaluate --pasta r1=DIR/round_1,...`
decodes it. metrics.jsonl and TensorBoard events hold the samples' scores
(split 'samples', step 0) and the training metrics (split 'train').

The model, the tokenizer and the data keys that define how the model reads
and writes (mode, positions, template, promised lengths) are `init.run`'s;
the rest of the config (data set, interpreter, mesh, optimizer betas) is the
stage-2 config's. Settings that a finished phase depends on cannot change
when a run resumes (a ConfigError says which).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import IO, Any, Mapping, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import auto as tqdm_auto

from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax import lang
from pasta_jax import runs
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.config import ConfigError
from pasta_jax.data import records as records_lib
from pasta_jax.interpreter import Interpreter
from pasta_jax.models import sharding as model_sharding
from pasta_jax.models.config import TransformerConfig
from pasta_jax.preference import logprobs
from pasta_jax.preference import loss as loss_lib
from pasta_jax.preference import sampling
from pasta_jax.preference import scoring
from pasta_jax.settings import Mode
from pasta_jax.training import inputs
from pasta_jax.training import loop
from pasta_jax.training import metrics as metrics_lib
from pasta_jax.training import partitioning
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib
from pasta_jax.training.state import TrainState

PHASES = ('sampled', 'scored', 'reference', 'trained')
SAMPLES_FILE = 'samples.jsonl'
PAIRS_FILE = 'pairs.jsonl'
SUMMARY_FILE = 'summary.json'
REFERENCE_FILE = 'reference.npz'
# The stage-1 run's data keys that define what its model reads and writes.
FROM_INIT_RUN = ('mode', 'position_strategy', 'fixed_reserve', 'prompt_template',
                 'promise_lengths', 'quantum', 'max_promise_tokens')
CHECKPOINT_ITEMS = ('params', 'optimizer', 'config')


@dataclasses.dataclass(frozen=True)
class RoundResult:
  """What one round did.

  Attributes:
    round: its number (1 = from init.run).
    directory: its run directory.
    summary: the samples' `RoundSummary` (as JSON).
    pairs: pairs trained on (left-out ones not counted).
    steps: optimizer updates of the round.
    train: the last logged training metrics ({} if none this process).
  """

  round: int
  directory: str
  summary: dict[str, Any]
  pairs: int
  steps: int
  train: dict[str, float]


@dataclasses.dataclass(frozen=True)
class RoundsResult:
  """The rounds finished so far, and the signal that stopped the run early."""

  rounds: tuple[RoundResult, ...]
  stopped_by: int | None = None


def round_dir(workdir: str, r: int) -> str:
  """The run directory of round r (1-based)."""
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), f'round_{r}')


def round_seed(seed: int, r: int) -> int:
  """The sampling seed of round r (`sampling.request_seed` hashes it further)."""
  return int.from_bytes(hashlib.sha256(f'pasta_jax.rounds/{seed}/{r}'.encode()).digest()[:4],
                        'big')


# -- markers and files -----------------------------------------------------------


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_marker(directory: str, phase: str) -> dict | None:
  """The JSON of `<phase>.done` in a round directory, None if the phase is not done."""
  path = os.path.join(directory, f'{phase}.done')
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _mark(directory: str, phase: str, settings: Mapping[str, Any], **info: Any) -> None:
  """Ends a phase: process 0 writes its marker (it alone writes a round's files),
  then every process waits for it, so that all see the phase's files."""
  if jax.process_index() == 0:
    _write_atomic(os.path.join(directory, f'{phase}.done'),
                  json.dumps({'settings': dict(settings), **info}, indent=1).encode())
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'pasta_jax.rounds: {os.path.basename(directory)} '
                                        f'{phase}')


def _check_settings(directory: str, phase: str, marker: Mapping[str, Any],
                    settings: Mapping[str, Any]) -> None:
  done = marker['settings']
  diffs = [f'{k}: {done.get(k)!r} then, {v!r} now' for k, v in settings.items()
           if done.get(k) != v]
  if diffs:
    raise ConfigError(f'{directory} was {phase} with other settings ({"; ".join(diffs)}); '
                      'run with the same config, or in a new workdir')


def read_pairs(directory: str) -> list[dict[str, Any]]:
  """The lines of a round's pairs.jsonl."""
  with open(os.path.join(directory, PAIRS_FILE), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def read_reference(directory: str) -> dict[str, np.ndarray]:
  """A round's reference log-probs ({key: [pairs] float32}, `logprobs.PAIR_KEYS`)."""
  with np.load(os.path.join(directory, REFERENCE_FILE)) as data:
    return {k: data[k] for k in logprobs.PAIR_KEYS}


# -- checkpoints of a round ------------------------------------------------------


class RoundCheckpoints:
  """An orbax manager of a round's train state: items params, optimizer, config
  (what `runs.load_run` reads; no input-pipeline item, the batch order being a
  function of the step)."""

  def __init__(self, directory: str, *, keep: int, async_save: bool):
    self.directory = runs.checkpoint_dir(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=CHECKPOINT_ITEMS, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save))
    runs.quiet_orbax_aborts()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: TrainState, config: ml_collections.ConfigDict) -> None:
    step = int(jax.device_get(state.step))
    bad = runs.nonfinite_reason(state.params, 'params')
    if bad:
      raise errors.TrainingDiverged(
          f'not saving the checkpoint of step {step}: {bad}\nthe last good checkpoint is '
          f'step {self.latest_step()} in {self.directory}; lower config.po.lr')
    self._manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state}),
        config=ocp.args.JsonSave(runs.config_to_json(config))))

  def restore(self, step: int, target: TrainState) -> TrainState:
    steps = list(self._manager.all_steps())
    what = runs.missing_items(self.directory, step, CHECKPOINT_ITEMS)
    if what:
      raise runs.damaged(self.directory, step, what, steps, training=True)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(target.params),
          optimizer=ocp.args.StandardRestore({'step': target.step,
                                              'opt_state': target.opt_state})))
    except Exception as e:  # pylint: disable=broad-except
      raise runs.damaged(self.directory, step, runs.restore_failure(e), steps,
                         training=True) from e
    state = TrainState(step=restored['optimizer']['step'], params=restored['params'],
                       opt_state=restored['optimizer']['opt_state'])
    bad = runs.nonfinite_reason(state.params, 'params')
    if bad:
      raise runs.damaged(self.directory, step, bad, steps, training=True)
    return state

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


# -- the run ---------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
  """What every round shares."""

  config: ml_collections.ConfigDict  # the rounds' effective config
  workdir: str
  tok: tokenizer_lib.Tokenizer
  model_config: TransformerConfig
  mesh: jax.sharding.Mesh
  rules: list
  prompts: list[str]
  records: dict[int, Mapping[str, Any]]
  primary: bool
  stream: IO[str] | None
  init: tuple[str, int]  # init.run's directory and checkpoint step
  stop: loop.StopRequest | None = None

  def message(self, text: str) -> None:
    if self.primary:
      print(text, file=self.stream, flush=True)


def effective_config(config: ml_collections.ConfigDict,
                     init_config: ml_collections.ConfigDict
                     ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(the rounds' config, notes): `config` with the model, the tokenizer section
  and the `FROM_INIT_RUN` data keys of the stage-1 run's config."""
  config = ml_collections.ConfigDict(config.to_dict())
  notes = []
  init = runs.config_to_json(init_config)
  mine = runs.config_to_json(config)
  if not mine['model']['vocab_size']:
    mine['model']['vocab_size'] = init['model']['vocab_size']
  if mine['model'] != init['model']:
    notes.append('config.model: the model of config.init.run')
  config.model = ml_collections.ConfigDict(init['model'])
  config.tokenizer = ml_collections.ConfigDict(init['tokenizer'])
  for key in FROM_INIT_RUN:
    if key in init['data'] and init['data'][key] != mine['data'].get(key):
      notes.append(f'config.data.{key}={init["data"][key]!r} (config.init.run\'s)')
      with config.data.ignore_type():
        config.data[key] = init['data'][key]
  return config, notes


def run_rounds(config: ml_collections.ConfigDict, workdir: str, *,
               stream: IO[str] | None = None) -> RoundsResult:
  """Runs (or resumes) the stage-2 rounds of a config with a `po` section in `workdir`.

  Raises:
    ConfigError: a bad config value (named), or settings that changed under a
      finished phase.
    CheckpointError: `init.run` (or a finished round) cannot be loaded.
  """
  config = config_lib.resolve(config)
  if 'po' not in config:
    raise ConfigError('stage 2 needs a po section (configs/synth_po.py)')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  primary = jax.process_index() == 0
  init_run = runs.load_run(os.path.expanduser(config.init.run))
  if init_run.mode is not Mode.PASTA:
    raise ConfigError(f'config.init.run={config.init.run!r} was trained in mode '
                      f'{init_run.mode.value!r}; stage 2 starts from a PASTA run')
  config, notes = effective_config(config, init_run.config)
  model_config = config_lib.model_config(config)
  mesh = partitioning.make_mesh(config.mesh.shape)
  rules = config_lib.rules_for(model_config, mesh, config.mesh.rules)
  partitioning.check_batch(config.po.batch_size, mesh=mesh,
                           batch_axes=partitioning.batch_axes(config.mesh.rules),
                           process_count=jax.process_count(),
                           grad_accum_steps=config.optimizer.grad_accum_steps,
                           key='po.batch_size')
  source = inputs.data_sources(config.data, [config.po.split])[config.po.split]
  count = len(source) if not config.po.num_prompts else min(config.po.num_prompts,
                                                             len(source))
  records = {i: source[i] for i in range(count)}
  ctx = _Context(config=config, workdir=workdir, tok=init_run.tokenizer,
                 model_config=model_config, mesh=mesh, rules=rules,
                 prompts=[records_lib.decode_text(records[i]['prompt']) for i in range(count)],
                 records=records, primary=primary, stream=stream,
                 init=(init_run.workdir, init_run.step))
  os.makedirs(workdir, exist_ok=True)
  ctx.message(f'{workdir}: {config.po.rounds} preference round(s) from {init_run.workdir} '
              f'(step {init_run.step}), {count} prompts x {config.po.num_samples} samples, '
              f'lambda {config.po.lam}')
  for note in notes:
    ctx.message(f'from config.init.run: {note}')
  start_params = jax.tree.map(model_sharding.put, init_run.params,
                              model_sharding.param_shardings(model_config, mesh, rules))
  done: list[RoundResult] = []
  with loop.StopRequest() as stop:
    ctx.stop = stop
    for r in range(1, config.po.rounds + 1):
      if r > 1:
        start_params = None  # loaded when needed (round r - 1's final params)
      result = _run_round(ctx, r, start_params)
      if result is None:
        return RoundsResult(tuple(done), stopped_by=stop.signal)
      done.append(result)
  return RoundsResult(tuple(done))


def _starting_params(ctx: _Context, r: int, given):
  if given is not None:
    return given
  return runs.load_run(round_dir(ctx.workdir, r - 1), mesh=ctx.mesh, rules=ctx.rules).params


def _run_round(ctx: _Context, r: int, start_params) -> RoundResult | None:
  """One round, from its first unfinished phase; None when a signal stopped it."""
  directory = round_dir(ctx.workdir, r)
  os.makedirs(directory, exist_ok=True)
  if ctx.primary:
    runs.write_config(ctx.config, directory)
    if not os.path.exists(os.path.join(directory, runs.TOKENIZER_FILE)):
      runs.save_tokenizer(ctx.tok, directory)
  trained = read_marker(directory, 'trained')
  if trained is None:
    start_params = _starting_params(ctx, r, start_params)
    writer = metrics_lib.MetricWriter(directory, enabled=ctx.primary,
                                      resume_step=runs.latest_step(directory) or 0)
    try:
      if not _sample(ctx, r, directory, start_params):
        return None
      _score(ctx, r, directory, writer)
      _reference(ctx, r, directory, start_params)
      if not _train(ctx, r, directory, start_params, writer):
        return None
    finally:
      writer.close()
    trained = read_marker(directory, 'trained')
  with open(os.path.join(directory, SUMMARY_FILE), encoding='utf-8') as f:
    summary = json.load(f)
  return RoundResult(round=r, directory=directory, summary=summary,
                     pairs=trained['pairs'], steps=trained['steps'], train=trained['train'])


# -- phases ----------------------------------------------------------------------


def _sample_settings(ctx: _Context, r: int) -> dict[str, Any]:
  po = ctx.config.po
  return {'init_run': list(ctx.init), 'split': po.split, 'prompts': len(ctx.prompts),
          'num_samples': po.num_samples,
          'temperature': po.temperature, 'top_p': po.top_p, 'seed': round_seed(
              ctx.config.seed, r)}


def _sample(ctx: _Context, r: int, directory: str, params) -> bool:
  """Samples what is left; False when a signal stopped it between two chunks."""
  settings = _sample_settings(ctx, r)
  marker = read_marker(directory, 'sampled')
  if marker is not None:
    _check_settings(directory, 'sampled', marker, settings)
    return True
  po = ctx.config.po
  store = sampling.SampleStore(os.path.join(directory, SAMPLES_FILE), write=ctx.primary)
  wanted = sampling.Settings(n=po.num_samples, seed=settings['seed'],
                             temperature=float(po.temperature), top_p=float(po.top_p))
  if store.settings is not None and store.settings != wanted:
    raise ConfigError(f'{store.path} holds samples drawn with {store.settings}, not '
                      f'{wanted} (config.po.num_samples, temperature, top_p, seed); run '
                      'with the same config, or in a new workdir')
  done = {str(p) for p in store.done_ids}
  todo = [i for i in range(len(ctx.prompts)) if str(i) not in done]
  interp = Interpreter(ctx.model_config, params, ctx.tok,
                       config_lib.interpreter_config(ctx.config),
                       template=ctx.config.data.prompt_template, mesh=ctx.mesh,
                       rules=ctx.rules)
  bar = tqdm_auto.tqdm(total=len(ctx.prompts), initial=len(ctx.prompts) - len(todo),
                       desc=f'round {r}: sampling', unit='prompt', file=ctx.stream,
                       disable=not ctx.primary, dynamic_ncols=True)
  try:
    for start in range(0, len(todo), po.chunk_prompts):
      if ctx.stop is not None and ctx.stop.requested():
        ctx.message(f'stopped by signal {ctx.stop.signal} while sampling; '
                    f'{store.path} resumes at the next chunk')
        return False
      part = todo[start:start + po.chunk_prompts]
      sampling.sample_prompts(interp, [ctx.prompts[i] for i in part], part, po.num_samples,
                              settings['seed'], store, chunk_prompts=len(part),
                              temperature=po.temperature, top_p=po.top_p,
                              batch_size=po.sample_batch_size, log_every=0)
      bar.update(len(part))
  finally:
    bar.close()
  stats = store.stats()
  _mark(directory, 'sampled', settings, stats=stats.to_json(),
        partial_lines=store.partial_lines)
  return True


def _pair_json(pair: scoring.Pair) -> dict[str, Any]:
  return {'prompt_id': pair.prompt_id,
          'chosen_index': pair.chosen.sample.index,
          'rejected_index': pair.rejected.sample.index,
          'chosen_score': list(pair.chosen_score),
          'rejected_score': list(pair.rejected_score), 'margin': pair.margin,
          'chosen_quality': pair.chosen.quality, 'chosen_speedup': pair.chosen.speedup,
          'rejected_quality': pair.rejected.quality,
          'rejected_speedup': pair.rejected.speedup,
          'chosen': pair.chosen.sample.annotated, 'rejected': pair.rejected.sample.annotated}


def _score(ctx: _Context, r: int, directory: str, writer: metrics_lib.MetricWriter) -> None:
  lam = float(ctx.config.po.lam)
  settings = dict(_sample_settings(ctx, r), lam=lam)
  marker = read_marker(directory, 'scored')
  if marker is not None:
    _check_settings(directory, 'scored', marker, settings)
    return
  store = sampling.SampleStore(os.path.join(directory, SAMPLES_FILE))
  by_prompt = store.samples()
  ordered = {i: by_prompt[i] for i in range(len(ctx.prompts)) if i in by_prompt}
  scored = scoring.rate(ordered, ctx.records, scoring.synthetic_quality)
  pairs = scoring.make_pairs(scored, lam)
  summary = scoring.summarize(scored, lam)
  lines = ''.join(json.dumps(_pair_json(p)) + '\n' for p in pairs)
  if ctx.primary:
    _write_atomic(os.path.join(directory, PAIRS_FILE), lines.encode())
    _write_atomic(os.path.join(directory, SUMMARY_FILE),
                  json.dumps(summary.to_json(), indent=1).encode())
  scalars = dict(summary.to_json(), prompt_too_long=len(store.prompt_too_long()))
  scalars.pop('lam')
  writer.write(0, 'samples', scalars)
  ctx.message(f'round {r}: {summary.samples} samples of {summary.prompts} prompts: mean '
              f'score {summary.mean_score:.3f}, speedup {summary.mean_speedup:.3f}, quality '
              f'{summary.mean_quality:.3f}; {summary.pairs} pairs (mean margin '
              f'{summary.mean_margin:.3f})')
  _mark(directory, 'scored', settings, pairs=len(pairs))


def _packed(ctx: _Context, directory: str) -> tuple[logprobs.PackedPairs, list[int]]:
  """The round's pair batches (pair_index = line of pairs.jsonl), and the lines
  left out as malformed or too long; deterministic, so recomputed on resume."""
  data = ctx.config.data
  layouts, lines, left_out = [], [], []
  for i, pair in enumerate(read_pairs(directory)):
    try:
      layouts.append(logprobs.layout_pair(
          ctx.prompts[pair['prompt_id']], pair['chosen'], pair['rejected'], ctx.tok,
          template=data.prompt_template, promise_lengths=data.promise_lengths,
          position_strategy=config_lib.position_strategy(ctx.config)))
      lines.append(i)
    except lang.PastaLangError:
      left_out.append(i)
  po = ctx.config.po
  packed = logprobs.pack_pairs(layouts, batch_size=po.batch_size,
                               seq_len=po.seq_len or 2 * data.seq_len,
                               pairs_per_row=po.pairs_per_row, pad_id=ctx.tok.pad_id)
  lines_ = np.asarray(lines + [-1], np.int64)
  for batch in packed.batches:
    index = batch['pair_index']
    batch['pair_index'] = np.where(index >= 0, lines_[index], -1).astype(np.int32)
  left_out += [lines[i] for i in packed.too_long]
  return packed, sorted(left_out)


def _reference_settings(ctx: _Context, r: int) -> dict[str, Any]:
  po = ctx.config.po
  return dict(_sample_settings(ctx, r), lam=float(po.lam),
              seq_len=po.seq_len or 2 * ctx.config.data.seq_len)


def _reference(ctx: _Context, r: int, directory: str, params) -> None:
  settings = _reference_settings(ctx, r)
  marker = read_marker(directory, 'reference')
  if marker is not None:
    _check_settings(directory, 'reference', marker, settings)
    return
  packed, left_out = _packed(ctx, directory)
  num_pairs = len(read_pairs(directory))
  with step_lib.sharded(ctx.mesh, ctx.rules):
    reference = logprobs.reference_logprobs(params, packed.batches, num_pairs,
                                            model_config=ctx.model_config)
  if ctx.primary:
    path = os.path.join(directory, REFERENCE_FILE)
    with open(f'{path}.tmp', 'wb') as f:
      np.savez(f, **reference)
    os.replace(f'{path}.tmp', path)
  if left_out:
    ctx.message(f'round {r}: {len(left_out)} of {num_pairs} pairs left out (malformed, or '
                f'longer than config.po.seq_len={settings["seq_len"]})')
  _mark(directory, 'reference', settings, pairs=num_pairs, left_out=left_out)


def num_train_steps(po: ml_collections.ConfigDict, num_batches: int) -> int:
  """Updates of a round with `num_batches` pair batches (0 without pairs)."""
  if not num_batches:
    return 0
  return po.train_steps or max(1, math.ceil(po.epochs * num_batches))


def batch_order(seed: int, r: int, step: int, num_batches: int) -> int:
  """The pair batch of update `step` (0-based): each epoch a fresh permutation."""
  epoch, k = divmod(step, num_batches)
  return int(np.random.default_rng([seed, r, epoch]).permutation(num_batches)[k])


def _optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  opt = ml_collections.ConfigDict(config.optimizer.to_dict())
  for key in ('lr', 'schedule', 'warmup_steps', 'end_lr_factor'):
    opt[key] = config.po[key]
  return opt


def _train(ctx: _Context, r: int, directory: str, start_params,
           writer: metrics_lib.MetricWriter) -> bool:
  """Trains the round to its last step; False when a signal stopped it (saved)."""
  config, po = ctx.config, ctx.config.po
  packed, left_out = _packed(ctx, directory)
  reference = read_reference(directory)
  batches = [logprobs.with_reference(b, reference) for b in packed.batches]
  pairs = len(read_pairs(directory)) - len(left_out)
  num_steps = num_train_steps(po, len(batches))
  optimizer, schedule = state_lib.make_optimizer(_optimizer_config(config), max(num_steps, 1))
  shardings = state_lib.state_shardings(ctx.model_config, optimizer, ctx.mesh, ctx.rules)
  checkpoints = RoundCheckpoints(directory, keep=config.checkpoint.keep,
                                 async_save=config.checkpoint.async_save)
  bar = None
  stopped = False
  last: dict[str, float] = {}
  try:
    latest = checkpoints.latest_step()
    if latest is not None:
      target = state_lib.abstract_state(ctx.model_config, optimizer, shardings)
      state = checkpoints.restore(latest, target)
    else:
      state = loss_lib.policy_state(start_params, optimizer, shardings)
    step = int(jax.device_get(state.step))
    batch_sharding = partitioning.batch_sharding(ctx.mesh, ctx.rules)
    train_step = loss_lib.jit_train_step(
        model_config=ctx.model_config, optimizer=optimizer, schedule=schedule,
        alpha=po.alpha, beta=po.beta, grad_accum_steps=config.optimizer.grad_accum_steps,
        state_shardings=shardings, batch_sharding=batch_sharding)
    bar = metrics_lib.ProgressBar(num_steps, initial=step, stream=ctx.stream,
                                  enabled=ctx.primary)
    bar.message(f'round {r}: BoNBoN training on {pairs} pairs ({len(batches)} batches), '
                f'steps {step} -> {num_steps}')
    guard = step_lib.NonfiniteGuard(
        config.train.on_nonfinite, config.train.max_skipped_steps, lr=po.lr,
        last_checkpoint=lambda: (checkpoints.latest_step(), checkpoints.directory),
        message=bar.message)
    rows = po.batch_size // jax.process_count()
    first_row = jax.process_index() * rows
    window = []
    with step_lib.sharded(ctx.mesh, ctx.rules):
      while step < num_steps:
        batch = batches[batch_order(config.seed, r, step, len(batches))]
        local = {k: v[first_row:first_row + rows] for k, v in batch.items()}
        state, metrics = train_step(state, partitioning.global_batch(local, batch_sharding))
        step += 1
        window.append(metrics)
        bar.update(step)
        if step % po.log_every == 0 or step == num_steps:
          guard.check(window, step)
          last = _log(jax.device_get(window), step, writer, bar) or last
          window = []
        if step % po.checkpoint_every == 0 and step < num_steps:
          guard.check(window, step)
          checkpoints.save(state, config)
        if ctx.stop is not None and ctx.stop.requested():
          stopped = True
          break
    if checkpoints.latest_step() != step:
      guard.check(window, step)
      checkpoints.save(state, config)
    checkpoints.wait()
  finally:
    if bar is not None:
      bar.close()
    checkpoints.close()
  if stopped:
    ctx.message(f'stopped by signal {ctx.stop.signal} at step {step} of round {r}; '
                f'checkpoint saved in {runs.checkpoint_dir(directory)}')
    return False
  _mark(directory, 'trained', dict(_reference_settings(ctx, r), alpha=po.alpha,
                                   beta=po.beta, lr=po.lr),
        pairs=pairs, steps=num_steps, train=last)
  return True


def _log(window: Sequence[Mapping[str, Any]], step: int, writer: metrics_lib.MetricWriter,
         bar: metrics_lib.ProgressBar) -> dict[str, float]:
  applied = [m for m in window if not m['skipped']]
  if not applied:
    return {}
  sums = {k: sum(float(m[k]) for m in applied) for k in loss_lib.SUM_KEYS}
  scalars = loss_lib.summarize(sums)
  scalars.update(grad_norm=float(applied[-1]['grad_norm']), lr=float(applied[-1]['lr']))
  if len(applied) < len(window):
    scalars['skipped_steps'] = float(len(window) - len(applied))
  writer.write(step, 'train', scalars)
  bar.set_metrics(**{k: v for k, v in scalars.items() if k == 'loss'})
  return scalars
