"""One annotation run from its settings: what `python -m pasta_jax.annotate` does.

`run_job(Job(...))` reads the input, annotates it with the llm or the rules
annotator, writes the output, the rejects and (llm) the reply cache, prints what it
did and returns the counts; `pasta_jax.annotate` turns flags into a `Job` and a
failed request into exit status 7 (docs/annotation.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, TextIO

from pasta_jax import errors
from pasta_jax import lang
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.annotation import formats
from pasta_jax.annotation import prompt as prompt_lib
from pasta_jax.annotation import runner
from pasta_jax.annotation import validation
from pasta_jax.chat import cache as cache_lib
from pasta_jax.chat import flags as chat_flags
from pasta_jax.chat import service as service_lib

ANNOTATORS = ('llm', 'rules')
DEFAULT_MAX_PROMISE_TOKENS = 100  # the pasta_jsonl builder's and the training config's


@dataclasses.dataclass(frozen=True)
class Job:
  """The settings of a run (the command line's flags; docs/annotation.md)."""

  input: str
  output: str
  annotator: str
  format: str = 'auto'
  fields: tuple[str, str] | None = None  # (prompt, response) field names
  on_error: str = 'fail'
  limit: int | None = None
  rejects: str | None = None  # default: OUTPUT's stem + .rejects.jsonl
  cache: str | None = None    # default: OUTPUT's stem + .cache.jsonl
  # The llm annotator.
  base_url: str | None = None
  api_key: str | None = None
  model: str | None = None
  concurrency: int = 8
  timeout: float = 120.0
  retry: service_lib.Retry = service_lib.Retry()
  temperature: float = 0.0
  max_tokens: int | None = None
  fix_attempts: int = 1
  # Promised lengths.
  tokenizer: str | None = None
  keep_predicted_tokens: bool = False
  quantum: int | None = None
  max_promise_tokens: int | None = None
  progress: bool = True

  def side_file(self, suffix: str) -> str:
    stem = self.output[:-len('.jsonl')] if self.output.endswith('.jsonl') else self.output
    return f'{stem}.{suffix}.jsonl'

  @property
  def rejects_path(self) -> str:
    return self.rejects or self.side_file('rejects')

  @property
  def cache_path(self) -> str:
    return self.cache or self.side_file('cache')


def load_tokenizer(path: str) -> tokenizer_lib.Tokenizer:
  """A run directory's tokenizer, a model saved with `Tokenizer.save`, or (no
  sidecar) a plain sentencepiece model wrapped as `Tokenizer.from_pretrained` does."""
  try:
    if os.path.isdir(path):
      from pasta_jax import runs  # pylint: disable=g-import-not-at-top
      return runs.load_tokenizer(path)
    if not os.path.isfile(path):
      raise FileNotFoundError('no such file or directory')
    if os.path.exists(tokenizer_lib.sidecar_path(path)):
      return tokenizer_lib.Tokenizer.load(path)
    return tokenizer_lib.Tokenizer.from_pretrained(path)
  except errors.UserError as e:
    raise errors.UsageError(f'--tokenizer={path}: {e}') from e
  except (OSError, ValueError, RuntimeError) as e:
    raise errors.UsageError(f'--tokenizer={path}: cannot load it as a tokenizer ({e})') from e


def lengths_for(job: Job) -> tuple[validation.Lengths, str]:
  """How promised lengths are set, and a note that says how."""
  if job.tokenizer is None:
    quantum = job.quantum or lang.DEFAULT_QUANTUM
    max_tokens = (DEFAULT_MAX_PROMISE_TOKENS if job.max_promise_tokens is None
                  else job.max_promise_tokens)
    guess = ("the annotator's predictions" if job.annotator == 'llm'
             else 'estimates (one token per 4 characters)')
    return (validation.Lengths(None, quantum, max_tokens, keep_predicted=True),
            f'no --tokenizer: promised lengths are {guess}, rounded up to a multiple of '
            f'{quantum} and capped at {max_tokens}; pass --tokenizer to count them')
  tok = load_tokenizer(job.tokenizer)
  for name, value, own in (('quantum', job.quantum, tok.quantum),
                           ('max_promise_tokens', job.max_promise_tokens,
                            tok.max_promise_tokens)):
    if value is not None and value != own:
      raise errors.UsageError(f'--{name}={value} disagrees with --tokenizer={job.tokenizer}, '
                              f'whose {name} is {own}; leave --{name} out')
  lengths = validation.Lengths(tok, tok.quantum, tok.max_promise_tokens,
                               keep_predicted=job.keep_predicted_tokens)
  how = ('kept as predicted' if job.keep_predicted_tokens else
         'counted by the tokenizer')
  return lengths, (f'promised lengths are {how}, rounded up to a multiple of {tok.quantum} '
                   f'and capped at {tok.max_promise_tokens}')


def _check_paths(job: Job) -> None:
  paths = {'--output': job.output, '--rejects': job.rejects_path}
  if job.annotator == 'llm':
    paths['--cache'] = job.cache_path
  real = os.path.realpath(job.input)
  names = list(paths)
  for i, name in enumerate(names):
    if os.path.realpath(paths[name]) == real:
      raise errors.UsageError(f'{name}={paths[name]} is the input file; choose another path')
    if os.path.isdir(paths[name]):
      raise errors.UsageError(f'{name}={paths[name]} is a directory; give a file path')
    for other in names[i + 1:]:
      if os.path.realpath(paths[name]) == os.path.realpath(paths[other]):
        raise errors.UsageError(f'{name} and {other} are the same file {paths[name]}')


def _service(job: Job, counters: service_lib.Counters,
             cache: cache_lib.Cache) -> service_lib.Service:
  return service_lib.Service(base_url=job.base_url, api_key=job.api_key, model=job.model,
                             timeout=job.timeout, retry=job.retry,
                             temperature=job.temperature, max_tokens=job.max_tokens,
                             cache=cache, counters=counters,
                             prompt_version=prompt_lib.PROMPT_VERSION)


def run_job(job: Job, out: TextIO | None = None) -> tuple[runner.Summary,
                                                           service_lib.Counters | None]:
  """Runs an annotation job; prints notes and the counts on `out` (stdout).

  Returns:
    The counts by outcome, and the request counters (llm; None for rules).

  Raises:
    UsageError, DataError: bad settings or input (before any request).
    ServiceError: the service refused every request (401, 403, 404); nothing is
      written then. Failed requests after retries do not raise: the caller reads
      them in the summary (`runner.FAILED`).
  """
  out = out or sys.stdout
  if job.annotator not in ANNOTATORS:
    raise errors.UsageError(f'--annotator={job.annotator}: expected one of {ANNOTATORS}')
  _check_paths(job)
  if job.annotator == 'llm':
    chat_flags.check_service(job.model, job.api_key, '--annotator=llm')
  lengths, note = lengths_for(job)
  fields = job.fields or ('prompt', 'response')
  fmt = 'fields' if job.fields else job.format
  records = []
  for record in formats.read(job.input, fmt, fields=fields, on_error=job.on_error):
    if job.limit is not None and len(records) >= job.limit:
      break
    records.append(record)
  print(f'note: {note}', file=out)
  counters = cache = service = None
  metadata = {'annotator': job.annotator,
              'lengths': 'measured' if lengths.measured else
                         ('predicted' if job.annotator == 'llm' else 'estimated')}
  if job.annotator == 'llm':
    counters = service_lib.Counters()
    cache = cache_lib.Cache(job.cache_path)
    service = _service(job, counters, cache)
    annotator: runner.Annotator = runner.LlmAnnotator(service, fix_attempts=job.fix_attempts)
    metadata['model'] = job.model
    print(f'note: {len(cache)} replies in the cache {job.cache_path}', file=out)
  else:
    annotator = runner.RulesAnnotator()

  def annotate(record: formats.Record) -> runner.Result:
    return runner.annotate_record(record, annotator, lengths)

  postfix: Callable[[], dict] | None = None
  if counters is not None:
    postfix = lambda: {'requests': counters.requests,  # noqa: E731
                       'tokens': counters.prompt_tokens + counters.completion_tokens}
  try:
    summary = runner.run(records, annotate, output=job.output, rejects=job.rejects_path,
                         metadata=metadata,
                         concurrency=job.concurrency if service else 1,
                         progress=job.progress, on_stop=service.stop if service else None,
                         postfix=postfix)
  except service_lib.RequestFailed as failure:
    raise errors.ServiceError(
        f'the service refused a request with status {failure.kind}: {failure.detail}. '
        f'Nothing was written; the {len(cache)} replies received are kept in '
        f'{job.cache_path}') from None
  finally:
    if service is not None:
      service.close()
      cache.close()
  print(f'{job.input}: {summary.total:,} records', file=out)
  print(summary.table(), file=out)
  if counters is not None:
    print(counters.summary(), file=out)
  print(f'wrote {summary.accepted:,} examples to {job.output} and '
        f'{summary.total - summary.accepted:,} rejects to {job.rejects_path}', file=out)
  return summary, counters
