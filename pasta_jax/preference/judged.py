"""Stage 2 with an LLM judge for quality (`po.quality = 'judge'`; docs/judge.md).

A sample's quality is the judge's confidence-weighted preference for it over the
sequential model's answer to the same prompt, both orders averaged
(`judging.Judgement.win`, in [0, 1], 1/2 a tie). The sequential model
(`po.judge.sequential_run`) does not change from round to round, so its greedy
answers are decoded once per stage-2 run, with the stage-2 config's interpreter
limits, and kept in WORKDIR/sequential_answers.json with the settings they were
decoded with (a changed setting decodes them again). Every round then judges its
samples against them; the replies are cached in `po.judge.cache`, so a run killed
while judging asks only for the rest when it resumes.

A sample gets no quality (NaN: `scoring.rate` counts it as unrated and no pair uses
it) when the sequential model found its prompt too long, or when the judge's
verdict stayed malformed after the fixes (`judging.INVALID`). Requests that fail
after their retries stop the round with a `ServiceError` before the phase is marked,
so that running the same command again asks for those only.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

from pasta_jax import config as config_lib
from pasta_jax import judging
from pasta_jax import runs
from pasta_jax.chat import flags as chat_flags
from pasta_jax.chat import service as service_lib
from pasta_jax.config import ConfigError
from pasta_jax.interpreter import Interpreter
from pasta_jax.interpreter import results as results_lib
from pasta_jax.preference import common
from pasta_jax.preference.sampling import PromptId, Sample
from pasta_jax.settings import Mode

ANSWERS_FILE = 'sequential_answers.json'
JUDGEMENTS_FILE = 'judgements.jsonl'


def settings(ctx: common.Context) -> dict[str, Any]:
  """What the round's scores depend on beyond the samples ({} with exact quality)."""
  po = ctx.config.po
  if po.quality != 'judge':
    return {}
  j = po.judge
  return {'quality': 'judge', 'judge_model': j.model,
          'sequential_run': os.path.abspath(os.path.expanduser(j.sequential_run)),
          'top_logprobs': j.top_logprobs, 'judge_max_tokens': j.max_tokens}


def _decode_settings(ctx: common.Context, workdir: str, step: int) -> dict[str, Any]:
  interp = config_lib.interpreter_config(ctx.config)
  return {'sequential_run': workdir, 'step': step, 'split': ctx.config.po.split,
          'prompts': len(ctx.prompts), 'max_steps': interp.max_steps,
          'cache_size': interp.cache_size, 'cache_stages': list(interp.cache_stages)}


def sequential_answers(ctx: common.Context) -> list[str | None]:
  """The sequential run's greedy answer to each prompt (None: too long for it),
  decoded on the first call of a stage-2 run and read back after (module docstring).
  Every process decodes (the interpreter runs on the mesh); process 0 writes."""
  workdir = os.path.abspath(os.path.expanduser(ctx.config.po.judge.sequential_run))
  step = runs.latest_step(workdir)
  if step is None:
    raise ConfigError(f'config.po.judge.sequential_run={workdir!r} has no checkpoint; '
                      'give the workdir of a finished sequential training run')
  wanted = _decode_settings(ctx, workdir, step)
  path = os.path.join(ctx.workdir, ANSWERS_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      stored = json.load(f)
    if stored['settings'] == wanted:
      return [a['text'] if a['status'] != results_lib.PROMPT_TOO_LONG else None
              for a in stored['answers']]
    ctx.message(f'{path} was decoded with other settings; decoding the answers again')
  run = runs.load_run(workdir, step, mesh=ctx.mesh)  # sharded by its own mesh.rules
  if run.mode is not Mode.SEQUENTIAL:
    raise ConfigError(f'config.po.judge.sequential_run={workdir!r} was trained in mode '
                      f'{run.mode.value!r}; the judge compares with a sequential run')
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
  return [a['text'] if a['status'] != results_lib.PROMPT_TOO_LONG else None for a in answers]


def service_settings(config: Mapping[str, Any]) -> chat_flags.Settings:
  """The judge's service from `po.judge` (the key from the variable it names)."""
  j = config['po']['judge']
  api_key = os.environ.get(j['api_key_env'])
  if not api_key:
    raise ConfigError(f"config.po.quality='judge' needs the judge's API key in the "
                      f"environment variable {j['api_key_env']} (config.po.judge.api_key_env; "
                      'any value for a service without keys)')
  return chat_flags.Settings(
      base_url=j['base_url'] or os.environ.get('OPENAI_BASE_URL') or None, api_key=api_key,
      model=j['model'], concurrency=j['concurrency'], timeout=j['timeout'],
      retry=service_lib.Retry(max_retries=j['max_retries'],
                              initial_backoff=j['initial_backoff'],
                              max_backoff=j['max_backoff']),
      max_tokens=j['max_tokens'],
      names={'base_url': 'config.po.judge.base_url', 'api_key': f'${j["api_key_env"]}',
             'model': 'config.po.judge.model'})


def judge_samples(ctx: common.Context, r: int, directory: str,
                  samples_by_prompt: Mapping[PromptId, Sequence[Sample]],
                  answers: Sequence[str | None]) -> tuple[dict[tuple[Any, int], float],
                                                          dict[str, int]]:
  """({(prompt id, sample index): quality}, counts): every sample judged against the
  sequential answer to its prompt; NaN for those without a quality. Writes the
  round's judgements.jsonl (process 0 only calls it)."""
  todo = [(pid, s) for pid, samples in samples_by_prompt.items() for s in samples
          if answers[pid] is not None]
  j = ctx.config.po.judge
  cache = j.cache or os.path.join(ctx.workdir, 'judge_cache.jsonl')
  service = service_settings(ctx.config)
  service_lib.quiet_client_logs()
  with judging.opened(service, cache, top_logprobs=j.top_logprobs,
                      fix_attempts=j.fix_attempts) as judge:
    judgements = judging.judge_all(
        judge, [(ctx.prompts[pid], s.text, answers[pid]) for pid, s in todo],
        concurrency=service.concurrency, progress=ctx.primary,
        desc=f'round {r}: judging')
    ctx.message(f'round {r}: judge {j.model}: {judge.service.counters.summary()}')
  judging.check_failed(judgements, f'round {r} is not scored yet')
  lines = ''.join(json.dumps({'prompt_id': pid, 'index': s.index, **jd.to_json()}) + '\n'
                  for (pid, s), jd in zip(todo, judgements))
  common.write_atomic(os.path.join(directory, JUDGEMENTS_FILE), lines.encode())
  qualities = {(pid, s.index): math.nan for pid, samples in samples_by_prompt.items()
               for s in samples}
  for (pid, s), judgement in zip(todo, judgements):
    if judgement.outcome == judging.JUDGED:
      qualities[pid, s.index] = judgement.win
  summary = judging.summarize(judgements)['all']
  counts = {'judged': summary[judging.JUDGED], 'invalid': summary[judging.INVALID],
            'no_sequential_answer': len(qualities) - len(todo)}
  return qualities, counts
