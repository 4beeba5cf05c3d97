"""The noisy configs of pasta_synth: imperfect annotations of the same answers."""

import collections
import json
import math
import re

import numpy as np
import pytest

from pasta_jax import lang
from pasta_jax import layout
from pasta_jax.data import synthetic
from pasta_jax.data import tfds_builders
from tests import fixtures

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = pytest.mark.slow

SPLITS = ('train', 'validation', 'test', 'preference')
RATES = synthetic.Noise(under=tfds_builders.NOISY['noise_under'],
                        over=tfds_builders.NOISY['noise_over'],
                        tokens=tfds_builders.NOISY['noise_tokens'])


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """{config: {split: [record]}} of tiny and tiny_noisy, built in a tmp data_dir."""
  return fixtures.build_synth(str(tmp_path_factory.mktemp('tfds')), ('tiny', 'tiny_noisy'),
                              SPLITS)


def _noise(record) -> dict:
  return json.loads(record['extras'])['noise']


def _within(count: int, total: int, rate: float) -> bool:
  """`count` of `total` is within 4 standard deviations of a binomial at `rate`."""
  return abs(count - rate * total) <= 4 * math.sqrt(total * rate * (1 - rate)) + 1


def _eligible(records_: list[dict]) -> dict[str, int]:
  counts = collections.Counter()
  for r in records_:
    noise = _noise(r)
    if r['family'] != 'sequential':
      counts['under'] += 1
    if r['family'] in synthetic.SUMMARIES:
      counts['over'] += 1
    if lang.parse(r['annotated_response']).promises:
      counts['tokens'] += 1
    counts.update(k + '_applied' for k in noise)
  return counts


def test_rates_are_met_on_the_tiny_noisy_build(built):
  train = built['tiny_noisy']['train']
  counts = _eligible(train)
  assert counts['under'] == 300 and counts['over'] == 200
  for kind in ('under', 'over', 'tokens'):
    applied = counts[kind + '_applied']
    assert applied > 0
    assert _within(applied, counts[kind], getattr(RATES, kind)), (kind, counts)
  # Sequential answers have nothing to corrupt; over only where a summary exists.
  for r in train:
    if r['family'] == 'sequential':
      assert _noise(r) == {}
    if r['family'] == 'list_ops':
      assert 'over' not in _noise(r)
    assert not {'under', 'over'} <= set(_noise(r))  # exclusive


@pytest.mark.parametrize('rates', [{'under': 0.5, 'over': 0.3, 'tokens': 0.7},
                                   {'under': 0.1, 'over': 0.6, 'tokens': 0.05}])
def test_rates_are_met_by_corrupt(rates):
  noise = synthetic.Noise(**rates)
  examples = list(synthetic.generate('train', 1200, seed=5))
  counts = collections.Counter()
  for example in examples:
    noisy, record = synthetic.corrupt(example, noise, seed=5)
    counts['under'] += example.family != 'sequential'
    counts['over'] += example.family in synthetic.SUMMARIES
    counts['tokens'] += bool(noisy.document().promises)
    counts.update(k + '_applied' for k in record)
  for kind in ('under', 'over', 'tokens'):
    assert _within(counts[kind + '_applied'], counts[kind], rates[kind]), (kind, counts)


def test_noisy_annotations_parse_and_strip_to_the_clean_answers(built):
  clean = {r['prompt']: r for s in ('train', 'validation') for r in built['tiny'][s]}
  for split in ('train', 'validation'):
    noisy = built['tiny_noisy'][split]
    assert {r['prompt'] for r in noisy} == {r['prompt'] for r in built['tiny'][split]}
    changed = 0
    for r in noisy:
      doc = lang.validate(r['annotated_response'], quantum=10, max_tokens=100)
      ref = clean[r['prompt']]
      assert lang.strip(doc) == r['plain_response'] == ref['plain_response']
      assert (r['family'], r['facts']) == (ref['family'], ref['facts'])
      assert synthetic.check(r['family'], r['facts'], lang.strip(doc)) == 1.0
      assert (r['annotated_response'] != ref['annotated_response']) == bool(_noise(r))
      changed += bool(_noise(r))
    assert changed > len(noisy) // 5, split  # validation is noisy too (noisy_splits)


def test_test_and_preference_splits_are_those_of_the_clean_config(built):
  for split in ('test', 'preference'):
    assert built['tiny_noisy'][split] == built['tiny'][split]
    assert all(r['extras'] == '{}' for r in built['tiny_noisy'][split])


def _topics(doc: lang.Document) -> list[str]:
  return [p.topic for p in doc.promises]


def test_under_annotation_inlines_independent_parts(built):
  clean = {r['prompt']: r for r in built['tiny']['train']}
  seen = 0
  for r in built['tiny_noisy']['train']:
    if 'under' not in _noise(r):
      continue
    seen += 1
    doc, ref = lang.parse(r['annotated_response']), lang.parse(
        clean[r['prompt']]['annotated_response'])
    inline = _noise(r)['under']
    assert inline and set(inline) <= set(_topics(ref))
    assert _topics(doc) == [t for t in _topics(ref) if t not in inline]
    main = ''.join(n.text for n in doc.nodes if isinstance(n, lang.Text))
    for p in ref.promises:
      assert (p.body in main) == (p.topic in inline)
    if not doc.promises:  # nothing left to join
      assert not any(isinstance(n, lang.Sync) for n in doc.nodes)
  assert seen > 20


