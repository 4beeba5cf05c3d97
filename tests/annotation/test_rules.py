"""The rules annotator: which lines become promises, and a property: it only adds tags."""

from hypothesis import assume, given
from hypothesis import strategies as st
import pytest

from pasta_jax import lang
from pasta_jax.annotation import rules
from pasta_jax.annotation import validation
from pasta_jax.data import synthetic
from tests import strategies


def shape(text: str) -> list:
  """The nodes of `rules.annotate(text)`: text, (topic, body) or 'SYNC'."""
  doc = rules.annotate(text)
  assert lang.strip(doc) == text
  return [n.text if isinstance(n, lang.Text) else 'SYNC' if isinstance(n, lang.Sync)
          else (n.topic, n.body) for n in doc.nodes]


def test_bullets_then_text_get_a_sync():
  assert shape('Tips:\n- **Sleep** well.\n- Eat: greens\n\nThat is all.') == [
      'Tips:\n', ('Sleep well', '- **Sleep** well.\n'), ('Eat: greens', '- Eat: greens\n'), 'SYNC',
      '\nThat is all.']


def test_list_at_the_end_has_no_sync_and_loose_items_keep_blank_lines_in_the_main_text():
  assert shape('1. one two three four five\n\n2. x\n\n') == [
      ('one two three four', '1. one two three four five\n'), '\n', ('x', '2. x\n'), '\n']
  # 3) has another delimiter: a list of its own, of one item, after a sync.
  assert shape('1. a\n2. b\n3) c') == [('a', '1. a\n'), ('b', '2. b\n'), 'SYNC', '3) c']


def test_nested_items_code_and_paragraphs_stay_in_their_item():
  text = ('- first\n  - nested a\n  - nested b\n\n  more about first\n'
          '- second\n  ```\n- not an item\n  ```\n'
          'after\n')
  assert shape(text) == [
      ('first', '- first\n  - nested a\n  - nested b\n\n  more about first\n'),
      ('second', '- second\n  ```\n- not an item\n  ```\n'), 'SYNC', 'after\n']


def test_letters_numbers_and_single_items():
  assert shape('a) spell owl: o-w-l\nb) double 3: 6\n') == [
      ('spell owl: o-w-l', 'a) spell owl: o-w-l\n'), ('double 3: 6', 'b) double 3: 6\n')]
  assert shape('- only one item\n\ntext') == ['- only one item\n\ntext']
  assert shape('- a\n* b\n') == ['- a\n* b\n']  # two one-item lists


def test_not_items_fences_breaks_and_emphasis():
  text = '```\n- a\n- b\n```\n* * *\n**bold**\n-no space\n1.5 is a number\n'
  assert shape(text) == [text]


def test_crlf_and_tabs():
  assert shape('x\r\n-\ta\r\n-\tb\r\ny') == [
      'x\r\n', ('a', '-\ta\r\n'), ('b', '-\tb\r\n'), 'SYNC', 'y']


def test_two_lists_and_empty_topic():
  assert shape('- a\n- **`.`**\nmid\n+ c\n+ d') == [
      ('a', '- a\n'), ('item 2', '- **`.`**\n'), 'SYNC', 'mid\n', ('c', '+ c\n'), ('d', '+ d')]


def test_response_with_a_tag_is_refused():
  with pytest.raises(lang.PastaLangError):
    rules.annotate('- a\n- b <sync/>\n')


_LINES = st.sampled_from([
    '- item', '* star item', '+ plus', '1. one', '2) two', '10. ten', 'a) letter',
    '  - nested', '    indented code', '```', '~~~', '```python', '', ' ', 'text line',
    '* * *', '---', '**bold**', '| a | b |', '- ', '-', '1.', 'x) <b>html</b> a < b',
    '- "quoted" & more', '\t- tab', '• bullet'])


@given(st.lists(st.one_of(_LINES, strategies.plain_text), max_size=14),
       st.sampled_from(['\n', '\r\n']), st.booleans())
def test_rules_only_add_tags(lines, newline, final_newline):
  text = newline.join(lines) + (newline if final_newline else '')
  assume(text.strip() and validation.contains_tags(text) is None)
  doc = rules.annotate(text)
  serialized = lang.serialize(doc)
  reparsed = lang.parse(serialized, quantum=1)
  assert reparsed == doc and lang.strip(reparsed) == text
  assert validation.check(serialized, text) == doc
  for i, node in enumerate(doc.nodes):
    if isinstance(node, lang.Promise):
      assert rules._item(node.body.split('\n', 1)[0])  # pylint: disable=protected-access
      assert node.tokens == validation.estimate_tokens(node.body)
    if isinstance(node, lang.Sync):
      assert isinstance(doc.nodes[i - 1], lang.Promise) and lang.strip(
          lang.Document(doc.nodes[i + 1:])).strip()


def test_synthetic_answers():
  for example in synthetic.generate('train', 40):
    doc = rules.annotate(example.plain)
    assert lang.strip(doc) == example.plain
    reference = example.document()
    if example.family != 'sequential':  # labelled items, one per line
      assert [p.body for p in doc.promises] == [p.body for p in reference.promises]
      # A sync after the list (list_ops: before "N done.", where the reference has none).
      assert [type(n) for n in doc.nodes[-2:]] == [lang.Sync, lang.Text]
    else:
      assert not doc.promises
