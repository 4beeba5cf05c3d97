"""The synthetic benchmark generator and its checkers."""

import json
import random

import pytest

from pasta_jax import lang
from pasta_jax.data import synthetic


def test_deterministic():
  a = list(synthetic.generate('train', 40, seed=3))
  b = list(synthetic.generate('train', 40, seed=3))
  c = list(synthetic.generate('train', 40, seed=4))
  assert a == b and a != c


def test_splits_are_disjoint_and_each_prompt_has_one_split():
  prompts = {s: {e.prompt for e in synthetic.generate(s, 300)} for s in synthetic.SPLITS}
  assert all(len(p) == 300 for p in prompts.values())  # distinct within a split
  assert not prompts['train'] & prompts['test']
  assert not prompts['train'] & prompts['validation']
  assert not prompts['validation'] & prompts['test']
  for split, ps in prompts.items():
    assert all(synthetic.split_of(p) == split for p in ps)


def test_families_cycle_and_filter():
  examples = list(synthetic.generate('validation', 8, families=['list_ops', 'sequential']))
  assert [e.family for e in examples] == ['list_ops', 'sequential'] * 4
  with pytest.raises(ValueError, match='unknown families'):
    list(synthetic.generate('train', 1, families=['poetry']))
  with pytest.raises(ValueError, match='unknown split'):
    list(synthetic.generate('dev', 1))


@pytest.mark.parametrize('family', list(synthetic.FAMILIES))
def test_examples_validate_strip_and_score_one(family):
  for example in synthetic.generate('train', 60, families=[family]):
    doc = lang.validate(example.annotated)
    assert lang.strip(doc) == example.plain
    assert synthetic.check(family, example.facts, example.plain) == 1.0
    # Whitespace does not matter to the checker.
    spaced = example.plain.replace(' ', '  ').replace('\n', ' \n ')
    assert synthetic.check(family, example.facts, spaced) == 1.0
    if family == 'sequential':
      assert not doc.promises
    else:
      assert 1 <= len(doc.promises) <= 8
      assert all(len(p.topic) == 1 for p in doc.promises)
      assert all(p.tokens % 10 == 0 and p.tokens >= len(p.body) for p in doc.promises)
    if family in ('reverse_join', 'mixed'):
      assert any(isinstance(n, lang.Sync) for n in doc.nodes)


def _corruptions(text: str, rng: random.Random):
  """Answers that are wrong in one place: a changed digit/letter, a dropped line."""
  lines = text.split('\n')
  if len(lines) > 1:
    yield '\n'.join(lines[:-1])
    i = rng.randrange(len(lines))
    yield '\n'.join(lines[:i] + lines[i + 1:])
  chars = [i for i, c in enumerate(text) if c.isalnum() and text[:i].count(':') >= 1]
  for i in rng.sample(chars, min(3, len(chars))):
    swap = '7' if text[i] != '7' and text[i].isdigit() else ('q' if text[i] != 'q' else 'z')
    yield text[:i] + swap + text[i + 1:]
  yield ''


@pytest.mark.parametrize('family', list(synthetic.FAMILIES))
def test_corrupted_answers_score_lower(family):
  rng = random.Random(0)
  for example in synthetic.generate('test', 30, families=[family]):
    for bad in _corruptions(example.plain, rng):
      if bad == example.plain:
        continue
      score = synthetic.check(family, example.facts, bad)
      assert 0.0 <= score < 1.0, (example.plain, bad)


def test_checker_partial_credit():
  facts = {'words': ['cat', 'dog'], 'reversed': ['tac', 'god'], 'joined': 't-g'}
  good = ('a) cat spelled: c-a-t; reversed: t-a-c.\n'
          'b) dog spelled: d-o-g; reversed: g-o-d.\njoined: t-g.')
  assert synthetic.check('reverse_join', facts, '2 words.\n' + good) == 1.0
  assert synthetic.check('reverse_join', facts, good) == pytest.approx(3 / 4)
  # Fields: the count (missing), two items (one right), the join (wrong).
  half = good.replace('g-o-d', 'd-o-g').replace('t-g.', 't-d.')
  assert synthetic.check('reverse_join', json.dumps(facts), half) == pytest.approx(1 / 4)
  with pytest.raises(ValueError, match='unknown family'):
    synthetic.check('poetry', facts, good)


def test_list_ops_checker_reads_every_op():
  facts = {'tasks': ['count 3 from 8', 'spell owl', 'repeat cat 2', 'double 21'],
           'results': ['9 10 11', 'o-w-l', 'cat cat', '42']}
  answer = ('results:\na) count 3 from 8: 9 10 11\nb) spell owl: o-w-l\n'
            'c) repeat cat 2: cat cat\nd) double 21: 42\n4 done.')
  assert synthetic.check('list_ops', facts, answer) == 1.0
  assert synthetic.check('list_ops', facts, answer.replace('9 10 11', '9 10 12')) == (
      pytest.approx(5 / 6))
  swapped = answer.replace('b) spell', 'x) spell')
  assert synthetic.check('list_ops', facts, swapped) == pytest.approx(5 / 6)


def test_mixed_checker():
  facts = {'numbers': [10, 3], 'steps': 3, 'last': 6}
  answer = '2 numbers, 3 steps each.\na) from 10: 11 12 13\nb) from 3: 4 5 6\nlast: 6.'
  assert synthetic.check('mixed', facts, answer) == 1.0
  assert synthetic.check('mixed', facts, answer.replace('last: 6.', 'last: 13.')) == 0.75
