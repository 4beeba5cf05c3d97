"""Input readers: the common instruction formats as (prompt, response) records.

One JSON object per line, in one of (docs/annotation.md, "Input formats"):

  prompt_response  {"prompt": P, "response": R}
  alpaca           {"instruction": I, "input": X, "output": R}   (input optional)
  sharegpt         {"conversations": [{"from": "human", "value": ..}, {"from": "gpt", ..}]}
  messages         {"messages": [{"role": "user", "content": ..}, {"role": "assistant", ..}]}

The format is detected from a file's first record (`detect`) and every line of the
file is then read as that format; `--prompt_field`/`--response_field` name other
fields (`fields`). In a conversation the last turn is the response and must be the
assistant's; the turns before it are the prompt (`context_prompt`). The fields a
reader did not use are kept in `Record.rest`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Mapping

from pasta_jax.data import tfds_builders

FORMATS = ('prompt_response', 'alpaca', 'sharegpt', 'messages', 'fields')
# Outcomes of records that are read but hold nothing to annotate, or cannot be read.
SKIPPED_BAD_RECORD = 'skipped-bad-record'
SKIPPED_NO_RESPONSE = 'skipped-no-response'

# ShareGPT's `from` values, mapped to chat roles; others are kept as they are.
_SHAREGPT_ROLES = {'human': 'user', 'user': 'user', 'gpt': 'assistant', 'assistant': 'assistant',
                   'chatgpt': 'assistant', 'bard': 'assistant', 'bing': 'assistant',
                   'model': 'assistant', 'system': 'system'}
_ROLE_LABELS = {'system': 'System', 'developer': 'System', 'user': 'User',
                'assistant': 'Assistant'}


@dataclasses.dataclass(frozen=True)
class Record:
  """One line of an input file.

  Attributes:
    where: `path:line`, as errors and the output name it.
    prompt, response: the texts to annotate (None when `problem` is set).
    rest: the record's fields that the reader did not use.
    problem: (outcome, reason) when the record is skipped: `SKIPPED_BAD_RECORD`
      (it does not fit the file's format; only under on_error='skip') or
      `SKIPPED_NO_RESPONSE` (a conversation that does not end with an answer).
  """

  where: str
  prompt: str | None
  response: str | None
  rest: Mapping[str, Any]
  problem: tuple[str, str] | None = None


class _BadRecord(Exception):
  """A record that does not fit its format (a `JsonlError` or a skipped record)."""


class _NoResponse(Exception):
  """A conversation with no final assistant turn."""


def detect(row: Mapping[str, Any]) -> str | None:
  """The format of a record (a JSON object), or None when none fits."""
  if isinstance(row.get('messages'), list):
    return 'messages'
  if isinstance(row.get('conversations'), list):
    return 'sharegpt'
  if 'instruction' in row and 'output' in row:
    return 'alpaca'
  if 'prompt' in row and 'response' in row:
    return 'prompt_response'
  return None


def _text(row: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
  if key not in row:
    if optional:
      return ''
    raise _BadRecord(f'missing field {key!r}')
  value = row[key]
  if value is None and optional:
    return ''
  if not isinstance(value, str):
    raise _BadRecord(f'field {key!r} must be a string, got {type(value).__name__}')
  return value


def _content(message: Mapping[str, Any], index: int) -> str:
  """An OpenAI message's text: a string, or the text parts of a list joined by newlines."""
  content = message.get('content')
  if content is None:
    return ''
  if isinstance(content, str):
    return content
  if not isinstance(content, list):
    raise _BadRecord(f'messages[{index}].content must be a string or a list of parts, got '
                     f'{type(content).__name__}')
  texts = []
  for part in content:
    if not isinstance(part, dict) or part.get('type') != 'text' or not isinstance(
        part.get('text'), str):
      kind = part.get('type') if isinstance(part, dict) else type(part).__name__
      raise _BadRecord(f'messages[{index}].content has a part that is not text ({kind!r})')
    texts.append(part['text'])
  return '\n'.join(texts)


def _turns(row: Mapping[str, Any], fmt: str) -> list[tuple[str, str]]:
  """(role, text) of each turn of a ShareGPT or messages record."""
  key, role_key, text_key = (('conversations', 'from', 'value') if fmt == 'sharegpt'
                             else ('messages', 'role', 'content'))
  turns = []
  for i, turn in enumerate(row[key]):
    if not isinstance(turn, dict) or not isinstance(turn.get(role_key), str):
      raise _BadRecord(f'{key}[{i}] must be an object with a string {role_key!r}')
    if fmt == 'sharegpt':
      role = _SHAREGPT_ROLES.get(turn[role_key].lower(), turn[role_key])
      text = turn.get(text_key)
      if not isinstance(text, str):
        raise _BadRecord(f'{key}[{i}].{text_key} must be a string')
    else:
      role, text = turn[role_key], _content(turn, i)
    turns.append((role, text))
  return turns


def context_prompt(turns: list[tuple[str, str]]) -> str:
  """The prompt that the turns before the answer make.

  A single exchange (system turns, then one user turn) is the texts joined by a blank
  line, system first; a longer context is a transcript, each turn `Role: text`,
  turns separated by blank lines.
  """
  roles = [role for role, _ in turns]
  single = roles.count('user') == 1 and roles[-1:] == ['user'] and all(
      role in ('system', 'developer', 'user') for role in roles)
  if single:
    return '\n\n'.join(text for _, text in turns)
  return '\n\n'.join(f'{_ROLE_LABELS.get(role, role.capitalize())}: {text}'
                     for role, text in turns)


def _read(row: Mapping[str, Any], fmt: str, fields: tuple[str, str]
          ) -> tuple[str, str, dict[str, Any]]:
  """(prompt, response, unused fields) of a record read as `fmt`."""
  if fmt in ('prompt_response', 'fields'):
    prompt_key, response_key = fields if fmt == 'fields' else ('prompt', 'response')
    used = {prompt_key, response_key}
    prompt, response = _text(row, prompt_key), _text(row, response_key)
  elif fmt == 'alpaca':
    used = {'instruction', 'input', 'output'}
    instruction, extra = _text(row, 'instruction'), _text(row, 'input', optional=True)
    prompt = f'{instruction}\n\n{extra}' if extra else instruction
    response = _text(row, 'output')
  else:
    key = 'conversations' if fmt == 'sharegpt' else 'messages'
    if not isinstance(row.get(key), list):
      raise _BadRecord(f'missing list field {key!r}')
    used = {key}
    turns = _turns(row, fmt)
    if not turns or turns[-1][0] != 'assistant':
      last = f'its last turn is from {turns[-1][0]!r}' if turns else 'it has no turns'
      raise _NoResponse(f'the conversation does not end with an assistant turn ({last})')
    if not any(role == 'user' for role, _ in turns[:-1]):
      raise _NoResponse('the conversation has no user turn before its answer')
    prompt, response = context_prompt(turns[:-1]), turns[-1][1]
  return prompt, response, {k: v for k, v in row.items() if k not in used}


def read(path: str, fmt: str = 'auto', *, fields: tuple[str, str] = ('prompt', 'response'),
         on_error: str = 'fail') -> Iterator[Record]:
  """The records of a JSONL file, blank lines left out.

  Args:
    path: the file.
    fmt: one of `FORMATS`, or 'auto' to detect it from the first record.
    fields: the (prompt, response) field names of the 'fields' format.
    on_error: 'fail' raises a `DataError` (`path:line: problem`) for a line that is
      not UTF-8, not a JSON object or does not fit the format; 'skip' yields it as a
      record with problem `SKIPPED_BAD_RECORD` (bytes and JSON errors still fail:
      a damaged file is not an input to annotate).
  """
  tfds_builders.check_file(path, 'input')
  with open(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      where = f'{path}:{number}'
      line = tfds_builders.decode_line(raw, path, number)
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise tfds_builders.JsonlError(path, number, f'invalid JSON: {e}') from None
      if not isinstance(row, dict):
        raise tfds_builders.JsonlError(
            path, number, f'expected a JSON object, got {type(row).__name__}')
      if fmt == 'auto':
        fmt = detect(row)
        if fmt is None:
          raise tfds_builders.JsonlError(
              path, number, f'cannot tell the format of this record (fields: '
              f'{", ".join(sorted(row)) or "none"}): expected prompt/response, Alpaca '
              '(instruction, input, output), ShareGPT (conversations) or OpenAI messages; '
              'name the fields with --prompt_field and --response_field')
      try:
        prompt, response, rest = _read(row, fmt, fields)
      except _NoResponse as e:
        yield Record(where, None, None, row, (SKIPPED_NO_RESPONSE, str(e)))
        continue
      except _BadRecord as e:
        problem = f'does not fit the {fmt} format of this file: {e}'
        if on_error == 'fail':
          raise tfds_builders.JsonlError(path, number, problem) from None
        yield Record(where, None, None, row, (SKIPPED_BAD_RECORD, problem))
        continue
      yield Record(where, prompt, response, rest)

