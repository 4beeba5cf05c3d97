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
             documents) and summary.json (`scoring.RoundSummary` at `po.lam`);
             with `po.quality = 'judge'` also judgements.jsonl (each sample
             against the sequential answer, `preference.judged`).
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

This module drives the rounds; `phases` holds the first three phases,
`training` the fourth, and `common` the files and markers they share (read them
through the names this module exports: `round_dir`, `read_marker`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import IO, Any

import jax
import ml_collections

from pasta_jax import config as config_lib
from pasta_jax import runs
from pasta_jax.config import ConfigError
from pasta_jax.data import records as records_lib
from pasta_jax.models import sharding as model_sharding
from pasta_jax.preference import common
from pasta_jax.preference import judged
from pasta_jax.preference import phases
from pasta_jax.preference import training
# What callers read a round's directory with.
from pasta_jax.preference.common import PHASES  # noqa: F401
from pasta_jax.preference.common import SAMPLES_FILE  # noqa: F401
from pasta_jax.preference.common import SUMMARY_FILE  # noqa: F401
from pasta_jax.preference.common import read_marker  # noqa: F401
from pasta_jax.preference.common import read_pairs  # noqa: F401
from pasta_jax.preference.common import read_reference  # noqa: F401
from pasta_jax.preference.common import round_dir  # noqa: F401
from pasta_jax.settings import Mode
from pasta_jax.training import inputs
from pasta_jax.training import loop
from pasta_jax.training import metrics as metrics_lib
from pasta_jax.training import partitioning

# The stage-1 run's data keys that define what its model reads and writes.
FROM_INIT_RUN = ('mode', 'position_strategy', 'fixed_reserve', 'prompt_template',
                 'promise_lengths', 'quantum', 'max_promise_tokens')


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



# -- the run ---------------------------------------------------------------------


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
  if config.po.quality == 'judge':
    judged.service_settings(config)  # a missing API key, before hours of sampling
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
  ctx = common.Context(config=config, workdir=workdir, tok=init_run.tokenizer,
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


def _starting_params(ctx: common.Context, r: int, given):
  if given is not None:
    return given
  return runs.load_run(common.round_dir(ctx.workdir, r - 1), mesh=ctx.mesh,
                       rules=ctx.rules).params


def _run_round(ctx: common.Context, r: int, start_params) -> RoundResult | None:
  """One round, from its first unfinished phase; None when a signal stopped it."""
  directory = common.round_dir(ctx.workdir, r)
  os.makedirs(directory, exist_ok=True)
  if ctx.primary:
    runs.write_config(ctx.config, directory)
    if not os.path.exists(os.path.join(directory, runs.TOKENIZER_FILE)):
      runs.save_tokenizer(ctx.tok, directory)
  trained = common.read_marker(directory, 'trained')
  if trained is None:
    start_params = _starting_params(ctx, r, start_params)
    writer = metrics_lib.MetricWriter(directory, enabled=ctx.primary,
                                      resume_step=runs.latest_step(directory) or 0)
    try:
      if not phases.sample(ctx, r, directory, start_params):
        return None
      phases.score(ctx, r, directory, writer)
      phases.reference(ctx, r, directory, start_params)
      if not training.train(ctx, r, directory, start_params, writer):
        return None
    finally:
      writer.close()
    trained = common.read_marker(directory, 'trained')
  with open(os.path.join(directory, common.SUMMARY_FILE), encoding='utf-8') as f:
    summary = json.load(f)
  return RoundResult(round=r, directory=directory, summary=summary,
                     pairs=trained['pairs'], steps=trained['steps'], train=trained['train'])

