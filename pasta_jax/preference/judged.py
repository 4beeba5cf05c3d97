"""Stage 2 with an LLM judge for quality (`po.quality = 'judge'`; docs/judge.md).

A sample's quality is the judge's confidence-weighted preference for it over the
sequential model's answer to the same prompt (`po.sequential_run`, decoded once
per stage-2 run: `preference.baseline`), both orders averaged
(`judging.Judgement.win`, in [0, 1], 1/2 a tie). Every round judges its samples
against those answers; the replies are cached in `po.judge.cache`, so a run killed
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

from pasta_jax import judging
from pasta_jax.chat import flags as chat_flags
from pasta_jax.chat import service as service_lib
from pasta_jax.config import ConfigError
from pasta_jax.preference import baseline
from pasta_jax.preference import common
from pasta_jax.preference.sampling import PromptId, Sample

JUDGEMENTS_FILE = 'judgements.jsonl'


def settings(ctx: common.Context) -> dict[str, Any]:
  """What the round's scores depend on beyond the samples ({} with exact quality)."""
  po = ctx.config.po
  if po.quality != 'judge':
    return {}
  j = po.judge
  return {'quality': 'judge', 'judge_model': j.model,
          'top_logprobs': j.top_logprobs, 'judge_max_tokens': j.max_tokens}


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
                  answers: Sequence[baseline.Answer | None]) -> tuple[dict[tuple[Any, int], float],
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
        judge, [(ctx.prompts[pid], s.text, answers[pid].text) for pid, s in todo],
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
