"""The APAR-style baseline's data: pasta_synth's answers annotated by the rules annotator
(builder configs `apar` and `tiny_apar`, preset `configs/synth.py:apar`)."""

import collections
import io
import json

import jax
import pytest

from pasta_jax import lang
from pasta_jax.annotation import rules
from pasta_jax.data import synthetic
from pasta_jax.data import tfds_builders

from configs import synth
from tests import fixtures

SPLITS = ('train', 'validation', 'test', 'preference')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """(data_dir, {config: {split: [record]}}, what the builds printed)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  stdout = io.StringIO()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr('sys.stdout', stdout)
    out = fixtures.build_synth(data_dir, ('tiny', 'tiny_apar'), SPLITS)
  return data_dir, out, stdout.getvalue()


def test_train_and_validation_are_the_rules_annotations_of_the_same_answers(built):
  _, data, _ = built
  for split in ('train', 'validation'):
    for ref, apar in zip(data['tiny'][split], data['tiny_apar'][split], strict=True):
      assert {k: apar[k] for k in ('prompt', 'plain_response', 'family', 'facts')} == {
          k: ref[k] for k in ('prompt', 'plain_response', 'family', 'facts')}
      doc = lang.parse(apar['annotated_response'])
      assert lang.strip(doc) == ref['plain_response']
      # The rules' own annotation of the stripped answer, lengths rounded to 10.
      expected = rules.annotate(ref['plain_response']).quantized(10, 100)
      assert doc == expected
      record = json.loads(apar['extras'])['rules']
      assert record['promises'] == len(doc.promises)
      assert record['outcome'] == ('annotated' if doc.promises else 'unchanged-no-tags')
  # Test and preference keep the reference annotations (only their prompts and
  # facts are ever read).
  for split in ('test', 'preference'):
    assert data['tiny_apar'][split] == data['tiny'][split]


def test_counts_per_family_are_recorded_and_printed(built):
  _, data, printed = built
  train = data['tiny_apar']['train']
  outcomes = collections.Counter((r['family'], json.loads(r['extras'])['rules']['outcome'])
                                 for r in train)
  # Every list-shaped answer becomes promises (a sync before a summary line);
  # `sequential` answers have no list and stay sequential.
  assert outcomes == {(f, 'annotated'): 100 for f in ('list_ops', 'mixed', 'reverse_join')} | {
      ('sequential', 'unchanged-no-tags'): 100}
  syncs = collections.Counter(r['family'] for r in train
                              if '<sync/>' in r['annotated_response'])
  assert syncs == {'list_ops': 100, 'mixed': 100, 'reverse_join': 100}
  assert ('pasta_synth/tiny_apar train: rules annotator: 300 of 400 answers annotated, '
          '100 left sequential (annotated per family: list_ops 100/100, mixed 100/100, '
          'reverse_join 100/100, sequential 0/100)') in printed
  assert 'tiny_apar validation: rules annotator: 30 of 40' in printed
  # The topic is the item's first words (APAR's rule), not the reference's label.
  first = next(r for r in train if r['family'] == 'reverse_join')
  promise = lang.parse(first['annotated_response']).promises[0]
  assert promise.topic == rules.topic(promise.body.split(') ', 1)[1], 1)


def test_rules_exclude_noise():
  config = tfds_builders.PastaSynthConfig(name='x', annotator='rules', noise_under=0.1)
  with pytest.raises(ValueError, match='one or the other'):
    tfds_builders.PastaSynth(config=config, data_dir='/nonexistent')._split_generators(None)
  config = tfds_builders.PastaSynthConfig(name='y', annotator='llm')
  with pytest.raises(ValueError, match="one of \\('reference', 'rules'\\)"):
    tfds_builders.PastaSynth(config=config, data_dir='/nonexistent')._split_generators(None)


def test_synthetic_examples_strip_back(built):
  """`rules_annotated` on generated examples (all families): only tags are added."""
  for example in synthetic.generate('validation', 8):
    annotated, record = tfds_builders.rules_annotated(example)
    assert lang.strip(lang.parse(annotated.annotated)) == example.plain
    assert (record['promises'] > 0) == (example.family != 'sequential')


@pytest.mark.slow
def test_the_preset_trains(built, tmp_path):
  """`configs/synth.py:tiny_apar` trains on the rules annotations (async targets)."""
  from pasta_jax.training import loop  # pylint: disable=g-import-not-at-top
  data_dir, _, _ = built
  config = synth.get_config('tiny_apar')
  assert config.data.tfds_config == 'tiny_apar' and config.data.mode == 'pasta'
  config.data.data_dir = data_dir
  config.train.num_steps = 3
  config.eval.every_steps = 3
  config.eval.num_batches = 2
  config.checkpoint.every_steps = 3
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    result = loop.train_and_evaluate(config, str(tmp_path / 'apar'), stream=io.StringIO())
  finally:
    jax.config.update('jax_disable_most_optimizations', previous)
  assert result.step == 3
  assert result.eval['async_targets'] > 0 and result.eval['main_targets'] > 0
  assert synth.get_config('apar').data.tfds_config == 'apar'
