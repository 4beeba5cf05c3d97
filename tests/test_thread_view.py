"""The thread views: segments, timeline runs, and the HTML of a result (structure,
escaping, one colour per thread, the timeline), read back with an HTML parser."""

import dataclasses
import html.parser

import pytest

from pasta_jax import decode
from pasta_jax import lang
from pasta_jax import thread_colors
from pasta_jax import thread_view
from pasta_jax.interpreter import results
from tests import fixtures

# Text the view must escape: markup lookalikes, an entity, quotes.
MAIN = 'Compare a < b & "c" <b>bold</b>:\n'
DOC = lang.parse(f'{MAIN}<promise topic="x &amp; y" tokens="10"/><async>first <i> body</async>'
                 '<promise topic="z" tokens="10"/><async>second</async>'
                 '<sync/>Done &amp; dusted.')


class _Parsed(html.parser.HTMLParser):
  """Spans with data-thread (their colour and text), rects (fill, tooltip), texts."""

  def __init__(self, markup):
    super().__init__()
    self.spans, self.rects, self.classes, self.tags = [], [], [], []
    self._open = []
    self.feed(markup)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags.append(tag)
    if 'class' in attrs:
      self.classes.append(attrs['class'])
    if tag == 'span' and 'data-thread' in attrs:
      self.spans.append([int(attrs['data-thread']), attrs['style'], ''])
      self._open.append(self.spans[-1])
    elif tag == 'rect':
      self.rects.append([attrs['fill'], ''])
      self._open.append(self.rects[-1])
    else:
      self._open.append(None)

  def handle_endtag(self, tag):
    self._open.pop()

  def handle_data(self, data):
    for item in reversed(self._open):
      if item is not None:
        item[-1] += data
        break


@pytest.fixture(scope='module')
def tok():
  return fixtures.synthetic_tokenizer(40)


def _result(tok, doc=DOC, **kw):
  """A result whose threads wrote `doc`: main in rounds 0.., each body from the round
  after its promise, one token a round."""
  main = list(tok.encode(lang.Document(tuple(
      dataclasses.replace(n, body=None) if isinstance(n, lang.Promise) else n
      for n in doc.nodes)), annotated=False))
  bodies = [tok.encode_text(p.body) for p in doc.nodes if isinstance(p, lang.Promise)]
  timeline = [(r, 0, t) for r, t in enumerate(main)]
  spans = [results.ThreadSpan(0, tuple(main), 0, len(main) - 1)]
  for k, body in enumerate(bodies, 1):
    start = k + 2
    timeline += [(start + i, k, t) for i, t in enumerate(body)]
    spans.append(results.ThreadSpan(k, tuple(body), start, start + len(body) - 1))
  fields = dict(prompt='say <it> & "more"', status='done', ids=(), document=doc,
                text=lang.strip(doc), threads=tuple(spans),
                steps=max(r for r, _, _ in timeline) + 1, total_tokens=len(timeline),
                timeline=tuple(sorted(timeline)))
  return results.Result(**{**fields, **kw})


def test_segments_are_the_stripped_answer_by_thread():
  pieces = thread_view.segments(DOC)
  assert [k for k, _ in pieces] == [0, 1, 2, 0]
  assert ''.join(text for _, text in pieces) == lang.strip(DOC)
  assert pieces[1] == (1, 'first <i> body')


def test_timeline_runs_split_at_gaps():
  timeline = [(0, 0, 5), (1, 0, 6), (2, 1, 7), (2, 0, 8), (3, 1, 9), (5, 1, 10), (4, 0, 11)]
  runs = thread_view.timeline_runs(timeline)
  assert runs == [thread_view.Run(0, 0, 2, (5, 6, 8)), thread_view.Run(0, 4, 4, (11,)),
                  thread_view.Run(1, 2, 3, (7, 9)), thread_view.Run(1, 5, 5, (10,))]
  assert thread_view.timeline_runs([]) == []


def test_result_html(tok):
  result = _result(tok)
  markup = thread_view.result_html(result, tok)
  page = _Parsed(markup)
  for name in ('pasta-result', 'pasta-prompt', 'pasta-answer', 'pasta-legend',
               'pasta-timeline', 'pasta-status'):
    assert name in page.classes
  # The answer: every piece in its thread's colour, the text exactly the answer's.
  assert ''.join(text for _, _, text in page.spans) == lang.strip(DOC)
  colours = {}
  for thread, style, _ in page.spans:
    colours.setdefault(thread, set()).add(style.split('color:')[1].split(';')[0])
  assert colours == {k: {thread_colors.html_color(k)} for k in (0, 1, 2)}
  assert len({c for (c,) in colours.values()}) == 3
  # Escaped: no markup of the answer or the prompt reaches the page as tags.
  assert set(page.tags) <= {'div', 'span', 'b', 'code', 'svg', 'text', 'rect', 'title'}
  assert '&lt;b&gt;bold&lt;/b&gt;' in markup and '&amp;' in markup
  assert 'say &lt;it&gt; &amp; &quot;more&quot;' in markup
  # The legend names the topics; the timeline has one bar per thread (no gaps here),
  # in its colour, whose tooltip gives the rounds, the count and the text.
  assert 'thread 1: x &amp; y' in markup and 'thread 2: z' in markup
  assert [fill for fill, _ in page.rects] == [thread_colors.html_color(k) for k in (0, 1, 2)]
  first = result.threads[1]
  assert page.rects[1][1] == (f'thread 1, rounds {first.first_round}-{first.last_round}: '
                              f"{len(first.tokens)} tokens 'first <i> body'")
  assert thread_view.summary_line(result) in markup
  assert result._repr_html_() == thread_view.result_html(result)
  assert "'first" not in result._repr_html_()  # no tokenizer: no token text


def test_cut_and_undecoded_results(tok):
  cut = _result(tok, document=None, text='partial <answer>', status='budget')
  page = _Parsed(thread_view.result_html(cut))
  assert page.spans == [[0, page.spans[0][1], 'partial <answer>']]
  assert len(page.rects) == 3  # the timeline still shows every thread
  skipped = results.prompt_too_long(900, 'the prompt has 900 tokens > 256')
  markup = thread_view.result_html(skipped)
  assert 'status prompt_too_long: the prompt has 900 tokens &gt; 256' in markup
  assert 'svg' not in markup and 'pasta-answer' not in markup


def test_document_html():
  page = _Parsed(thread_view.document_html(DOC))
  assert [k for k, _, _ in page.spans] == [0, 1, 2, 0]
  assert ''.join(text for _, _, text in page.spans) == lang.strip(DOC)


def test_terminal_view_shares_the_segments(tok):
  result = _result(tok)
  assert decode.coloured_answer(result, color=False) == lang.strip(DOC)
  painted = decode.coloured_answer(result, color=True)
  for k, text in thread_view.segments(DOC):
    assert thread_colors.paint(text, k) in painted
  report = decode.report(result, tok, color=False)
  assert "thread 1 rounds   3-" in report and "'first <i> body'" in report
  assert report.endswith(thread_view.summary_line(result))
