"""Views of a PASTA answer by thread: which thread wrote which part, and when.

The decode CLI prints them in a terminal (`pasta_jax.decode`); notebooks show them
as HTML (`result_html`, also `interpreter.Result._repr_html_`). Both take their
colours from `thread_colors`, one per thread.

* `segments(document)`: the final answer as (thread, text) pieces in reading order:
  text outside promises is the main thread's (0), the body of the k-th promise is
  thread k's (the k-th promise forks thread k, docs/design.md section 6).
* `timeline_runs(timeline)`: each thread's tokens grouped into runs of consecutive
  rounds, the bars of the timeline.
* `result_html(result, tokenizer=None)`: the prompt, the answer with its threads
  coloured, a legend with each thread's topic, the timeline (one row per thread, one
  column per decode round; with a tokenizer each bar's tooltip holds its text) and
  the counts. `document_html(document)` colours an annotated document alone (e.g. a
  training example). All text is HTML-escaped.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any, Sequence

from pasta_jax import lang
from pasta_jax import thread_colors

# The timeline's geometry (pixels).
_LABEL_WIDTH = 64
_ROW_HEIGHT = 18
_BAR_HEIGHT = 12
_MAX_WIDTH = 640  # of the rounds' area
_MAX_CELL = 12


def segments(document: lang.Document) -> list[tuple[int, str]]:
  """The final answer of `document` as (thread, text) pieces, in reading order
  (empty texts left out)."""
  out, thread = [], 0
  for node in document.nodes:
    if isinstance(node, lang.Text):
      out.append((0, node.text))
    elif isinstance(node, lang.Promise):
      thread += 1
      out.append((thread, node.body or ''))
  return [(k, text) for k, text in out if text]


def answer_segments(result: Any) -> list[tuple[int, str]]:
  """`segments` of a result's document; its whole text as the main thread's when it
  has none (a stop cut an element: `Result.document` is None)."""
  if result.document is None:
    return [(0, result.text)] if result.text else []
  return segments(result.document)


def thread_name(thread: int) -> str:
  return 'main' if thread == 0 else f'thread {thread}'


def thread_text(tokens: Sequence[int], tokenizer: Any) -> str:
  """The text of a thread's tokens, without PASTA tags and EOS."""
  skip = set(tokenizer.control.tag_ids) | {tokenizer.eos_id}
  return tokenizer.decode_text([t for t in tokens if t not in skip])


def summary_line(result: Any) -> str:
  """'status done: 40 rounds, 95 tokens, parallelism 2.38'."""
  return (f'status {result.status}: {result.steps} rounds, {result.total_tokens} tokens, '
          f'parallelism {result.parallelism:.2f}')


@dataclasses.dataclass(frozen=True)
class Run:
  """Tokens a thread sampled in consecutive rounds: one bar of the timeline."""

  thread: int
  first_round: int
  last_round: int
  tokens: tuple[int, ...]


def timeline_runs(timeline: Sequence[Sequence[int]]) -> list[Run]:
  """(round, thread, token) triples grouped per thread into runs of consecutive
  rounds; ordered by thread, then round."""
  per_thread: dict[int, list[tuple[int, int]]] = {}
  for r, t, token in timeline:
    per_thread.setdefault(int(t), []).append((int(r), int(token)))
  runs = []
  for thread in sorted(per_thread):
    entries = sorted(per_thread[thread])
    start = 0
    for i in range(1, len(entries) + 1):
      if i == len(entries) or entries[i][0] != entries[i - 1][0] + 1:
        runs.append(Run(thread, entries[start][0], entries[i - 1][0],
                        tuple(token for _, token in entries[start:i])))
        start = i
  return runs


def _span(thread: int, text: str) -> str:
  weight = 'font-weight:600;' if thread == 0 else ''
  return (f'<span class="pasta-thread-{thread}" data-thread="{thread}" '
          f'style="color:{thread_colors.html_color(thread)};{weight}">'
          f'{html.escape(text)}</span>')


def _answer(pieces: Sequence[tuple[int, str]]) -> str:
  body = ''.join(_span(k, text) for k, text in pieces)
  return ('<div class="pasta-answer" style="white-space:pre-wrap;font-family:monospace;'
          f'line-height:1.4;margin:4px 0">{body}</div>')


def _topics(document: lang.Document | None) -> dict[int, str]:
  if document is None:
    return {}
  promises = [n for n in document.nodes if isinstance(n, lang.Promise)]
  return {k: p.topic for k, p in enumerate(promises, 1)}


