"""Hostile but fair input to training: sequence lengths that drop examples, signals
while the run waits for data, a resume after kill -9, a change of mode."""

import json
import os
import shutil
import signal
import threading

import grain
import jax
import numpy as np
import pytest

from pasta_jax import errors
from pasta_jax import runs
from pasta_jax.config import ConfigError
from pasta_jax.data import pipeline
from pasta_jax.data import sources as sources_lib
from pasta_jax.training import loop
from pasta_jax.training import state as state_lib
from pasta_jax.training import step as step_lib

from tests.training.conftest import RESUMABLE
from tests.training.conftest import tiny_config

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('bad_input')]


@pytest.fixture
def no_first_step(monkeypatch):
  """Training stops with AssertionError('the first step') when it starts to train."""
  def first_step(*args):
    raise AssertionError('the first step')
  monkeypatch.setattr(step_lib, 'jit_steps', lambda **kwargs: (first_step, first_step))


@pytest.fixture(scope='module')
def train_split(tfds_dir, tmp_path_factory):
  """(source, tokenizer, layout lengths) of the tiny train split."""
  config = tiny_config(tfds_dir)
  source = sources_lib.data_sources(config.data, ['train'])['train']
  workdir = str(tmp_path_factory.mktemp('tok'))
  tok = sources_lib.make_tokenizer(config, source)
  runs.save_tokenizer(tok, workdir)
  it = pipeline.Batches(source, tok, mode='pasta', batch_size=2, seq_len=2048)
  lengths = np.asarray([len(it.example(i)) for i in range(len(source))])
  return source, tok, lengths


def test_a_sequence_length_shorter_than_every_example_is_refused(tfds_dir, tmp_path,
                                                                 train_split, no_compile):
  *_, lengths = train_split
  with pytest.raises(ConfigError) as e:
    loop.train_and_evaluate(tiny_config(tfds_dir, **{'data.seq_len': 16}),
                            str(tmp_path / 'w'))
  assert str(e.value) == (f'config.data.seq_len=16 is shorter than every train example: the '
                          f'shortest is {lengths.min()} tokens, raise data.seq_len')
  assert e.value.exit_status == 2


