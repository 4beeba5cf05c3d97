"""PASTA-LANG text form: round trips, stripping and one test per error path."""

import pytest
from hypothesis import given, strategies as st

from pasta_jax import lang
from tests import strategies

P = lang.Promise


@given(strategies.documents())
def test_serialize_parse_round_trip(doc):
  assert lang.parse(lang.serialize(doc)) == doc


@given(strategies.documents(annotated=False))
def test_round_trip_without_bodies(doc):
  assert lang.parse(lang.serialize(doc), annotated=False) == doc


@given(strategies.documents())
def test_canonical_text_round_trip(doc):
  text = lang.serialize(doc)
  assert lang.serialize(lang.parse(text)) == text


@given(st.lists(st.one_of(strategies.plain_text, st.just(None)), max_size=6))
def test_strip_gives_back_the_text(pieces):
  """Annotating a text (any split into main text and bodies) and stripping it is lossless."""
  nodes, expected = [], ''
  for i, piece in enumerate(pieces):
    if piece is None:
      nodes.append(lang.Sync())
    elif i % 2:
      nodes.append(P(f'part {i}', 10 * i, piece))
      expected += piece
    else:
      nodes.append(lang.Text(piece))
      expected += piece
  doc = lang.Document(tuple(nodes))
  assert lang.strip(doc) == expected
  assert lang.strip(lang.serialize(doc)) == expected


def test_parse_example():
  text = ('Plan:\n<promise topic="a &quot;b&quot; &amp; c" tokens="20"/><async>first</async>'
          ' and <promise topic="two" tokens="0"/><async topic="two">2nd</async><sync/>'
          'Done: <b>html</b> if a<b: x</async_not> <sync')
  doc = lang.parse(text)
  assert doc.nodes == (
      lang.Text('Plan:\n'), P('a "b" & c', 20, 'first'), lang.Text(' and '),
      P('two', 0, '2nd'), lang.Sync(),
      lang.Text('Done: <b>html</b> if a<b: x</async_not> <sync'))
  assert lang.strip(doc) == 'Plan:\nfirst and 2ndDone: <b>html</b> if a<b: x</async_not> <sync'
  # <async topic=..> is accepted on input; the canonical form drops it.
  assert lang.serialize(doc) == text.replace('<async topic="two">', '<async>')


def test_lenient_attribute_syntax():
  doc = lang.parse("<promise  tokens='30'\n topic='x'  /><async>b</async><sync />")
  assert doc == lang.Document.of(P('x', 30, 'b'), lang.Sync())


def test_document_normalizes_and_rejects_tags_in_text():
  assert lang.Document.of('a', '', 'b', lang.Sync(), 'c') == lang.Document.of(
      'ab', lang.Sync(), 'c')
  with pytest.raises(lang.PastaLangError, match='contains a PASTA-LANG element'):
    lang.Text('x <sync/>')
  with pytest.raises(lang.PastaLangError, match='async body contains'):
    P('t', 10, 'a</async>b')
  with pytest.raises(ValueError, match='>= 0'):
    P('t', -10, 'b')


def test_quantized():
  doc = lang.Document.of(P('a', 7, 'x'), P('b', 20, 'y'), P('c', 999, 'z'))
  assert [p.tokens for p in doc.quantized(10, max_tokens=500).promises] == [10, 20, 500]


def test_quantum_parameter():
  text = '<promise topic="a" tokens="15"/><async>x</async>'
  assert lang.parse(text, quantum=5).promises[0].tokens == 15
  with pytest.raises(lang.PastaLangError, match='not a multiple of the length quantum 10'):
    lang.parse(text)


def test_validate_document_and_text():
  doc = lang.Document.of('a', P('t', 30, 'b'))
  assert lang.validate(doc) == doc
  with pytest.raises(lang.PromisedLengthError, match=r'line 1:2 \(offset 1\).*exceeds'):
    lang.validate(doc, max_tokens=20)
  with pytest.raises(lang.PastaLangError, match='has no body'):
    lang.validate(lang.Document.of(P('t', 30)))
  assert lang.validate(lang.Document.of(P('t', 30)), annotated=False).promises[0].body is None


@pytest.mark.parametrize('raw,shown', [
    ('99999999999999999999999990', r'999999999999\.\.\. \(26 digits\)'),
    ('1000010', '1000010'),
    ('9' * 5000, r'999999999999\.\.\. \(5000 digits\)'),
])
def test_absurd_promised_lengths_are_parse_errors(raw, shown):
  # Even with quantum 1 and no max_tokens; 5000 digits would also break int().
  text = f'ok\n<promise topic="t" tokens="{raw}"/><async>x</async>'
  with pytest.raises(lang.PromisedLengthError,
                     match=rf'line 2:1 \(offset 3\): <promise> tokens={shown} is absurdly '
                     rf'large: no promised length exceeds {lang.LIMIT_TOKENS} tokens'):
    lang.parse(text, quantum=1)
  assert lang.parse(f'<promise topic="t" tokens="{lang.LIMIT_TOKENS}"/><async>x</async>',
                    quantum=1).promises[0].tokens == lang.LIMIT_TOKENS
  assert lang.parse('<promise topic="t" tokens="0000000000000020"/><async>x</async>'
                    ).promises[0].tokens == 20


