"""Validation: the normalisation, laying an annotation on the response's own
characters, the reasons an annotation is refused, promised lengths."""

from hypothesis import assume, given
from hypothesis import strategies as st
import pytest

from pasta_jax import lang
from pasta_jax.annotation import validation
from tests import fixtures
from tests import strategies


def test_normalize_removes_only_outer_and_line_end_whitespace():
  assert validation.normalize('\n  a  \r\n\tb\t\n\n  c\n\n ') == 'a\n\tb\n\n  c'
  assert validation.normalize('a\rb') == 'a\rb'  # a lone \r is a character like any other
  assert validation.normalize(' \n\t') == ''


def test_reply_with_other_line_endings_is_laid_on_the_response():
  response = 'Intro:  \r\n- one\r\n- two  \r\nEnd.\r\n'
  reply = ('Intro:\n<promise topic="one" tokens="7"/><async>- one\n</async>'
           '<promise topic="two" tokens="10"/><async>- two\n</async><sync/>End.')
  doc = validation.check(reply, response)
  assert lang.strip(doc) == response
  assert doc.nodes == (lang.Text('Intro:  \r\n'), lang.Promise('one', 7, '- one\r\n'),
                       lang.Promise('two', 10, '- two  \r\n'), lang.Sync(),
                       lang.Text('End.\r\n'))


def test_reply_that_adds_whitespace_is_laid_on_the_response():
  response = 'a\n- x\n- y'
  reply = '\n\na  \n<promise topic="x" tokens="10"/><async>- x \n</async>' \
          '<promise topic="y" tokens="10"/><async>- y\n\n</async>\n'
  doc = validation.check(reply, response)
  assert doc.nodes == (lang.Text('a\n'), lang.Promise('x', 10, '- x\n'),
                       lang.Promise('y', 10, '- y'))


def test_text_changed_names_the_place_in_the_response():
  response = 'line one\nline two is here\n'
  with pytest.raises(validation.Invalid) as info:
    validation.check('line one\nline 2 is here', response)
  assert info.value.reason == validation.TEXT_CHANGED
  assert info.value.detail == (
      "the text without its tags differs from the response at line 2:6: the response has "
      "'two is here', it has '2 is here'")
  with pytest.raises(validation.Invalid, match=r"line 2:9: the response has ' is here', it "
                     'ends there'):
    validation.check('line one\nline two', response)
  with pytest.raises(validation.Invalid, match=r"the response has the end of the response, "
                     r"it goes on with ' and more'"):
    validation.check('line one\nline two is here and more', response)


@pytest.mark.parametrize('reply,reason,detail', [
    (None, validation.EMPTY_REPLY, 'the reply is empty'),
    ('  \n', validation.EMPTY_REPLY, 'the reply is empty'),
    ('a<promise topic="x" tokens="10"/>b', validation.PARSE_ERROR,
     "line 1:2 (offset 1): promise 'x' has no body"),
    ('a<sync>b', validation.PARSE_ERROR, 'malformed <sync>'),
    ('a<promise topic="x" tokens="ten"/><async>b</async>', validation.PARSE_ERROR,
     "tokens must be a non-negative integer, got 'ten'"),
    ('a<promise topic="x" tokens="10"/><async> \n</async>b', validation.EMPTY_BODY,
     "promise 'x' has an empty <async> body"),
])
def test_invalid_replies(reply, reason, detail):
  with pytest.raises(validation.Invalid) as info:
    validation.check(reply, 'a \nb')
  assert info.value.reason == reason and detail in info.value.detail


def test_syncs_that_wait_for_nothing_are_dropped():
  doc = validation.check('<sync/>a<promise topic="x" tokens="10"/><async>b</async>'
                         '<sync/><sync/>c<sync/>', 'abc')
  assert doc.nodes == (lang.Text('a'), lang.Promise('x', 10, 'b'), lang.Sync(), lang.Text('c'))
  assert validation.check('a<sync/>b', 'ab') == lang.Document.of('ab')


def test_truncated_reply_is_invalid_even_when_it_parses():
  with pytest.raises(validation.Invalid) as info:
    validation.check('ab', 'ab', finish_reason='length')
  assert info.value.reason == validation.TRUNCATED


def test_contains_tags():
  assert validation.contains_tags('x <p> a<b <promises>') is None
  assert validation.contains_tags('a\nb <sync/>') == (
      "text contains a PASTA-LANG element '<sync' at line 2:3")


def _perturbed(text: str, choices: list[int]) -> str:
  """`text` with whitespace that `normalize` removes added before some newlines and
  around it (each newline takes the next choice: 0 none, 1 a space, 2 a \\r, 3 a tab)."""
  out, k = [], 0
  for char in text:
    if char == '\n':
      out.append(['', ' ', '\r', '\t '][choices[k % len(choices)]])
      k += 1
    out.append(char)
  return ' \n' * choices[0] + ''.join(out) + '\n' * choices[-1]


@given(strategies.documents(), st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_align_gives_back_the_response_exactly(doc, choices):
  stripped = lang.strip(doc)
  for response in (_perturbed(stripped, choices), validation.normalize(stripped)):
    assume(validation.contains_tags(response) is None)
    aligned = validation.align(doc, response)
    assert lang.strip(aligned) == response
    assert [(p.topic, p.tokens) for p in aligned.promises] == [
        (p.topic, p.tokens) for p in doc.promises]
    assert sum(isinstance(n, lang.Sync) for n in aligned.nodes) == sum(
        isinstance(n, lang.Sync) for n in doc.nodes)
    # What the normalisation keeps stays on the same side of every tag.
    for old, new in zip(doc.promises, aligned.promises):
      assert validation.normalize(new.body) == validation.normalize(old.body) or (
          not old.body.strip())


def test_lengths_predicted_are_rounded_up_and_capped():
  doc = lang.Document.of('a', lang.Promise('x', 7, 'b'), lang.Promise('y', 250, 'c'))
  lengths = validation.Lengths(None, 10, 100, keep_predicted=True)
  assert [p.tokens for p in lengths.apply(doc).promises] == [10, 100]
  assert not lengths.measured


def test_lengths_measured_by_the_tokenizer():
  tok = fixtures.synthetic_tokenizer(50)
  body = 'a) owl spelled: o-w-l; reversed: l-w-o.\n'
  doc = lang.Document.of('x', lang.Promise('a', 1000, body))
  count = len(tok.encode_text(body))
  measured = validation.Lengths(tok).apply(doc)
  assert measured.promises[0].tokens == -(-count // 10) * 10 > 0
  kept = validation.Lengths(tok, keep_predicted=True).apply(doc)
  assert kept.promises[0].tokens == 100  # the prediction, capped at the tokenizer's maximum