def test_too_many_dropped_examples_are_refused_and_a_few_are_reported(
    tfds_dir, tmp_path, train_split, monkeypatch, no_first_step, capsys):
  *_, lengths = train_split
  seq_len = int(np.sort(lengths)[len(lengths) // 4])  # about 3/4 of the examples are longer
  too_long = int((lengths > seq_len).sum())
  with monkeypatch.context() as m, pytest.raises(ConfigError) as e:
    m.setattr(state_lib, 'init_state', None)  # refused before the state is made
    loop.train_and_evaluate(tiny_config(tfds_dir, **{'data.seq_len': seq_len}),
                            str(tmp_path / 'w'))
  assert str(e.value) == (
      f'config.data.seq_len={seq_len}: {too_long} of 400 train examples '
      f'({100 * too_long / 400:.2f}%) are longer than data.seq_len={seq_len} tokens (the '
      f'longest is {lengths.max()}) and would be skipped, more than '
      'config.data.max_too_long=0.01 allows; raise data.seq_len, or data.max_too_long to '
      'train without them')
  # Allowed: the count and fraction are reported before the first step.
  seq_len = int(lengths.max()) - 1  # the longest do not fit
  config = tiny_config(tfds_dir, **{'data.seq_len': seq_len, 'data.max_too_long': 0.03})
  with pytest.raises(AssertionError, match='the first step'):
    loop.train_and_evaluate(config, str(tmp_path / 'w2'))
  dropped = int((lengths > seq_len).sum())
  assert (f'{dropped} of 400 train examples ({100 * dropped / 400:.2f}%) are longer than '
          f'data.seq_len={seq_len} tokens (the longest is {lengths.max()}); they are '
          'skipped') in capsys.readouterr().out


def test_a_sampled_length_check_says_so(tfds_dir, tmp_path, no_compile):
  with pytest.raises(ConfigError, match=r'shorter than every train example checked \(a random '
                     r'sample of 50 of its 400 examples\)'):
    loop.train_and_evaluate(tiny_config(tfds_dir, **{'data.seq_len': 16,
                                                     'data.length_check': 50}),
                            str(tmp_path / 'w'))


def test_the_pipeline_stops_instead_of_looping_over_examples_that_never_fit(train_split):
  source, tok, lengths = train_split
  endless = pipeline.Batches(source, tok, mode='pasta', batch_size=2, seq_len=16)
  with pytest.raises(errors.DataError, match=r'every example is longer than seq_len=16 '
                     rf'tokens \(the shortest is {lengths.min()}\)'):
    next(endless)
  # Through grain's prefetch thread the error reaches the consumer too.
  feed = pipeline.prefetch(pipeline.Batches(source, tok, mode='pasta', batch_size=2,
                                            seq_len=16), 2)
  with pytest.raises(errors.DataError, match='every example is longer'):
    next(feed)
  feed.close()


def test_runs_of_dropped_examples_across_epochs_are_not_mistaken_for_a_hopeless_epoch(
    train_split):
  """The 8 examples of a tiny source, 6 of them too long: in the shuffled order runs of
  too-long examples span epoch boundaries, yet the two that fit keep coming."""
  source, tok, lengths = train_split
  order = np.argsort(lengths)
  picked = [source[int(i)] for i in order[:2]] + [source[int(i)] for i in order[-6:]]
  seq_len = int(lengths[order[1]])
  it = pipeline.Batches(picked, tok, mode='pasta', batch_size=1, seq_len=seq_len, seed=3)
  fits = np.concatenate([it.host_indices(epoch) < 2 for epoch in range(25)])
  runs_of_too_long = np.diff(np.flatnonzero(fits)) - 1
  assert runs_of_too_long.max() > 8  # longer than an epoch, across a boundary
  for _ in range(40):
    batch = next(it)
    assert batch['segment'].max() == 1
  # Every example up to the 41st that fits (which starts the next batch) was read.
  read = np.flatnonzero(fits)[40]
  assert it.stats.examples == 40 and it.stats.dropped_too_long == read - 40


def test_lengths_counts_this_hosts_share(train_split):
  source, tok, lengths = train_split
  seq_len = int(np.median(lengths))
  hosts = [pipeline.Batches(source, tok, mode='pasta', batch_size=1, seq_len=seq_len,
                            process_index=h, process_count=3) for h in range(3)]
  seen = []
  counts = [h.lengths(progress=seen.append) for h in hosts]
  assert [c.total for c in counts] == [134, 133, 133] == [c.checked for c in counts]
  assert seen == [134, 133, 133]  # one call at the end of each (fewer than 256 examples)
  merged = counts[0].merge(counts[1]).merge(counts[2])
  assert merged.too_long == int((lengths > seq_len).sum())
  assert (merged.shortest, merged.longest) == (lengths.min(), lengths.max())
  sample = hosts[0].lengths(10)
  assert (sample.checked, sample.total) == (10, 134)


class _BlockingFeed(grain.DatasetIterator):
  """Wraps the run's feed: the `block_at`-th batch never comes (a stuck reader) until
  SIGTERM arrives, which this sends to the process once the wait has begun."""

  def __init__(self, feed, block_at):
    super().__init__()
    self._feed, self._block_at, self._calls = feed, block_at, 0
    self.waited = threading.Event()

  def __next__(self):
    self._calls += 1
    if self._calls == self._block_at:
      self.waited.set()
      threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
      threading.Event().wait()  # forever, unless the signal ends the wait
    return next(self._feed)

  def get_state(self):
    return self._feed.get_state()

  def set_state(self, state):
    self._feed.set_state(state)

  def close(self):
    self._feed.close()


def test_a_signal_ends_a_wait_for_data_and_the_run_resumes_exactly(interrupted, tfds_dir,
                                                                   tmp_path, monkeypatch):
  straight, _, _ = interrupted
  feeds = []
  real_prefetch = pipeline.prefetch

  def blocking_prefetch(batches, size):
    feeds.append(_BlockingFeed(real_prefetch(batches, size), block_at=6))
    return feeds[-1]

  monkeypatch.setattr(pipeline, 'prefetch', blocking_prefetch)
  workdir = str(tmp_path / 'w')
  stopped = loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE), workdir)
  assert feeds[0].waited.is_set()
  assert stopped.stopped_by == signal.SIGTERM and stopped.step == 5
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '5']
  monkeypatch.setattr(pipeline, 'prefetch', real_prefetch)
  resumed = loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE), workdir)
  assert resumed.step == 10
  for x, y in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(straight.state.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_metrics_of_steps_after_the_checkpoint_are_not_repeated(interrupted, tfds_dir,
                                                                tmp_path):
  straight, _, root = interrupted
  workdir = tmp_path / 'killed'
  shutil.copytree(root / 'stopped', workdir)
  # What a process killed (kill -9) after step 8, before its next checkpoint, leaves:
  # lines of steps 7 and 8, the last one cut short.
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write(json.dumps({'step': 8, 'split': 'train', 'time': 0.0, 'loss': 9.0}) + '\n')
    f.write('{"step": 10, "split": "tr')
  resumed = loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE), str(workdir))
  assert resumed.step == 10
  records = _records(workdir)
  keys = [(r['step'], r['split']) for r in records]
  assert keys == [(2, 'train'), (4, 'train'), (6, 'train'), (8, 'train'), (10, 'train'),
                  (10, 'eval')]
  straight_losses = {r['step']: r['loss'] for r in _records(root / 'straight')
                     if r['split'] == 'train'}
  np.testing.assert_allclose([r['loss'] for r in records if r['split'] == 'train'],
                             [straight_losses[s] for s in (2, 4, 6, 8, 10)], rtol=1e-6)
  # Running the finished run again evaluates again: its line replaces the old one.
  loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE), str(workdir))
  assert [(r['step'], r['split']) for r in _records(workdir)] == keys


