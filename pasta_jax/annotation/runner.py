"""Annotating a file: the annotators, each record's outcome, and the run that writes
the output and the rejects (docs/annotation.md, "Outcomes").

Every input record ends in exactly one outcome. The accepted ones (`ACCEPTED`) are
the output, one line each, in input order, in the fields the `pasta_jsonl` builder
reads; all others go to the rejects file with their reason. Both files are written
beside their final names and renamed into place at the end, so a killed run leaves
the previous files (or none), never half a file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Protocol, Sequence

from pasta_jax import lang
from pasta_jax.annotation import formats
from pasta_jax.annotation import prompt as prompt_lib
from pasta_jax.annotation import rules
from pasta_jax.annotation import validation
from pasta_jax.chat import service as service_lib

ANNOTATED = 'annotated'
UNCHANGED = 'unchanged-no-tags'
REJECTED = 'rejected-invalid'
FAILED = 'failed-request'
SKIPPED_EMPTY = 'skipped-empty'
SKIPPED_HAS_TAGS = 'skipped-has-tags'
OUTCOMES = (ANNOTATED, UNCHANGED, REJECTED, FAILED, SKIPPED_EMPTY, SKIPPED_HAS_TAGS,
            formats.SKIPPED_NO_RESPONSE, formats.SKIPPED_BAD_RECORD)
ACCEPTED = (ANNOTATED, UNCHANGED)
# Fields of an input record that the output keeps at its top level, where the
# pasta_jsonl builder reads them; the other unused fields go under `original`.
PASSED_THROUGH = ('family', 'facts')


@dataclasses.dataclass(frozen=True)
class Annotation:
  """What an annotator made of one response: a document laid on the response
  (`validation.check`), or the last reply and why it is invalid."""

  document: lang.Document | None
  attempts: int = 1
  reply: str | None = None
  invalid: validation.Invalid | None = None


class Annotator(Protocol):
  name: str

  def annotate(self, prompt: str, response: str) -> Annotation:
    """Raises `service.RequestFailed` when no annotation could be asked for."""


class LlmAnnotator:
  """Asks the service for an annotation, and again with the error while it is invalid."""

  name = 'llm'

  def __init__(self, service: service_lib.Service,
               examples: Sequence[prompt_lib.Example] | None = None, fix_attempts: int = 1):
    self.service = service
    self.examples = tuple(prompt_lib.load_examples() if examples is None else examples)
    self.fix_attempts = fix_attempts

  def annotate(self, prompt: str, response: str) -> Annotation:
    chat = prompt_lib.messages(prompt, response, self.examples)
    attempts = 0
    while True:
      reply = self.service.complete(chat)
      attempts += 1
      try:
        document = validation.check(reply['content'], response,
                                    finish_reason=reply.get('finish_reason'))
        return Annotation(document, attempts, reply['content'])
      except validation.Invalid as invalid:
        # A reply cut off at the output limit would be cut off again.
        if attempts > self.fix_attempts or invalid.reason == validation.TRUNCATED:
          return Annotation(None, attempts, reply['content'], invalid)
        chat = prompt_lib.fix_messages(chat, reply['content'], invalid)


class RulesAnnotator:
  """The rule-based annotator (`rules.annotate`), validated like any other."""

  name = 'rules'

  def annotate(self, prompt: str, response: str) -> Annotation:
    del prompt  # The rules read the response only.
    text = lang.serialize(rules.annotate(response))
    try:
      return Annotation(validation.check(text, response), 1, text)
    except validation.Invalid as invalid:  # a bug in the rules; reported, not hidden
      return Annotation(None, 1, text, invalid)


@dataclasses.dataclass(frozen=True)
class Result:
  """The outcome of one record; `document` for the accepted ones, else `reason`
  (a validation reason, a request failure kind, or the outcome) and `detail`."""

  record: formats.Record
  outcome: str
  document: lang.Document | None = None
  reason: str = ''
  detail: str = ''
  reply: str | None = None
  attempts: int = 0


def annotate_record(record: formats.Record, annotator: Annotator,
                    lengths: validation.Lengths) -> Result:
  """One record's result; raises `RequestFailed` only for a fatal one."""
  if record.problem is not None:
    outcome, detail = record.problem
    return Result(record, outcome, reason=outcome, detail=detail)
  if not record.response.strip():
    return Result(record, SKIPPED_EMPTY, reason=SKIPPED_EMPTY,
                  detail='the response is empty or whitespace only')
  tags = validation.contains_tags(record.response)
  if tags:
    return Result(record, SKIPPED_HAS_TAGS, reason=SKIPPED_HAS_TAGS,
                  detail=f'the response itself holds PASTA-LANG: {tags}; it cannot be '
                  'annotated without changing its text')
  try:
    annotation = annotator.annotate(record.prompt, record.response)
  except service_lib.RequestFailed as failure:
    if failure.fatal:
      raise
    return Result(record, FAILED, reason=failure.kind, detail=failure.detail)
  if annotation.document is None:
    return Result(record, REJECTED, reason=annotation.invalid.reason,
                  detail=annotation.invalid.detail, reply=annotation.reply,
                  attempts=annotation.attempts)
  document = lengths.apply(annotation.document)
  return Result(record, ANNOTATED if document.promises else UNCHANGED, document,
                attempts=annotation.attempts)


