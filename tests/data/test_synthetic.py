"""The synthetic benchmark generator and its checkers."""

import hashlib
import json
import random

import pytest

from pasta_jax import lang
from pasta_jax.data import records
from pasta_jax.data import synthetic
from pasta_jax.data import tfds_builders


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


# ----------------------------------------------------------------------------
# The preference split (builder 1.2.0) and the splits 1.1.0 already had.


def test_preference_prompts_are_disjoint_from_every_other_split():
  preference = list(synthetic.generate_preference(200, num_train=400, seed=0))
  prompts = [e.prompt for e in preference]
  assert len(set(prompts)) == 200
  assert [e.family for e in preference[:4]] == list(synthetic.FAMILIES)
  train = {e.prompt for e in synthetic.generate('train', 400, seed=0)}
  assert not set(prompts) & train
  # The train hash bucket: no validation or test prompt of any size can be one.
  assert all(synthetic.split_of(p) == 'train' for p in prompts)
  assert preference == list(synthetic.generate_preference(200, num_train=400, seed=0))
  for example in preference:
    assert lang.strip(lang.validate(example.annotated)) == example.plain
    assert synthetic.check(example.family, example.facts, example.plain) == 1.0


# sha256 of the records of builder version 1.1.0 (before the preference split and
# the noisy configs): the json of the six text fields per record, one line each.
# Generator order (what _generate_examples yields), for both configs:
V110_GENERATED = {
    ('tiny', 'train'): 'fe71e050f822c32cdbdf6b0618ebdc50777346b2fb5ee6abec8e146008d465a1',
    ('tiny', 'validation'): '7759ecfb5cd5e134524988fbe01d04933fc415f9c07bd67c3a1d73d0e516235f',
    ('tiny', 'test'): '382c12247e59156261fb75121fef19ca473af6caae90bd8a5228df93094b4328',
    ('default', 'train'): 'bcf6a25fe5ea4628d35b7bc4065bc1f35fba78ce566560cefacb5c4b046cef03',
    ('default', 'validation'): 'f2f8aa565f768d7e885a8784b355423f5a5430c4705e47f2ad3d27fef3553942',
    ('default', 'test'): 'e66b6f11561dd3ee823b3076c92741dab4fa62984c96cc68682b022cc6717eec',
}
# Stored order (read back from the ArrayRecord files of a tiny build).
V110_STORED_TINY = {
    'train': 'c6fd4ce2285b08cb77a23835c2ea220241c4a91ae252c5910cf373f5c9593ed4',
    'validation': '19002fc8e571d4a5ba513461903c43017af600a82bf94f25d45a79512b51e4d8',
    'test': 'f160c53992e24af7f1420d16b3d9daf06ee17cfdabb6d1bd21e05021d4ad37a1',
}
FIELDS = ('prompt', 'annotated_response', 'plain_response', 'family', 'facts', 'extras')


def records_digest(records) -> tuple[int, str]:
  """(count, sha256) of records: the json of their text fields, one line each."""
  digest, count = hashlib.sha256(), 0
  for record in records:
    fields = [v.decode() if isinstance(v, bytes) else v
              for v in (record[f] for f in FIELDS)]
    digest.update(json.dumps(fields).encode() + b'\n')
    count += 1
  return count, digest.hexdigest()


@pytest.mark.parametrize('name', ['tiny', 'default'])
def test_existing_splits_are_those_of_version_1_1_0(name):
  builder = tfds_builders.PastaSynth(config=name, data_dir='/nonexistent/not_written')
  splits = builder._split_generators(None)  # pylint: disable=protected-access
  assert set(splits) == {'train', 'validation', 'test', 'preference'}
  for split in ('train', 'validation', 'test'):
    count, digest = records_digest(record for _, record in splits[split])
    assert count == getattr(builder.builder_config, f'num_{split}')
    assert digest == V110_GENERATED[name, split], (name, split)


def test_tiny_build_stores_the_1_1_0_records(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds_builders.PastaSynth(config='tiny', data_dir=str(tmp_path),
                                     file_format=tfds_builders.FILE_FORMAT)
  builder.download_and_prepare()
  assert str(builder.info.version) == '1.2.0'
  for split, expected in V110_STORED_TINY.items():
    source = tfds.data_source('pasta_synth/tiny', split=split, data_dir=str(tmp_path))
    assert records_digest(source[i] for i in range(len(source))) == (
        len(source), expected), split
  preference = tfds.data_source('pasta_synth/tiny', split='preference',
                                data_dir=str(tmp_path))
  assert len(preference) == 40
  stored = {records.decode_text(preference[i]['prompt']) for i in range(40)}
  others = set()
  for split in ('train', 'validation', 'test'):
    source = tfds.data_source('pasta_synth/tiny', split=split, data_dir=str(tmp_path))
    others |= {records.decode_text(source[i]['prompt']) for i in range(len(source))}
  assert len(stored) == 40 and not stored & others