@pytest.fixture(scope='module')
def tok():
  return fixtures.synthetic_tokenizer(400)


def test_over_annotation_forks_a_part_before_the_results_it_copies(built, tok):
  seen = collections.Counter()
  for r in built['tiny_noisy']['train']:
    noise = _noise(r)
    if 'over' not in noise:
      continue
    seen[r['family']] += 1
    doc = lang.parse(r['annotated_response'])
    topics = _topics(doc)
    facts = json.loads(r['facts'])
    needs = noise['over']['needs']
    summary = doc.promises[-1]
    assert summary.topic == noise['over']['topic'] == synthetic.SUMMARIES[r['family']][0]
    assert doc.nodes[-1] == summary and not any(isinstance(n, lang.Sync)
                                                for n in doc.nodes)
    # The summary really is computed from the results of the threads it needs.
    bodies = {p.topic: p.body for p in doc.promises}
    if r['family'] == 'reverse_join':
      assert needs == topics[:-1] == list('abcdefgh'[:len(facts['words'])])
      firsts = [re.search(r'reversed: (\w)', bodies[t]).group(1) for t in needs]
      assert summary.body == f'joined: {"-".join(firsts)}.'
    else:
      assert needs == [topics[-2]]
      assert summary.body == f'last: {bodies[needs[0]].split()[-1]}.'
    # Under the training masks no token of the summary's thread sees those threads.
    prompt_ids = tok.encode_text(r['prompt'])
    lay = layout.pasta_layout(prompt_ids, tok.encode(doc.quantized(10, 100)), tok.control)
    mask = lay.mask()
    thread_of = {t: k for k, t in enumerate(topics, 1)}
    rows = lay.thread == thread_of[summary.topic]
    for t in needs:
      cols = lay.thread == thread_of[t]
      assert cols.any() and not mask[np.ix_(rows, cols)].any(), (t, r['prompt'])
  assert seen['reverse_join'] > 5 and seen['mixed'] > 5


def test_over_annotated_summary_is_visible_after_sync_in_the_clean_answer(built, tok):
  # The contrast: in the reference annotation the summary follows <sync/> and sees
  # the threads it copies from.
  over = {r['prompt'] for r in built['tiny_noisy']['train'] if 'over' in _noise(r)}
  checked = 0
  for r in built['tiny']['train']:
    if r['prompt'] not in over:
      continue
    doc = lang.parse(r['annotated_response'])
    lay = layout.pasta_layout(tok.encode_text(r['prompt']),
                              tok.encode(doc.quantized(10, 100)), tok.control)
    mask = lay.mask()
    last_text = np.flatnonzero(lay.thread == 0)[-2]  # the summary's, before EOS
    assert mask[last_text, lay.thread > 0].all()
    checked += 1
  assert checked > 10


def test_wrong_tokens_are_off_by_a_documented_factor(built):
  clean = {r['prompt']: lang.parse(r['annotated_response']) for r in built['tiny']['train']}
  seen = 0
  for r in built['tiny_noisy']['train']:
    noise = _noise(r)
    if 'tokens' not in noise:
      for p in lang.parse(r['annotated_response']).promises:
        ref = {q.topic: q.tokens for q in clean[r['prompt']].promises}
        assert p.tokens == ref.get(p.topic, p.tokens)
      continue
    doc = lang.parse(r['annotated_response'])
    ref = {q.topic: q.tokens for q in clean[r['prompt']].promises}
    assert set(noise['tokens']) == set(_topics(doc))  # every promise is off
    for p in doc.promises:
      right, promised = noise['tokens'][p.topic]
      seen += 1
      assert p.tokens == promised != right and promised % 10 == 0 and promised <= 100
      if p.topic in ref:
        assert right == ref[p.topic]
      assert promised in {min(math.ceil(right * f / 10) * 10, 100) for f in (0.5, 2.0)}
  assert seen > 50


def test_no_noise_changes_nothing_and_bad_rates_are_refused():
  for example in synthetic.generate('train', 40):
    assert synthetic.corrupt(example, synthetic.Noise()) == (example, {})
  with pytest.raises(ValueError, match='exclude each other'):
    synthetic.Noise(under=0.6, over=0.5)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    synthetic.Noise(tokens=1.5)
  with pytest.raises(ValueError, match='tokens_factors'):
    synthetic.Noise(tokens_factors=(1.0,))


def test_noisy_splits_selects_the_noisy_splits():
  config = tfds_builders.PastaSynthConfig(
      name='t', num_train=8, num_validation=8, num_test=4, num_preference=4,
      noise_under=1.0, noisy_splits=('train',))
  builder = tfds_builders.PastaSynth(config=config, data_dir='/nonexistent/not_written')
  splits = builder._split_generators(None)  # pylint: disable=protected-access
  train = [r for _, r in splits['train']]
  validation = [r for _, r in splits['validation']]
  assert all('under' in _noise(r) for r in train if r['family'] != 'sequential')
  assert all(r['extras'] == '{}' for r in validation)
  bad = tfds_builders.PastaSynthConfig(name='b', noisy_splits=('test',))
  builder = tfds_builders.PastaSynth(config=bad, data_dir='/nonexistent/not_written')
  with pytest.raises(ValueError, match='noisy_splits'):
    builder._split_generators(None)  # pylint: disable=protected-access
