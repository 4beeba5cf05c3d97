"""TFDS builders (synthetic and JSONL) and the packed, resumable input pipeline."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pasta_jax import errors
from pasta_jax import masks
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import pipeline
from pasta_jax.data import records
from pasta_jax.data import tfds_builders


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
  import tensorflow_datasets as tfds
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = tfds_builders.PastaSynth(config='tiny', data_dir=data_dir,
                                     file_format=tfds_builders.FILE_FORMAT)
  builder.download_and_prepare()
  train = tfds.data_source('pasta_synth/tiny', split='train', data_dir=data_dir)
  texts = []
  for i in range(len(train)):
    texts += [records.decode_text(train[i]['prompt']),
              records.decode_text(train[i]['plain_response'])]
  tok = tokenizer_lib.train_tokenizer(texts, None, vocab_size=400, max_promise_tokens=100)
  return builder, train, tok


def make(source, tok, **kwargs):
  args = dict(mode='pasta', batch_size=4, seq_len=256, seed=1)
  args.update(kwargs)
  return pipeline.Batches(source, tok, **args)


def test_synth_builder_splits_and_features(synth):
  builder, train, _ = synth
  splits = builder.info.splits
  assert (splits['train'].num_examples, splits['validation'].num_examples,
          splits['test'].num_examples) == (400, 40, 40)
  record = train[0]
  assert set(record) == {'prompt', 'annotated_response', 'plain_response', 'family',
                         'facts', 'extras'}
  test = builder.as_data_source(split='test')
  test_prompts = {records.decode_text(test[i]['prompt']) for i in range(len(test))}
  train_prompts = {records.decode_text(train[i]['prompt']) for i in range(len(train))}
  assert not test_prompts & train_prompts


def test_packed_batches_match_per_example_layouts(synth):
  _, train, tok = synth
  it = make(train, tok, shuffle=False)
  by_tokens = {}
  for i in range(len(train)):
    item = it.example(i)
    by_tokens[tuple(item.tokens.tolist())] = item
  seen = 0
  for _ in range(6):
    batch = next(it)
    assert all(batch[f].shape == (4, 256) for f in pipeline.FIELDS)
    mask = np.asarray(masks.visibility_mask(pipeline.meta_of(batch), pipeline.meta_of(batch)))
    for r in range(4):
      segment = batch['segment'][r]
      # Nothing sees across examples or into padding.
      assert not (mask[r] & (segment[:, None] != segment[None, :])).any()
      assert not mask[r][:, segment == 0].any()
      for s in np.unique(segment[segment > 0]):
        span = np.flatnonzero(segment == s)
        item = by_tokens[tuple(batch['tokens'][r, span].tolist())]
        np.testing.assert_array_equal(mask[r][np.ix_(span, span)], item.mask())
        np.testing.assert_array_equal(batch['positions'][r, span], item.positions)
        np.testing.assert_array_equal(batch['targets'][r, span], item.targets)
        np.testing.assert_array_equal(batch['loss_weights'][r, span], item.loss_weights)
        seen += 1
  assert seen > 12 and it.stats.examples == seen
  assert 0.5 < it.stats.fill <= 1.0


def test_unpacked_example_mask_equals_layout_mask(synth):
  _, train, tok = synth
  it = make(train, tok, batch_size=1, seq_len=256, shuffle=False)
  first = it.example(0)
  batch = pipeline.pack([[first]], 256, tok.pad_id)
  mask = np.asarray(masks.visibility_mask(pipeline.meta_of(batch), pipeline.meta_of(batch)))
  n = len(first)
  np.testing.assert_array_equal(mask[0, :n, :n], first.mask())
  assert not mask[0, n:].any() and not mask[0, :, n:].any()


def test_sequential_mode_is_causal_and_plain(synth):
  _, train, tok = synth
  batch = next(make(train, tok, mode='sequential', shuffle=False))
  mask = np.asarray(masks.visibility_mask(pipeline.meta_of(batch), pipeline.meta_of(batch)))
  control = set(tok.control.tag_ids)
  for r in range(4):
    segment = batch['segment'][r]
    for s in np.unique(segment[segment > 0]):
      span = np.flatnonzero(segment == s)
      block = mask[r][np.ix_(span, span)]
      np.testing.assert_array_equal(block, np.tril(np.ones_like(block)))
      np.testing.assert_array_equal(batch['positions'][r, span], np.arange(len(span)))
      assert not control & set(batch['tokens'][r, span].tolist())
  assert (batch['thread'] == 0).all()


def test_hosts_are_disjoint_and_cover(synth):
  _, train, tok = synth
  for epoch in (0, 3):
    parts = [make(train, tok, process_index=h, process_count=3).host_indices(epoch)
             for h in range(3)]
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(train)
    assert sorted(joined.tolist()) == list(range(len(train)))
  a = make(train, tok).host_indices(0)
  b = make(train, tok).host_indices(1)
  assert a.tolist() != b.tolist()  # a new order each epoch


def test_restored_state_continues_exactly(synth):
  _, train, tok = synth
  it = make(train, tok, batch_size=8, seq_len=256)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # survives a JSON round trip
  expected = [next(it) for _ in range(45)]  # crosses into later epochs
  assert it.get_state()['epoch'] >= 1
  resumed = make(train, tok, batch_size=8, seq_len=256)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for field in pipeline.FIELDS:
      np.testing.assert_array_equal(got[field], want[field])


def test_prefetch_yields_the_same_batches_and_state(synth):
  _, train, tok = synth
  plain = make(train, tok)
  expected = [next(plain) for _ in range(4)]
  states = []
  fetched = pipeline.prefetch(make(train, tok), 2)
  for want in expected:
    got = next(fetched)
    np.testing.assert_array_equal(got['tokens'], want['tokens'])
    states.append(fetched.get_state())
  fetched.close()
  check = make(train, tok)
  for state in states:
    next(check)
    assert check.get_state() == state


def test_prefetched_state_round_trips_through_grains_orbax_handler(synth, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  _, train, tok = synth
  fetched = pipeline.prefetch(make(train, tok), 2)
  for _ in range(3):
    next(fetched)
  plain = make(train, tok)
  expected = [next(plain) for _ in range(5)][3:]
  with ocp.CheckpointManager(tmp_path, item_names=('data',)) as manager:
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(fetched)))
    manager.wait_until_finished()
    fetched.close()
    resumed = pipeline.prefetch(make(train, tok), 2)
    manager.restore(3, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(resumed)))
  for want in expected:
    np.testing.assert_array_equal(next(resumed)['tokens'], want['tokens'])
  resumed.close()


def test_worker_processes_yield_the_same_batches_and_state(synth):
  _, train, tok = synth
  plain = make(train, tok, batch_size=8)
  expected = [next(plain) for _ in range(3)]
  state = plain.get_state()
  after = next(plain)
  workers = make(train, tok, batch_size=8, workers=2)
  try:
    for want in expected:
      np.testing.assert_array_equal(next(workers)['tokens'], want['tokens'])
    assert workers.get_state() == state
    workers.set_state(state)
    got = next(workers)
    for field in pipeline.FIELDS:
      np.testing.assert_array_equal(got[field], after[field])
  finally:
    workers.close()


def test_finite_epochs_stop_and_long_examples_are_dropped(synth):
  _, train, tok = synth
  it = make(train, tok, seq_len=64, batch_size=8, num_epochs=1)
  batches = list(it)
  assert batches and it.stats.dropped_too_long > 0
  assert it.stats.examples + it.stats.dropped_too_long == len(train)
  with pytest.raises(StopIteration):
    next(it)


def test_bad_arguments(synth):
  _, train, tok = synth
  with pytest.raises(ValueError, match='mode must be one of'):
    make(train, tok, mode='causal')
  with pytest.raises(ValueError, match='process_index 2 not in'):
    make(train, tok, process_index=2, process_count=2)
  it = make(train, tok)
  state = it.get_state()
  with pytest.raises(ValueError, match='seed'):
    make(train, tok, seed=9).set_state(state)


def test_state_onto_a_different_host_count(synth):
  _, train, tok = synth
  it = make(train, tok, process_index=0, process_count=2)
  for _ in range(2):
    next(it)
  state = it.get_state()
  single = make(train, tok)
  single.set_state(state)
  restored = single.get_state()
  assert restored['epoch'] == state['epoch']
  assert restored['index'] == pytest.approx(2 * state['index'], abs=2)


# ----------------------------------------------------------------------------
# JSONL datasets.

GOOD = {'prompt': 'p', 'annotated_response':
        'a<promise topic="x" tokens="10"/><async>b</async><sync/>c', 'family': 'f',
        'source': 'slimorca'}


def write_jsonl(path, lines):
  path.write_text('\n'.join(l if isinstance(l, str) else json.dumps(l) for l in lines) + '\n')
  return str(path)


BAD_LINES = [
    ('{not json', 'invalid JSON'),
    ('[1, 2]', 'invalid record: expected a JSON object'),
    (json.dumps({'prompt': 'p'}), "missing field: 'annotated_response'"),
    (json.dumps({'prompt': 3, 'annotated_response': 'a'}), "invalid field: 'prompt'"),
    (json.dumps({'prompt': 'p', 'annotated_response': 'x <sync>'}),
     r'PASTA-LANG error in annotated_response: line 1:3 \(offset 2\): malformed <sync>'),
]


@pytest.mark.parametrize('line,problem', BAD_LINES)
def test_jsonl_errors_name_the_line(tmp_path, line, problem):
  path = write_jsonl(tmp_path / 'data.jsonl', [GOOD, GOOD, line, GOOD])
  config = tfds_builders.PastaJsonlConfig(name='x', paths={'train': path})
  with pytest.raises(tfds_builders.JsonlError, match=problem) as info:
    list(tfds_builders.read_jsonl(path, config))
  assert info.value.line == 3 and str(info.value).startswith(f'{path}:3: ')


def test_jsonl_builder_skips_and_counts(tmp_path):
  import tensorflow_datasets as tfds
  path = write_jsonl(tmp_path / 'train.jsonl',
                     [GOOD, BAD_LINES[0][0], '', GOOD, BAD_LINES[2][0], BAD_LINES[4][0]])
  val = write_jsonl(tmp_path / 'val.jsonl', [GOOD])
  config = tfds_builders.PastaJsonlConfig(name='mine', paths={'train': path, 'validation': val},
                                          on_error='skip')
  data_dir = str(tmp_path / 'tfds')
  builder = tfds_builders.PastaJsonl(config=config, data_dir=data_dir,
                                     file_format=tfds_builders.FILE_FORMAT)
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == 2
  assert builder.skipped['train'] == {'invalid JSON': 1, 'missing field': 1,
                                      'PASTA-LANG error in annotated_response': 1}
  # The counts are stored with the dataset.
  reloaded = tfds.builder_from_directory(builder.data_dir)
  assert reloaded.info.metadata['skipped']['train']['invalid JSON'] == 1
  record = reloaded.as_data_source(split='train')[0]
  assert records.decode_text(record['plain_response']) == 'abc'
  assert json.loads(records.decode_text(record['extras'])) == {'source': 'slimorca'}


def test_jsonl_builder_fails_by_default_and_checks_paths(tmp_path):
  path = write_jsonl(tmp_path / 'train.jsonl', [GOOD, '{oops'])
  config = tfds_builders.PastaJsonlConfig(name='strict', paths={'train': path})
  builder = tfds_builders.PastaJsonl(config=config, data_dir=str(tmp_path / 'tfds'),
                                     file_format=tfds_builders.FILE_FORMAT)
  with pytest.raises(tfds_builders.JsonlError, match=r'train.jsonl:2: invalid JSON'):
    builder.download_and_prepare()
  missing = tfds_builders.PastaJsonlConfig(name='m', paths={'train': str(tmp_path / 'no.jsonl')})
  with pytest.raises(errors.DataError, match="split 'train': JSONL file .*no.jsonl does not exist"):
    tfds_builders.PastaJsonl(config=missing, data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='on_error must be one of'):
    tfds_builders.PastaJsonl(config=tfds_builders.PastaJsonlConfig(
        name='e', paths={'train': path}, on_error='ignore'), data_dir=str(tmp_path))


def test_training_path_does_not_need_tensorflow(tmp_path):
  """Building and reading never import TensorFlow (it need not be installed)."""
  code = f'''
import sys
from pasta_jax.data import tfds_builders, pipeline
import tensorflow_datasets as tfds
b = tfds_builders.PastaSynth(config='tiny', data_dir={str(tmp_path)!r}, file_format='array_record')
b.download_and_prepare()
src = tfds.data_source('pasta_synth/tiny', split='validation', data_dir={str(tmp_path)!r})
assert len(src) == 40 and src[0]['prompt']
assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
print('ok')
'''
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith('ok')
