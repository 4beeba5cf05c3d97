r"""Judge answers against baseline answers with an LLM (docs/judge.md).

  OPENAI_BASE_URL=http://localhost:8000/v1 OPENAI_API_KEY=... \
  python -m pasta_jax.judge --input pairs.jsonl --output verdicts.jsonl --model=MODEL

Each line of --input holds a prompt, an answer and the baseline answer it is
compared with (fields `prompt`, `answer`, `baseline`, or those --prompt_field,
--answer_field and --baseline_field name); its other fields are kept, and
--group_field (default `family`, when present) groups the win rates. The judge
compares the two answers in both orders, its preference weighted by its confidence
from log-probabilities when the service sends them (pasta_jax/judging.py). Each line
of --output is the input line with a `judgement`: the answer's win in [0, 1] (1: better
than the baseline), the outcome (judged, invalid, failed) and both orders' verdicts.
The run prints the win rate per group.

Replies are cached as they arrive (--cache), so the same command run again after a
kill asks only for the rest. Exit status 0 when every pair got its verdicts (invalid
verdicts are counted, not errors), 7 when some requests failed after their retries
(--output is written; run again to ask for those) or the service refused them, 2 and 3
for bad flags and input.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax import judging
from pasta_jax.annotation import formats
from pasta_jax.chat import flags as chat_flags
from pasta_jax.chat import service as service_lib
from pasta_jax.data import tfds_builders

_INPUT = cli.define(flags.DEFINE_string, 'input', None,
                    'JSONL file of (prompt, answer, baseline).')
_OUTPUT = cli.define(flags.DEFINE_string, 'output', None,
                     'JSONL file to write: each input line with its judgement.')
_PROMPT_FIELD = cli.define(flags.DEFINE_string, 'prompt_field', None,
                           'Field holding the prompt (default: prompt).')
_ANSWER_FIELD = flags.DEFINE_string('answer_field', 'answer', 'Field holding the answer '
                                    'judged.')
_BASELINE_FIELD = flags.DEFINE_string('baseline_field', 'baseline', 'Field holding the '
                                      'answer it is compared with.')
_GROUP_FIELD = flags.DEFINE_string('group_field', 'family', 'Field whose values group the '
                                   'win rates (absent from a line: no group).')
_LIMIT = cli.define(flags.DEFINE_integer, 'limit', None, 'Judge the first N lines only.')
_CACHE = cli.define(flags.DEFINE_string, 'cache', None, 'Reply cache (default: OUTPUT with '
                    '.cache.jsonl in place of .jsonl).')
_TOP_LOGPROBS = cli.define(flags.DEFINE_integer, 'top_logprobs',
                           judging.DEFAULT_TOP_LOGPROBS,
                           'Alternatives per reply token whose log-probabilities weigh the '
                           'verdict; 0: ask for none (a service that refuses logprobs).')
_FIX_ATTEMPTS = cli.define(flags.DEFINE_integer, 'fix_attempts', 1,
                           'Requests for a verdict again after a reply that is not one.')
_SERVICE = chat_flags.ServiceFlags(model_help='Model name of the judge.',
                                   max_tokens=judging.DEFAULT_MAX_TOKENS)


def read_pairs(path: str, fields: tuple[str, str, str], limit: int | None = None
               ) -> list[tuple[str, str, str, dict[str, Any]]]:
  """(prompt, answer, baseline, the whole line) per line; a DataError (`path:line`)
  for a line without the three text fields."""
  prompt_field, answer_field, baseline_field = fields
  out = []
  for record in formats.read(path, 'fields', fields=(prompt_field, answer_field)):
    if limit is not None and len(out) >= limit:
      break
    baseline = record.rest.get(baseline_field)
    if not isinstance(baseline, str):
      path_, line = record.where.rsplit(':', 1)
      problem = (f'missing field: {baseline_field!r}' if baseline is None else
                 f'invalid field: {baseline_field!r} must be a string, got '
                 f'{type(baseline).__name__}')
      raise tfds_builders.JsonlError(path_, int(line), problem)
    row = {prompt_field: record.prompt, answer_field: record.response, **record.rest}
    out.append((record.prompt, record.response, baseline, row))
  return out


def _paths() -> tuple[str, str]:
  output = _OUTPUT.value
  stem = output[:-len('.jsonl')] if output.endswith('.jsonl') else output
  cache = _CACHE.value or f'{stem}.cache.jsonl'
  real = os.path.realpath(_INPUT.value)
  for name, path in (('--output', output), ('--cache', cache)):
    if os.path.realpath(path) == real:
      raise errors.UsageError(f'{name}={path} is the input file; choose another path')
    if os.path.isdir(path):
      raise errors.UsageError(f'{name}={path} is a directory; give a file path')
  if os.path.realpath(output) == os.path.realpath(cache):
    raise errors.UsageError(f'--output and --cache are the same file {output}')
  return output, cache


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  for flag in (_INPUT, _OUTPUT):
    if flag.value is None:
      raise app.UsageError(f'--{flag.name} is required')
  service_lib.quiet_client_logs()
  if not os.path.isfile(_INPUT.value):
    raise errors.UsageError(f'--input={_INPUT.value}: no such file')
  cli.check_positive(_LIMIT)
  for flag in (_TOP_LOGPROBS, _FIX_ATTEMPTS):
    cli.check_flag(flag, flag.value >= 0, 'an int >= 0')
  settings = _SERVICE.settings()
  settings.check('the judge')
  output, cache = _paths()
  fields = (_PROMPT_FIELD.value or 'prompt', _ANSWER_FIELD.value, _BASELINE_FIELD.value)
  try:
    pairs = read_pairs(_INPUT.value, fields, _LIMIT.value)
  except tfds_builders.JsonlError as e:
    raise errors.DataError(str(e)) from None
  with judging.opened(settings, cache, top_logprobs=_TOP_LOGPROBS.value,
                      fix_attempts=_FIX_ATTEMPTS.value) as judge:
    print(f'note: {len(judge.service.cache)} replies in the cache {cache}')
    judgements = judging.judge_all(judge, [p[:3] for p in pairs],
                                   concurrency=settings.concurrency)
    counters = judge.service.counters
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(f'{output}.tmp', 'w', encoding='utf-8') as f:
    for (*_, row), judgement in zip(pairs, judgements):
      f.write(json.dumps({**row, 'judgement': judgement.to_json()}, ensure_ascii=False) + '\n')
  os.replace(f'{output}.tmp', output)
  groups = [str(row.get(_GROUP_FIELD.value, 'all')) for *_, row in pairs]
  summary = judging.summarize(judgements, groups)
  print(f'{_INPUT.value}: {len(pairs):,} pairs, judged by {settings.model}')
  print(judging.table(summary, _GROUP_FIELD.value))
  print(counters.summary())
  print(f'wrote {len(pairs):,} judgements to {output}')
  sys.stdout.flush()
  judging.check_failed(judgements, f'they have outcome failed in {output}')


if __name__ == '__main__':
  cli.run(main)
