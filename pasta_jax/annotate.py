r"""Stage 0: annotate plain responses with PASTA-LANG (docs/annotation.md).

With an LLM behind any OpenAI-compatible chat-completions service:

  OPENAI_BASE_URL=http://localhost:8000/v1 OPENAI_API_KEY=... \
  python -m pasta_jax.annotate --input responses.jsonl --output annotated.jsonl \
      --annotator=llm --model=MODEL --tokenizer=workdir/run/tokenizer.model

or with the rules (list items become promises; no service):

  python -m pasta_jax.annotate --input responses.jsonl --output annotated.jsonl --annotator=rules

The input is prompt/response, Alpaca, ShareGPT or OpenAI-messages JSONL (detected,
or named with --prompt_field/--response_field). The output feeds
`python -m pasta_jax.data.build --dataset=pasta_jsonl` directly; records that are not
accepted go to the rejects file with their reason, and the run ends with the count
of each outcome. Replies are cached as they arrive, so the same command run again
after a kill asks only for the rest. Exit status 0 when every request got an answer
(rejected annotations are counted, not errors), 7 when some failed after their
retries or the service refused the requests, 2 and 3 for bad flags and input
(docs/training.md, "Bad input").
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app
from absl import flags

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax.annotation import formats
from pasta_jax.annotation import job as job_lib
from pasta_jax.annotation import runner
from pasta_jax.chat import flags as chat_flags
from pasta_jax.chat import service as service_lib

_INPUT = cli.define(flags.DEFINE_string, 'input', None,
                    'JSONL file of responses to annotate.')
_OUTPUT = cli.define(flags.DEFINE_string, 'output', None,
                     'JSONL file to write (pasta_jsonl fields).')
_ANNOTATOR = flags.DEFINE_enum('annotator', None, list(job_lib.ANNOTATORS),
                               'llm (a chat-completions service) or rules (list items).')
_FORMAT = flags.DEFINE_enum('format', 'auto', ['auto', *formats.FORMATS[:-1]],
                            'Input format; auto: detected from the first record.')
_PROMPT_FIELD = cli.define(flags.DEFINE_string, 'prompt_field', None,
                           'Field holding the prompt (default "prompt" when '
                           '--response_field is set).')
_RESPONSE_FIELD = flags.DEFINE_string('response_field', None, 'Field holding the response '
                                      '(default "response" when --prompt_field is set).')
_ON_ERROR = flags.DEFINE_enum('on_error', 'fail', ['fail', 'skip'],
                              'A record that does not fit the format: stop, or skip it '
                              '(outcome skipped-bad-record, in the rejects file).')
_LIMIT = cli.define(flags.DEFINE_integer, 'limit', None,
                    'Annotate the first N records only.')
_REJECTS = flags.DEFINE_string('rejects', None, 'Rejects file (default: OUTPUT with '
                               '.rejects.jsonl in place of .jsonl).')
_CACHE = cli.define(flags.DEFINE_string, 'cache', None, 'Reply cache (default: OUTPUT with '
                    '.cache.jsonl in place of .jsonl).')
_SERVICE = chat_flags.ServiceFlags(model_help='Model name for --annotator=llm.')
_FIX_ATTEMPTS = cli.define(flags.DEFINE_integer, 'fix_attempts', 1,
                           'Requests for a fix of an invalid annotation, the error shown '
                           'to the model.')
_TOKENIZER = flags.DEFINE_string('tokenizer', None, 'Tokenizer that counts promised '
                                 "lengths: a run directory, a run's tokenizer.model or a "
                                 'sentencepiece model.')
_KEEP_PREDICTED = flags.DEFINE_bool('keep_predicted_tokens', False, "Keep the annotator's "
                                    'predicted lengths even with --tokenizer.')
_QUANTUM = flags.DEFINE_integer('quantum', None, 'Promised lengths are multiples of it '
                                "(default: the tokenizer's, else 10).")
_MAX_PROMISE_TOKENS = flags.DEFINE_integer('max_promise_tokens', None, 'Cap on promised '
                                           "lengths (default: the tokenizer's, else 100).")


def _job() -> job_lib.Job:
  for flag in (_INPUT, _OUTPUT, _ANNOTATOR):
    if flag.value is None:
      raise app.UsageError(f'--{flag.name} is required')
  if not os.path.isfile(_INPUT.value):
    raise errors.UsageError(f'--input={_INPUT.value}: no such file')
  cli.check_positive(_LIMIT, _QUANTUM)
  for flag in (_FIX_ATTEMPTS, _MAX_PROMISE_TOKENS):
    if flag.value is not None:
      cli.check_flag(flag, flag.value >= 0, 'an int >= 0')
  service = _SERVICE.settings()
  fields = None
  if _PROMPT_FIELD.value or _RESPONSE_FIELD.value:
    fields = (_PROMPT_FIELD.value or 'prompt', _RESPONSE_FIELD.value or 'response')
    if _FORMAT.value != 'auto':
      raise errors.UsageError('--prompt_field/--response_field name the fields of their '
                              f'own format; leave out --format={_FORMAT.value}')
  if _QUANTUM.value and _MAX_PROMISE_TOKENS.value is not None:
    cli.check_flag(_MAX_PROMISE_TOKENS, _MAX_PROMISE_TOKENS.value % _QUANTUM.value == 0,
                   f'a multiple of --quantum={_QUANTUM.value}')
  return job_lib.Job(
      input=_INPUT.value, output=_OUTPUT.value, annotator=_ANNOTATOR.value,
      format=_FORMAT.value, fields=fields, on_error=_ON_ERROR.value, limit=_LIMIT.value,
      rejects=_REJECTS.value, cache=_CACHE.value,
      base_url=service.base_url, api_key=service.api_key, model=service.model,
      concurrency=service.concurrency, timeout=service.timeout, retry=service.retry,
      temperature=service.temperature, max_tokens=service.max_tokens,
      fix_attempts=_FIX_ATTEMPTS.value, tokenizer=_TOKENIZER.value,
      keep_predicted_tokens=_KEEP_PREDICTED.value, quantum=_QUANTUM.value,
      max_promise_tokens=_MAX_PROMISE_TOKENS.value)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  service_lib.quiet_client_logs()
  job = _job()
  summary, _ = job_lib.run_job(job)
  failed = summary.outcomes[runner.FAILED]
  if failed:
    raise errors.ServiceError(
        f'{failed} of {summary.total} records got no annotation: their requests failed '
        f'after {job.retry.max_retries} retries ({summary.reasons_of(runner.FAILED)}); '
        f'they are listed in {job.rejects_path}. Run the same command again to ask for '
        f'these only (the replies already received come from the cache)')


if __name__ == '__main__':
  cli.run(main)