def output_row(result: Result, metadata: dict[str, Any]) -> dict[str, Any]:
  """An accepted result as a line of the output (the fields pasta_jsonl reads)."""
  record = result.record
  row = {'prompt': record.prompt, 'annotated_response': lang.serialize(result.document)}
  row.update({k: record.rest[k] for k in PASSED_THROUGH if k in record.rest})
  row['annotation'] = {'input': record.where, 'outcome': result.outcome,
                       'promises': len(result.document.promises),
                       'attempts': result.attempts, **metadata}
  original = {k: v for k, v in record.rest.items() if k not in PASSED_THROUGH}
  if original:
    row['original'] = original
  return row


def reject_row(result: Result) -> dict[str, Any]:
  """A result that is not in the output, as a line of the rejects file."""
  record = result.record
  row = {'input': record.where, 'outcome': result.outcome, 'reason': result.reason,
         'detail': result.detail}
  if record.response is not None:
    row.update(prompt=record.prompt, response=record.response)
  if result.reply is not None:
    row.update(reply=result.reply, attempts=result.attempts)
  row['original'] = dict(record.rest)
  return row


@dataclasses.dataclass
class Summary:
  """Counts of a run, by outcome and by (outcome, reason) for the others."""

  outcomes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, result: Result) -> None:
    self.outcomes[result.outcome] += 1
    if result.outcome not in ACCEPTED:
      self.reasons[result.outcome, result.reason] += 1

  @property
  def accepted(self) -> int:
    return sum(self.outcomes[o] for o in ACCEPTED)

  @property
  def total(self) -> int:
    return sum(self.outcomes.values())

  def reasons_of(self, outcome: str) -> str:
    return ', '.join(f'{reason}: {n}' for (o, reason), n in sorted(self.reasons.items())
                     if o == outcome)

  def table(self) -> str:
    """One line per outcome that occurred (all of them in order, zeros left out)."""
    lines = []
    for outcome in OUTCOMES:
      n = self.outcomes[outcome]
      if n:
        why = '' if outcome in ACCEPTED else self.reasons_of(outcome)
        if why == f'{outcome}: {n}':  # a skipped record's reason is its outcome
          why = ''
        lines.append(f'  {outcome:<20} {n:>8,}' + (f'  ({why})' if why else ''))
    lines.append(f'  {"total":<20} {self.total:>8,}')
    return '\n'.join(lines)


def _write_line(f, row: dict[str, Any]) -> None:
  f.write(json.dumps(row, ensure_ascii=False) + '\n')


def run(records: Sequence[formats.Record], annotate: Callable[[formats.Record], Result], *,
        output: str, rejects: str, metadata: dict[str, Any], concurrency: int = 1,
        progress: bool = True, on_stop: Callable[[], None] | None = None,
        postfix: Callable[[], dict[str, Any]] | None = None) -> Summary:
  """Annotates `records` (`concurrency` at a time) and writes the two files.

  Args:
    records: the input.
    annotate: a record's `Result` (e.g. `annotate_record` with its annotator).
    output, rejects: the files to write (replaced at the end, never appended to).
    metadata: added to each output line's `annotation`.
    concurrency: records annotated at once (threads).
    progress: show a tqdm bar on stderr (only when it is a terminal).
    on_stop: called when a fatal error stops the run, before the threads are joined
      (e.g. `Service.stop`, so that waiting requests give up).
    postfix: extra numbers for the bar (e.g. requests and tokens).

  Raises:
    RequestFailed: a fatal one; nothing is written then.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  summary = Summary()
  for path in (output, rejects):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = {path: f'{path}.tmp' for path in (output, rejects)}
  done = False
  bar = tqdm.tqdm(total=len(records), unit='ex', file=sys.stderr, dynamic_ncols=True,
                  disable=None if progress else True, desc='annotating')
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency)
  try:
    with open(temporary[output], 'w', encoding='utf-8') as out, \
         open(temporary[rejects], 'w', encoding='utf-8') as rej:
      pending: collections.deque = collections.deque()
      window = 4 * concurrency  # results waiting to be written in order, at most

      def write_next() -> None:
        result = pending.popleft().result()
        summary.add(result)
        if result.outcome in ACCEPTED:
          _write_line(out, output_row(result, metadata))
        else:
          _write_line(rej, reject_row(result))
        bar.update(1)
        numbers = {'ok': summary.accepted, 'rejected': summary.outcomes[REJECTED],
                   'failed': summary.outcomes[FAILED]}
        bar.set_postfix({**numbers, **(postfix() if postfix else {})}, refresh=False)

      def annotate_or_stop(record):
        try:
          return annotate(record)
        except service_lib.RequestFailed:
          # Stop at once, in this worker: a record queued behind this one must not
          # send its request before the main thread sees the failure.
          if on_stop is not None:
            on_stop()
          raise

      for record in records:
        pending.append(pool.submit(annotate_or_stop, record))
        while len(pending) >= window or (pending and pending[0].done()):
          write_next()
      while pending:
        write_next()
    for path, tmp in temporary.items():
      os.replace(tmp, path)
    done = True
  except BaseException:
    if on_stop is not None:
      on_stop()
    raise
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    if not done:
      for tmp in temporary.values():
        if os.path.exists(tmp):
          os.remove(tmp)
  return summary
