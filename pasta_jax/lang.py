"""PASTA-LANG in text form: parse, serialize, strip, validate (docs/design.md section 1).

    response := (TEXT | promise async? | sync)*
    promise  := <promise topic="TOPIC" tokens="N"/>
    async    := <async>BODY</async>         (also <async topic="TOPIC"> matching its promise)
    sync     := <sync/>

Only elements named `promise`, `async` and `sync` are tags: a `<` followed by one of
those names and then whitespace, `/` or `>`. Everything else (`<p>`, `a < b`,
`<promises>`, code) is ordinary text and is kept character for character.

Every malformed input raises `PastaLangError`, which names the problem and where it
is (0-based offset and 1-based line:column).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Union

DEFAULT_QUANTUM = 10
# No promised length is ever above this, whatever `max_tokens` says: a length
# vocabulary has far fewer tokens (`tokens.ControlTokens.max_promise_tokens`, 100 in
# the training config), and sums of such lengths stay well within int32 positions.
LIMIT_TOKENS = 1_000_000

_TAG_NAMES = ('promise', 'async', 'sync')
# A PASTA element starts with `<` or `</`, one of the three names, then whitespace,
# `/` or `>`. At the very end of the input `<sync` is just text.
_TAG_START = re.compile(r'<(/?)(promise|async|sync)(?=[\s/>])')
# Attributes are separated from the name and from each other by whitespace.
_ATTR = re.compile(r'\s+([A-Za-z_][\w.-]*)\s*=\s*(?:"([^"]*)"|\'([^\']*)\')')
_ENTITY = re.compile(r'&(quot|amp|lt|gt|apos);')
_ENTITIES = {'quot': '"', 'amp': '&', 'lt': '<', 'gt': '>', 'apos': "'"}
_INTEGER = re.compile(r'[0-9]+')


class PastaLangError(ValueError):
  """A malformed PASTA-LANG document (text form or token form).

  Attributes:
    problem: what is wrong, without the location.
    offset: 0-based character offset (text form) or token index (token form).
    line, column: 1-based line and column in the text (None for token form).
  """

  def __init__(self, problem: str, offset: int, line: int | None = None,
               column: int | None = None):
    self.problem = problem
    self.offset = offset
    self.line = line
    self.column = column
    if line is None:
      where = f'token {offset}'
    else:
      where = f'line {line}:{column} (offset {offset})'
    super().__init__(f'{where}: {problem}')

  @classmethod
  def at(cls, text: str, offset: int, problem: str) -> 'PastaLangError':
    line = text.count('\n', 0, offset) + 1
    column = offset - (text.rfind('\n', 0, offset) + 1) + 1
    return cls(problem, offset, line, column)


class PromisedLengthError(PastaLangError):
  """A promised length above `max_tokens` (no length token for it) or `LIMIT_TOKENS`."""


# ----------------------------------------------------------------------------
# Document structure.


@dataclasses.dataclass(frozen=True)
class Text:
  """Ordinary text. It may hold any characters except a PASTA-LANG element."""

  text: str

  def __post_init__(self):
    _check_plain(self.text, 'text')


@dataclasses.dataclass(frozen=True)
class Promise:
  """`<promise topic=.. tokens=../>` with its async body (None when not annotated)."""

  topic: str
  tokens: int
  body: str | None = None

  def __post_init__(self):
    if not isinstance(self.tokens, int) or isinstance(self.tokens, bool):
      raise TypeError(f'Promise.tokens must be an int, got {self.tokens!r}')
    if self.tokens < 0:
      raise ValueError(f'Promise.tokens must be >= 0, got {self.tokens}')
    if not isinstance(self.topic, str):
      raise TypeError(f'Promise.topic must be a str, got {self.topic!r}')
    if self.body is not None:
      _check_plain(self.body, 'async body')


@dataclasses.dataclass(frozen=True)
class Sync:
  """`<sync/>`: the main thread waits for every outstanding async thread."""


Node = Union[Text, Promise, Sync]


@dataclasses.dataclass(frozen=True)
class Document:
  """A PASTA-LANG response: a normalized sequence of nodes.

  Normalized: no empty Text, no two adjacent Text nodes (they are merged), so that
  equal documents compare equal and `parse(serialize(doc)) == doc`.
  """

  nodes: tuple[Node, ...] = ()

  def __post_init__(self):
    merged: list[Node] = []
    for node in self.nodes:
      if isinstance(node, str):
        node = Text(node)
      if not isinstance(node, (Text, Promise, Sync)):
        raise TypeError(f'Document nodes must be Text, Promise or Sync, got {node!r}')
      if isinstance(node, Text):
        if not node.text:
          continue
        if merged and isinstance(merged[-1], Text):
          node = Text(merged.pop().text + node.text)
      merged.append(node)
    object.__setattr__(self, 'nodes', tuple(merged))

  @classmethod
  def of(cls, *nodes: Node | str) -> 'Document':
    return cls(tuple(nodes))

  @property
  def promises(self) -> tuple[Promise, ...]:
    return tuple(n for n in self.nodes if isinstance(n, Promise))

  @property
  def annotated(self) -> bool:
    """True when every promise carries its body."""
    return all(p.body is not None for p in self.promises)

  def serialize(self) -> str:
    return serialize(self)

  def strip(self) -> str:
    return strip(self)

  def quantized(self, quantum: int = DEFAULT_QUANTUM,
                max_tokens: int | None = None) -> 'Document':
    """Rounds every promised length up to a multiple of `quantum`, capped at max_tokens."""
    nodes = []
    for node in self.nodes:
      if isinstance(node, Promise):
        tokens = -(-node.tokens // quantum) * quantum
        if max_tokens is not None:
          tokens = min(tokens, max_tokens // quantum * quantum)
        node = dataclasses.replace(node, tokens=tokens)
      nodes.append(node)
    return Document(tuple(nodes))


def _check_plain(text: str, what: str) -> None:
  if not isinstance(text, str):
    raise TypeError(f'{what} must be a str, got {text!r}')
  match = _TAG_START.search(text)
  if match:
    raise PastaLangError.at(
        text, match.start(),
        f'{what} contains a PASTA-LANG element {match.group(0)!r}; '
        'only the document structure may hold tags')


# ----------------------------------------------------------------------------
# Serialize and strip.


def escape_topic(topic: str) -> str:
  return topic.replace('&', '&amp;').replace('"', '&quot;')


def unescape_topic(value: str) -> str:
  return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], value)


def promise_tag(topic: str, tokens: int) -> str:
  return f'<promise topic="{escape_topic(topic)}" tokens="{tokens}"/>'


def serialize(doc: Document) -> str:
  """The canonical text form; `serialize(parse(s)) == s` for canonical `s`."""
  out = []
  for node in doc.nodes:
    if isinstance(node, Text):
      out.append(node.text)
    elif isinstance(node, Promise):
      out.append(promise_tag(node.topic, node.tokens))
      if node.body is not None:
        out.append(f'<async>{node.body}</async>')
    else:
      out.append('<sync/>')
  return ''.join(out)


def strip(doc: Document | str) -> str:
  """The final answer: each promise replaced by its body, every tag removed."""
  if isinstance(doc, str):
    doc = parse(doc, annotated=False, quantum=1)
  out = []
  for node in doc.nodes:
    if isinstance(node, Text):
      out.append(node.text)
    elif isinstance(node, Promise):
      out.append(node.body or '')
  return ''.join(out)


# ----------------------------------------------------------------------------
# Parse.


@dataclasses.dataclass
class _Tag:
  closing: bool          # </name ...>
  name: str
  attrs: dict[str, str]  # raw (escaped) attribute values
  self_closing: bool     # .../>
  start: int
  end: int               # offset just past '>'


def _scan_tag(text: str, match: re.Match) -> _Tag:
  """Reads one PASTA element starting at `match` (a `_TAG_START` match)."""
  start = match.start()
  closing, name = match.group(1) == '/', match.group(2)
  pos = match.end()
  attrs: dict[str, str] = {}
  while True:
    attr = _ATTR.match(text, pos)
    if not attr:
      break
    key = attr.group(1)
    if key in attrs:
      raise PastaLangError.at(text, attr.start(1),
                              f'duplicate attribute {key!r} in <{name}>')
    attrs[key] = attr.group(2) if attr.group(2) is not None else attr.group(3)
    pos = attr.end()
  rest = re.compile(r'\s*(/?)>').match(text, pos)
  if not rest:
    close = text.find('>', pos)
    if close < 0:
      raise PastaLangError.at(text, start, f'unterminated <{name}> element (no closing ">")')
    raise PastaLangError.at(
        text, pos, f'malformed attributes in <{"/" if closing else ""}{name}> element: '
        f'{text[pos:close].strip()!r} (expected name="value" pairs)')
  return _Tag(closing, name, attrs, rest.group(1) == '/', start, rest.end())


def _promise_from_tag(text: str, tag: _Tag, quantum: int,
                      max_tokens: int | None) -> tuple[str, int]:
  if tag.closing:
    raise PastaLangError.at(text, tag.start,
                            'malformed <promise>: </promise> does not exist; '
                            'a promise is self-closed: <promise topic=".." tokens=".."/>')
  if not tag.self_closing:
    raise PastaLangError.at(text, tag.start,
                            'malformed <promise>: a promise must be self-closed '
                            '(<promise topic=".." tokens=".."/>)')
  unknown = sorted(set(tag.attrs) - {'topic', 'tokens'})
  if unknown:
    raise PastaLangError.at(text, tag.start,
                            f'unknown attribute(s) {unknown} in <promise> '
                            '(allowed: topic, tokens)')
  if 'topic' not in tag.attrs:
    raise PastaLangError.at(text, tag.start, '<promise> is missing its topic attribute')
  if 'tokens' not in tag.attrs:
    raise PastaLangError.at(text, tag.start, '<promise> is missing its tokens attribute')
  raw = tag.attrs['tokens']
  if not _INTEGER.fullmatch(raw):
    raise PastaLangError.at(text, tag.start,
                            f'<promise> tokens must be a non-negative integer, got {raw!r}')
  digits = raw.lstrip('0') or '0'
  if len(digits) > len(str(LIMIT_TOKENS)) or int(digits) > LIMIT_TOKENS:
    shown = raw if len(raw) <= 20 else f'{raw[:12]}... ({len(raw)} digits)'
    raise PromisedLengthError.at(
        text, tag.start, f'<promise> tokens={shown} is absurdly large: no promised '
        f'length exceeds {LIMIT_TOKENS} tokens')
  tokens = int(digits)
  if tokens % quantum:
    raise PastaLangError.at(text, tag.start,
                            f'<promise> tokens={tokens} is not a multiple of the length '
                            f'quantum {quantum}')
  if max_tokens is not None and tokens > max_tokens:
    raise PromisedLengthError.at(text, tag.start,
                            f'<promise> tokens={tokens} exceeds the maximum promised '
                            f'length {max_tokens}')
  topic_raw = tag.attrs['topic']
  bad_amp = re.search(r'&(?!(?:quot|amp|lt|gt|apos);)', topic_raw)
  if bad_amp:
    raise PastaLangError.at(text, tag.start,
                            f'<promise> topic has a bare "&" at topic offset '
                            f'{bad_amp.start()}; write &amp;')
  return unescape_topic(topic_raw), tokens


def parse(text: str, *, annotated: bool = True, quantum: int = DEFAULT_QUANTUM,
          max_tokens: int | None = None) -> Document:
  """Parses a PASTA-LANG response.

  Args:
    text: the response.
    annotated: when True (training data, the interpreter's annotated output) every
      promise must be followed immediately by its `<async>` body. When False
      (what a main thread writes at inference) bodies are optional.
    quantum: promised lengths must be multiples of it (1 accepts any integer).
    max_tokens: when given, the largest promised length accepted (`LIMIT_TOKENS`
      bounds every length in any case).

  Raises:
    PastaLangError: naming the problem and its location.
  """
  if not isinstance(text, str):
    raise TypeError(f'parse expects a str, got {type(text).__name__}')
  if quantum < 1:
    raise ValueError(f'quantum must be >= 1, got {quantum}')
  nodes: list[Node] = []
  pos = 0
  pending: tuple[str, int, int] | None = None  # promise waiting for its body
  while True:
    match = _TAG_START.search(text, pos)
    if match is None:
      break
    if match.start() > pos:
      if pending is not None:
        _missing_body(text, pending, annotated, nodes)
        pending = None
      nodes.append(Text(text[pos:match.start()]))
    tag = _scan_tag(text, match)
    if tag.name == 'promise':
      if pending is not None:
        _missing_body(text, pending, annotated, nodes)
      topic, tokens = _promise_from_tag(text, tag, quantum, max_tokens)
      pending = (topic, tokens, tag.start)
      pos = tag.end
    elif tag.name == 'sync':
      if tag.closing or not tag.self_closing or tag.attrs:
        raise PastaLangError.at(
            text, tag.start,
            f'malformed <sync>: {text[tag.start:tag.end]!r}; write <sync/> '
            '(self-closed, no attributes)')
      if pending is not None:
        _missing_body(text, pending, annotated, nodes)
        pending = None
      nodes.append(Sync())
      pos = tag.end
    else:  # async
      if tag.closing:
        raise PastaLangError.at(text, tag.start, 'stray </async> with no open <async>')
      if tag.self_closing:
        raise PastaLangError.at(text, tag.start,
                                'malformed <async/>: an async element wraps a body: '
                                '<async>...</async>')
      unknown = sorted(set(tag.attrs) - {'topic'})
      if unknown:
        raise PastaLangError.at(text, tag.start,
                                f'unknown attribute(s) {unknown} in <async> (allowed: topic)')
      if pending is None:
        raise PastaLangError.at(text, tag.start,
                                '<async> body with no promise: a body must follow its '
                                '<promise .../> immediately')
      topic, tokens, _ = pending
      if 'topic' in tag.attrs and unescape_topic(tag.attrs['topic']) != topic:
        raise PastaLangError.at(
            text, tag.start,
            f'<async topic={unescape_topic(tag.attrs["topic"])!r}> does not match its '
            f'promise topic {topic!r}')
      body_start = tag.end
      inner = _TAG_START.search(text, body_start)
      if inner is None:
        raise PastaLangError.at(text, tag.start, 'unclosed <async>: no </async> follows')
      if not (inner.group(1) == '/' and inner.group(2) == 'async'):
        raise PastaLangError.at(
            text, inner.start(),
            f'PASTA tag {inner.group(0)}...> inside an <async> body (opened at '
            f'offset {tag.start}); bodies hold text only')
      close = _scan_tag(text, inner)
      if close.attrs or close.self_closing:
        raise PastaLangError.at(text, close.start,
                                f'malformed </async>: {text[close.start:close.end]!r}')
      nodes.append(Promise(topic, tokens, text[body_start:close.start]))
      pending = None
      pos = close.end
  if pos < len(text):
    if pending is not None:
      _missing_body(text, pending, annotated, nodes)
      pending = None
    nodes.append(Text(text[pos:]))
  if pending is not None:
    _missing_body(text, pending, annotated, nodes)
  return Document(tuple(nodes))


def _missing_body(text: str, pending: tuple[str, int, int], annotated: bool,
                  nodes: list[Node]) -> None:
  topic, tokens, start = pending
  if annotated:
    raise PastaLangError.at(
        text, start,
        f'promise {topic!r} has no body: in an annotated document every '
        '<promise .../> is followed immediately by <async>...</async>')
  nodes.append(Promise(topic, tokens, None))


def validate(doc: Document | str, *, annotated: bool = True,
             quantum: int = DEFAULT_QUANTUM, max_tokens: int | None = None) -> Document:
  """Checks a document (or its text) and returns it parsed; raises PastaLangError.

  A Document is checked through its canonical serialization, so locations refer to
  `serialize(doc)`. Checks: well-formedness, every body present when `annotated`,
  promised lengths multiples of `quantum` and at most `max_tokens` (when given).
  """
  text = doc if isinstance(doc, str) else serialize(doc)
  return parse(text, annotated=annotated, quantum=quantum, max_tokens=max_tokens)
