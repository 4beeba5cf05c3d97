"""Validating an annotation against its response, and setting its promised lengths.

An annotation is valid when it parses (`lang.parse`, every promise with its body)
and stripping it gives back the response, compared after `normalize` (docs/design.md
section 8; docs/annotation.md, "Validation"). The accepted document is then rebuilt on
the response's own characters (`align`), so that it strips to exactly the response:
the normalisation decides what counts as the same text, never what is written.
"""

from __future__ import annotations

import dataclasses
import math
import re

from pasta_jax import lang
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding

# What `normalize` deletes: whitespace at the start and at the end of the text, and
# at the end of each line (which takes the `\r` of a `\r\n` with it).
_REMOVABLE = re.compile(r'\A\s+|[^\S\n]+(?=\n)|\s+\Z')

# Reasons an annotation is invalid (`Invalid.reason`), as the run counts them.
EMPTY_REPLY = 'empty-reply'
TRUNCATED = 'truncated'
PARSE_ERROR = 'parse-error'
TEXT_CHANGED = 'text-changed'
EMPTY_BODY = 'empty-body'
REASONS = (EMPTY_REPLY, TRUNCATED, PARSE_ERROR, TEXT_CHANGED, EMPTY_BODY)


class Invalid(ValueError):
  """An annotation that is not accepted: `reason` (one of `REASONS`) and `detail`."""

  def __init__(self, reason: str, detail: str):
    self.reason, self.detail = reason, detail
    super().__init__(f'{reason}: {detail}')


def _kept(text: str) -> list[int]:
  """The offsets of the characters of `text` that `normalize` keeps, in order."""
  removed = bytearray(len(text))
  for match in _REMOVABLE.finditer(text):
    removed[match.start():match.end()] = b'\x01' * (match.end() - match.start())
  return [i for i, gone in enumerate(removed) if not gone]


def normalize(text: str) -> str:
  """The text with whitespace removed at its start, its end and the end of each line.

  This is the whole normalisation under which an annotation's stripped text may
  differ from its response: line endings `\\r\\n` become `\\n`, and trailing spaces,
  tabs and blank lines at the very start or end do not count. Nothing else does
  (inner blank lines, indentation, any other character).
  """
  return _REMOVABLE.sub('', text)


def contains_tags(text: str) -> str | None:
  """The first PASTA-LANG element in a plain text ('<sync/>', ...), or None."""
  try:
    lang.Text(text)
  except lang.PastaLangError as e:
    return f'{e.problem.split(";")[0]} at line {e.line}:{e.column}'
  return None


def _difference(stripped: str, response: str) -> str:
  """Where and how `normalize(stripped)` first differs from `normalize(response)`."""
  a, b = normalize(response), normalize(stripped)
  at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
  kept = _kept(response)
  offset = kept[at] if at < len(kept) else len(response)
  line = response.count('\n', 0, offset) + 1
  column = offset - (response.rfind('\n', 0, offset) + 1) + 1
  if at == len(b):
    got = 'it ends there'
  elif at == len(a):
    got = f'it goes on with {b[at:at + 40]!r}'
  else:
    got = f'it has {b[at:at + 40]!r}'
  want = f'{a[at:at + 40]!r}' if at < len(a) else 'the end of the response'
  return (f'the text without its tags differs from the response at line {line}:{column}: '
          f'the response has {want}, {got}')


