"""The rule-based annotator (APAR-style, no service; docs/design.md section 8).

Items of numbered or bulleted lists become promises, each with its item as the
async body, and a `<sync/>` follows the list when anything follows it; everything
else stays in the main text (docs/annotation.md, "The rules annotator"):

* A list item is a line `[indent]MARKER TEXT` with MARKER one of `-`, `*`, `+`,
  `•`, a number with `.` or `)` (`1.`, `12)`), or a letter with `)` (`a)`). A list
  is a run of items with the same indentation and the same kind of marker (the same
  bullet, numbers or letters with the same delimiter); blank lines may separate
  them. A list needs 2 items or more.
* An item runs from its marker line to its last line indented deeper than its
  marker (nested lists, paragraphs and code of the item), blank lines between them
  included; any other line ends the list.
* Lines inside fenced code blocks (``` or ~~~) outside a list are never items.
* Each item's topic is its first words (at most `TOPIC_WORDS`, Markdown emphasis
  removed); its promised length is `validation.estimate_tokens` of its body.
* The end of the response is an implicit sync, so a list that ends it has none.

The result always strips back to the response: only tags are added.
"""

from __future__ import annotations

import dataclasses
import re

from pasta_jax import lang
from pasta_jax.annotation import validation

TOPIC_WORDS = 4
_ITEM = re.compile(r'(?P<indent>[ \t]*)(?P<marker>[-*+\u2022]|\d{1,3}[.)]|[A-Za-z]\))'
                   r'[ \t]+(?P<text>\S.*)')
_THEMATIC_BREAK = re.compile(r'[ \t]*([-*_])([ \t]*\1){2,}[ \t]*')
_FENCE = re.compile(r'[ \t]*(`{3,}|~{3,})')
_EMPHASIS = re.compile(r'[*_`#>\[\]]')


@dataclasses.dataclass(frozen=True)
class _Item:
  start: int  # line index of the marker line
  end: int    # line index just past its last non-blank line
  topic: str


def _lines(text: str) -> list[str]:
  """The lines of `text`, each with its `\\n` (the last one may have none)."""
  return re.findall(r'[^\n]*\n|[^\n]+\Z', text)


def _content(line: str) -> str:
  return line.rstrip('\r\n')


def _item(line: str) -> re.Match | None:
  content = _content(line)
  if _THEMATIC_BREAK.fullmatch(content):
    return None
  return _ITEM.fullmatch(content)


def _kind(marker: str) -> str:
  """Markers of one list share their kind: the bullet itself, or digits/letters
  with their delimiter."""
  if marker[0].isdigit():
    return 'number' + marker[-1]
  if marker[0].isalpha():
    return 'letter' + marker[-1]
  return marker


def _indent(line: str) -> int:
  content = _content(line)
  return len(content) - len(content.lstrip(' \t'))


def topic(item_text: str, number: int) -> str:
  """The first words of an item (Markdown emphasis and links' brackets removed)."""
  words = _EMPHASIS.sub('', item_text).split()[:TOPIC_WORDS]
  text = ' '.join(words).rstrip(':;,.!?-\u2013\u2014 ')
  return text or f'item {number}'


def _fence_end(lines: list[str], start: int) -> int:
  """The index just past the fenced block opened at `start` (or the end)."""
  fence = _FENCE.match(lines[start]).group(1)
  for i in range(start + 1, len(lines)):
    match = _FENCE.match(lines[i])
    if (match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)
        and not _content(lines[i])[match.end():].strip()):
      return i + 1
  return len(lines)


def _item_end(lines: list[str], start: int, indent: int) -> int:
  """The index just past the last non-blank line of the item at `start`."""
  end, i = start + 1, start + 1
  while i < len(lines):
    if not lines[i].strip():
      i += 1
      continue
    if _indent(lines[i]) <= indent:
      break
    i = _fence_end(lines, i) if _FENCE.match(lines[i]) else i + 1
    end = i
  return end


def _list(lines: list[str], start: int) -> tuple[list[_Item], int]:
  """The items of the list whose first item is at `start`, and the index past it."""
  first = _item(lines[start])
  indent, kind = len(first.group('indent')), _kind(first.group('marker'))
  items, i = [], start
  while True:
    match = _item(lines[i])
    end = _item_end(lines, i, indent)
    items.append(_Item(i, end, topic(match.group('text'), len(items) + 1)))
    j = end
    while j < len(lines) and not lines[j].strip():
      j += 1
    following = _item(lines[j]) if j < len(lines) else None
    if (following is None or _kind(following.group('marker')) != kind
        or len(following.group('indent')) != indent):
      return items, end
    i = j


def annotate(response: str) -> lang.Document:
  """The response with its lists' items as promises (see the module docstring).

  Raises:
    PastaLangError: the response itself holds a PASTA-LANG element.
  """
  lines = _lines(response)
  nodes: list[lang.Node] = []
  text: list[str] = []
  i = 0
  while i < len(lines):
    if _FENCE.match(lines[i]):
      end = _fence_end(lines, i)
      text += lines[i:end]
      i = end
      continue
    if _item(lines[i]) is None:
      text.append(lines[i])
      i += 1
      continue
    items, end = _list(lines, i)
    if len(items) < 2:
      text += lines[i:end]
      i = end
      continue
    previous = i
    for item in items:
      text += lines[previous:item.start]  # blank lines between items
      nodes.append(lang.Text(''.join(text)))
      text = []
      body = ''.join(lines[item.start:item.end])
      nodes.append(lang.Promise(item.topic, validation.estimate_tokens(body), body))
      previous = item.end
    if ''.join(lines[end:]).strip():
      nodes.append(lang.Sync())
    i = end
  nodes.append(lang.Text(''.join(text)))
  return lang.Document(tuple(nodes))
