"""The sequential model's answers to the preference prompts (`po.sequential_run`).

When a stage-2 run names a sequential run, that run's greedy answer to each prompt
is the baseline of the samples' theoretical speedups (its tokens, EOS included:
docs/design.md section 7) and, with `po.quality = 'judge'`, what the judge
compares every sample with (`preference.judged`). Without one, a sample's speedup
is measured against its own stripped answer.

The sequential model does not change from round to round, so its answers are
decoded once per stage-2 run, with the stage-2 config's interpreter limits, and
kept in WORKDIR/sequential_answers.json with the settings they were decoded with;
a changed setting (another run or checkpoint, split, prompt count or interpreter
limit) decodes them again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from pasta_jax import config as config_lib
from pasta_jax import runs
from pasta_jax.config import ConfigError
from pasta_jax.interpreter import Interpreter
from pasta_jax.interpreter import results as results_lib
from pasta_jax.preference import common
from pasta_jax.settings import Mode

ANSWERS_FILE = 'sequential_answers.json'


@dataclasses.dataclass(frozen=True)
class Answer:
  """The sequential model's answer to one prompt."""
  text: str
  tokens: int  # tokens it sampled, EOS included


def run_dir(ctx: common.Context) -> str:
  """`po.sequential_run` as an absolute path ('' when the run has none)."""
  run = ctx.config.po.sequential_run
  return os.path.abspath(os.path.expanduser(run)) if run else ''


def settings(ctx: common.Context) -> dict[str, Any]:
  """What a round's scores take from the sequential run ({} without one)."""
  return {'sequential_run': run_dir(ctx)} if run_dir(ctx) else {}


def _decode_settings(ctx: common.Context, workdir: str, step: int) -> dict[str, Any]:
  interp = config_lib.interpreter_config(ctx.config)
  return {'sequential_run': workdir, 'step': step, 'split': ctx.config.po.split,
          'prompts': len(ctx.prompts), 'max_steps': interp.max_steps,
          'cache_size': interp.cache_size, 'cache_stages': list(interp.cache_stages)}


def _answers(stored: list[dict[str, Any]]) -> list[Answer | None]:
  return [Answer(a['text'], a['tokens']) if a['status'] != results_lib.PROMPT_TOO_LONG
          else None for a in stored]


def sequential_answers(ctx: common.Context) -> list[Answer | None]:
  """The sequential run's greedy answer to each prompt (None: too long for it),
  decoded on the first call of a stage-2 run and read back after (module
  docstring). Every process decodes (the interpreter runs on the mesh); process 0
  writes."""
  workdir = run_dir(ctx)
  step = runs.latest_step(workdir)
  if step is None:
    raise ConfigError(f'config.po.sequential_run={workdir!r} has no checkpoint; '
                      'give the workdir of a finished sequential training run')
  wanted = _decode_settings(ctx, workdir, step)
  path = os.path.join(ctx.workdir, ANSWERS_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      stored = json.load(f)
    if stored['settings'] == wanted:
      return _answers(stored['answers'])
    ctx.message(f'{path} was decoded with other settings; decoding the answers again')
  run = runs.load_run(workdir, step, mesh=ctx.mesh)  # sharded by its own mesh.rules
  if run.mode is not Mode.SEQUENTIAL:
    raise ConfigError(f'config.po.sequential_run={workdir!r} was trained in mode '
                      f"{run.mode.value!r}; give a sequential run (configs/synth.py:sequential)")
  rules = config_lib.rules_for(run.model_config, ctx.mesh, run.config.mesh.rules)
  interp = Interpreter.from_run(run, mesh=ctx.mesh, rules=rules, max_steps=wanted['max_steps'],
                                cache_size=wanted['cache_size'],
                                cache_stages=tuple(wanted['cache_stages']))
  ctx.message(f'decoding the sequential answers of {len(ctx.prompts)} prompts with {workdir} '
              f'(step {step}), once for every round')
  results = interp.generate(ctx.prompts, batch_size=ctx.config.po.sample_batch_size)
  answers = [{'status': r.status, 'text': r.text, 'tokens': r.total_tokens} for r in results]
  if ctx.primary:
    common.write_atomic(path, json.dumps({'settings': wanted, 'answers': answers},
                                         indent=1).encode())
  return _answers(answers)