def align(doc: lang.Document, response: str) -> lang.Document:
  """The document laid on `response`'s characters: it strips to exactly `response`.

  `doc` must strip to `response` up to `normalize`. Each tag keeps its place among the
  characters that `normalize` keeps; a run of removed whitespace goes with the text
  before the tag.

  Raises:
    Invalid: TEXT_CHANGED when the texts differ after normalisation.
  """
  stripped = lang.strip(doc)
  if stripped == response:
    return doc
  if normalize(stripped) != normalize(response):
    raise Invalid(TEXT_CHANGED, _difference(stripped, response))
  kept_stripped, kept_response = _kept(stripped), _kept(response)
  # kept_before[i]: characters kept among stripped[:i].
  kept_before = [0] * (len(stripped) + 1)
  for i in kept_stripped:
    kept_before[i + 1] = 1
  for i in range(len(stripped)):
    kept_before[i + 1] += kept_before[i]

  def where(offset: int) -> int:  # a boundary in `stripped` -> one in `response`
    k = kept_before[offset]
    return kept_response[k] if k < len(kept_response) else len(response)

  nodes: list[lang.Node] = []
  offset = 0  # in stripped
  start = 0   # in response
  for index, node in enumerate(doc.nodes):
    if isinstance(node, lang.Sync):
      nodes.append(node)
      continue
    length = len(node.text) if isinstance(node, lang.Text) else len(node.body or '')
    offset += length
    last = all(isinstance(n, lang.Sync) for n in doc.nodes[index + 1:])
    end = len(response) if last else max(start, where(offset))
    if isinstance(node, lang.Text):
      nodes.append(lang.Text(response[start:end]))
    else:
      nodes.append(dataclasses.replace(node, body=response[start:end]))
    start = end
  if start < len(response):  # the document ended in tags: the rest is text
    nodes.append(lang.Text(response[start:]))
  result = lang.Document(tuple(nodes))
  assert lang.strip(result) == response, 'align lost characters'
  return result


def drop_idle_syncs(doc: lang.Document) -> lang.Document:
  """The document without the syncs that wait for nothing (no promise since the
  start or the previous sync): they change nothing but cost a decoding step."""
  nodes, outstanding = [], False
  for node in doc.nodes:
    if isinstance(node, lang.Sync):
      if not outstanding:
        continue
      outstanding = False
    elif isinstance(node, lang.Promise):
      outstanding = True
    nodes.append(node)
  return lang.Document(tuple(nodes))


def check(reply: str | None, response: str, *, finish_reason: str | None = None
          ) -> lang.Document:
  """The annotated document of a reply, laid on `response` (`align`), without
  idle syncs (`drop_idle_syncs`).

  Args:
    reply: the annotator's text (None or empty: nothing came back).
    response: the response it annotates.
    finish_reason: the service's; 'length' means the reply was cut off.

  Raises:
    Invalid: naming the reason and what is wrong, for the annotator to fix it.
  """
  if finish_reason == 'length':
    raise Invalid(TRUNCATED, 'the reply was cut off (finish_reason "length"): it hit the '
                  "service's output token limit")
  if not reply or not reply.strip():
    raise Invalid(EMPTY_REPLY, 'the reply is empty')
  try:
    doc = lang.parse(reply, annotated=True, quantum=1)
  except lang.PastaLangError as e:
    raise Invalid(PARSE_ERROR, f'PASTA-LANG error at {e}') from None
  doc = drop_idle_syncs(align(doc, response))
  for promise in doc.promises:
    if not promise.body.strip():
      raise Invalid(EMPTY_BODY, f'promise {promise.topic!r} has an empty <async> body; '
                    'a promise stands for a non-empty part of the response')
  return doc


def estimate_tokens(text: str) -> int:
  """A tokenizer-free guess of a text's length in tokens: one per 4 characters."""
  return math.ceil(len(text) / 4)


@dataclasses.dataclass(frozen=True)
class Lengths:
  """How promised lengths are set (docs/annotation.md, "Promised lengths").

  With a tokenizer (and not `keep_predicted`), each promise gets its body's token
  count (`encoding.measure_promises`: rounded up to the tokenizer's quantum, capped
  at its largest length token). Otherwise the annotator's predictions are kept,
  rounded up to `quantum` and capped at `max_tokens`.
  """

  tokenizer: tokenizer_lib.Tokenizer | None = None
  quantum: int = lang.DEFAULT_QUANTUM
  max_tokens: int = 100
  keep_predicted: bool = False

  @property
  def measured(self) -> bool:
    return self.tokenizer is not None and not self.keep_predicted

  def apply(self, doc: lang.Document) -> lang.Document:
    if self.measured:
      return encoding.measure_promises(doc, self.tokenizer)
    return doc.quantized(self.quantum, self.max_tokens)