def _legend(threads: Sequence[int], topics: dict[int, str]) -> str:
  items = []
  for k in threads:
    label = thread_name(k) + (f': {topics[k]}' if k in topics else '')
    items.append(f'<span style="margin-right:12px;white-space:nowrap">'
                 f'<span style="display:inline-block;width:10px;height:10px;'
                 f'background:{thread_colors.html_color(k)};margin-right:4px"></span>'
                 f'{html.escape(label)}</span>')
  return f'<div class="pasta-legend" style="font-size:85%;margin:4px 0">{"".join(items)}</div>'


def document_html(document: lang.Document) -> str:
  """An annotated document's final answer with one colour per thread, and a legend
  naming each thread's topic."""
  pieces = segments(document)
  threads = sorted({0} | {k for k, _ in pieces})
  return (f'<div class="pasta-document">{_answer(pieces)}'
          f'{_legend(threads, _topics(document))}</div>')


def timeline_html(timeline: Sequence[Sequence[int]], tokenizer: Any = None) -> str:
  """An SVG of which thread sampled a token in which decode round: a row per thread,
  a bar per run of consecutive rounds; each bar's tooltip gives its rounds, its
  token count and (with a tokenizer) its text. '' for an empty timeline."""
  runs = timeline_runs(timeline)
  if not runs:
    return ''
  first = min(run.first_round for run in runs)
  last = max(run.last_round for run in runs)
  cell = max(1.0, min(float(_MAX_CELL), _MAX_WIDTH / (last - first + 1)))
  threads = sorted({run.thread for run in runs})
  row = {thread: i for i, thread in enumerate(threads)}
  width = _LABEL_WIDTH + cell * (last - first + 1) + 4
  height = _ROW_HEIGHT * len(threads) + 16
  parts = [f'<svg class="pasta-timeline" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width:.0f}" height="{height}" style="font-family:sans-serif;'
           f'font-size:11px">']
  for thread in threads:
    y = row[thread] * _ROW_HEIGHT
    parts.append(f'<text x="0" y="{y + _BAR_HEIGHT - 1}" '
                 f'fill="{thread_colors.html_color(thread)}">{thread_name(thread)}</text>')
  for run in runs:
    x = _LABEL_WIDTH + cell * (run.first_round - first)
    y = row[run.thread] * _ROW_HEIGHT
    rounds = (f'round {run.first_round}' if run.first_round == run.last_round else
              f'rounds {run.first_round}-{run.last_round}')
    tip = f'{thread_name(run.thread)}, {rounds}: {len(run.tokens)} tokens'
    if tokenizer is not None:
      tip += f' {thread_text(run.tokens, tokenizer)!r}'
    parts.append(f'<rect x="{x:.1f}" y="{y}" width="{cell * len(run.tokens):.1f}" '
                 f'height="{_BAR_HEIGHT}" fill="{thread_colors.html_color(run.thread)}">'
                 f'<title>{html.escape(tip)}</title></rect>')
  axis_y = _ROW_HEIGHT * len(threads) + 11
  parts.append(f'<text x="{_LABEL_WIDTH}" y="{axis_y}" fill="#5f6368">round {first}</text>')
  parts.append(f'<text x="{width - 4:.0f}" y="{axis_y}" fill="#5f6368" '
               f'text-anchor="end">round {last}</text>')
  parts.append('</svg>')
  return ''.join(parts)


def result_html(result: Any, tokenizer: Any = None) -> str:
  """One `interpreter.Result` as HTML: the prompt, the answer with its threads
  coloured, a legend, the thread timeline and the counts (see the module
  docstring). A request that was not decoded shows its status and why."""
  parts = ['<div class="pasta-result" style="margin:8px 0">']
  if result.prompt is not None:
    parts.append(f'<div class="pasta-prompt"><b>prompt</b> '
                 f'<code>{html.escape(result.prompt)}</code></div>')
  if result.detail:
    parts.append(f'<div class="pasta-status">status {html.escape(result.status)}: '
                 f'{html.escape(result.detail)}</div></div>')
    return ''.join(parts)
  threads = [span.thread for span in result.threads] or [0]
  parts.append(_answer(answer_segments(result)))
  parts.append(_legend(threads, _topics(result.document)))
  parts.append(timeline_html(result.timeline, tokenizer))
  parts.append(f'<div class="pasta-status" style="font-size:85%;color:#5f6368">'
               f'{html.escape(summary_line(result))}</div></div>')
  return ''.join(parts)