def test_a_fresh_run_keeps_the_metrics_it_finds_aside(tfds_dir, tmp_path, no_first_step):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text('{"step": 3, "split": "train", "loss": 1.0}\n')
  with pytest.raises(AssertionError, match='the first step'):
    loop.train_and_evaluate(tiny_config(tfds_dir), str(workdir))
  assert (workdir / 'metrics.jsonl').read_text() == ''  # the new run's, empty so far
  aside = [n for n in os.listdir(workdir) if n.startswith('metrics.jsonl.')]
  assert len(aside) == 1
  assert (workdir / aside[0]).read_text() == '{"step": 3, "split": "train", "loss": 1.0}\n'


def test_resuming_with_another_mode_or_position_strategy_is_refused(interrupted, tfds_dir,
                                                                     tmp_path, no_compile):
  _, _, root = interrupted
  workdir = tmp_path / 'w'
  shutil.copytree(root / 'stopped', workdir)
  saved = (workdir / 'config.json').read_text()
  with pytest.raises(ConfigError) as e:
    loop.train_and_evaluate(tiny_config(tfds_dir, 'tiny_sequential', **RESUMABLE),
                            str(workdir))
  assert str(e.value) == (
      f"{workdir} holds a run that decodes differently: config.data.mode: 'pasta' in the "
      "run, 'sequential' now. These define what the model learns; train it in a new workdir")
  with pytest.raises(ConfigError, match=r"config\.data\.position_strategy: 'predicted' in the "
                     r"run, 'fixed' now; config\.data\.fixed_reserve: 32 in the run, 8 now"):
    loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE, **{
        'data.position_strategy': 'fixed', 'data.fixed_reserve': 8}), str(workdir))
  assert (workdir / 'config.json').read_text() == saved