# One test per error path: (input, problem regex, offset, line, column).
ERRORS = [
    ('ab\n<sync>', r'malformed <sync>', 3, 2, 1),
    ('</sync>', r'malformed <sync>', 0, 1, 1),
    ('<sync foo="1"/>', r'malformed <sync>', 0, 1, 1),
    ('x <promise topic="a" tokens="10">', r'must be self-closed', 2, 1, 3),
    ('</promise>', r'</promise> does not exist', 0, 1, 1),
    ('<promise tokens="10"/><async>b</async>', r'missing its topic', 0, 1, 1),
    ('<promise topic="a"/><async>b</async>', r'missing its tokens', 0, 1, 1),
    ('<promise topic="a" tokens="ten"/>', r"tokens must be a non-negative integer, got 'ten'",
     0, 1, 1),
    ('<promise topic="a" tokens="-10"/>', r'non-negative integer', 0, 1, 1),
    ('<promise topic="a" tokens="1.5"/>', r'non-negative integer', 0, 1, 1),
    ('<promise topic="a" tokens="10" x="1"/>', r"unknown attribute\(s\) \['x'\]", 0, 1, 1),
    ('<promise topic="a" topic="b" tokens="10"/>', r"duplicate attribute 'topic'", 19, 1, 20),
    ('<promise topic=a tokens="10"/>', r'malformed attributes', 8, 1, 9),
    ('<promise topic="a"tokens="10"/>', r'malformed attributes', 18, 1, 19),
    ('<promise topic="a&b" tokens="10"/>', r'bare "&"', 0, 1, 1),
    ('hi <promise topic="a" tokens="10"', r'unterminated <promise>', 3, 1, 4),
    ('<promise topic="a" tokens="10"/>\n<async>b</async>', r"promise 'a' has no body", 0, 1, 1),
    ('<promise topic="a" tokens="10"/>', r"promise 'a' has no body", 0, 1, 1),
    ('<promise topic="a" tokens="10"/><sync/>', r"promise 'a' has no body", 0, 1, 1),
    ('x\n\n  <async>b</async>', r'body with no promise', 5, 3, 3),
    ('<promise topic="a" tokens="10"/><async>b', r'unclosed <async>', 32, 1, 33),
    ('done </async>', r'stray </async>', 5, 1, 6),
    ('<promise topic="a" tokens="10"/><async/>', r'malformed <async/>', 32, 1, 33),
    ('<promise topic="a" tokens="10"/><async>a <sync/> b</async>',
     r'PASTA tag <sync...> inside an <async> body', 41, 1, 42),
    ('<promise topic="a" tokens="10"/><async>a <promise topic="b" tokens="0"/></async>',
     r'inside an <async> body', 41, 1, 42),
    ('<promise topic="a" tokens="10"/><async>a <async>b</async>',
     r'inside an <async> body', 41, 1, 42),
    ('<promise topic="a" tokens="10"/><async topic="b">x</async>',
     r"does not match its promise topic 'a'", 32, 1, 33),
    ('<promise topic="a" tokens="10"/><async lang="x">x</async>', r'unknown attribute', 32, 1, 33),
    ('<promise topic="a" tokens="10"/><async>x</async topic="a">', r'malformed </async>', 40, 1, 41),
    ('<promise topic="a" tokens="10"/><async>x</async>', r'not a multiple', None, None, None),
]


@pytest.mark.parametrize('text,problem,offset,line,column', ERRORS)
def test_error_names_problem_and_location(text, problem, offset, line, column):
  quantum = 20 if problem == 'not a multiple' else 10
  with pytest.raises(lang.PastaLangError, match=problem) as info:
    lang.parse(text, quantum=quantum)
  err = info.value
  if offset is not None:
    assert (err.offset, err.line, err.column) == (offset, line, column)
    assert str(err).startswith(f'line {line}:{column} (offset {offset}): ')
  assert isinstance(err, ValueError)


def test_tags_are_case_sensitive_and_need_a_delimiter():
  for text in ['<Sync/>', '<PROMISE topic="a" tokens="10"/>', '<syncx/>', '<asyncio>',
               'end <sync', '<sync']:
    assert lang.parse(text) == lang.Document.of(text)
