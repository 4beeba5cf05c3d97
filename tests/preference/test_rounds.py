"""The stage-2 round driver: what each phase writes, round 2 from round 1's params,
and a run killed in every phase that resumes to the uninterrupted run's outputs."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from pasta_jax import errors
from pasta_jax import runs
from pasta_jax.config import ConfigError
from pasta_jax.data import build
from pasta_jax.preference import common
from pasta_jax.preference import logprobs
from pasta_jax.preference import phases
from pasta_jax.preference import rounds
from pasta_jax.preference import sampling
from pasta_jax.training import checkpointing
from pasta_jax.training import loop
from pasta_jax.training import metrics as metrics_lib

from configs import synth
from configs import synth_po
from tests import fixtures

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('rounds')]


_fast_compiles = pytest.fixture(scope='module', autouse=True)(fixtures.fast_compiles)


@pytest.fixture(scope='module', autouse=True)
def compile_cache(tmp_path_factory):
  """A persistent compilation cache for the module: every run of the driver
  builds new jitted programs (interpreter, steps) that are the same programs."""
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  previous = {n: getattr(jax.config, n) for n in names}
  jax.config.update(names[0], str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update(names[1], 0)
  jax.config.update(names[2], 0)
  yield
  for name, value in previous.items():
    jax.config.update(name, value)


class Killed(Exception):
  """Stands for a kill in the middle of a phase."""


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """A data_dir holding pasta_synth/tiny (with its 40 preference prompts)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = synth.get_config('tiny')
  config.data.data_dir = data_dir
  build.builder(config.data)
  return data_dir


def train_tiny(tfds_dir, workdir, preset, steps):  # pylint: disable=redefined-outer-name
  """A stage-1 run of configs/synth.py:PRESET trained `steps` steps in `workdir`."""
  config = synth.get_config(preset)
  config.data.data_dir = tfds_dir
  config.data.prefetch = 0
  config.train.num_steps = steps
  config.eval.every_steps = 0
  config.checkpoint.every_steps = steps
  loop.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def init_run(tfds_dir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """A stage-1 tiny run trained 4 steps."""
  return train_tiny(tfds_dir, str(tmp_path_factory.mktemp('stage1') / 'run'), 'tiny', 4)


def po_config(tfds_dir, init_run, **po):  # pylint: disable=redefined-outer-name
  """configs/synth_po.py:tiny with 4 prompts, 3 samples in chunks of 2, 3 updates."""
  config = synth_po.get_config('tiny')
  config.data.data_dir = tfds_dir
  config.data.prefetch = 0
  config.init.run = init_run
  config.interpreter.max_steps = 48
  config.interpreter.cache_size = 160
  config.po.update({'num_prompts': 4, 'num_samples': 3, 'chunk_prompts': 2, 'rounds': 1,
                    'train_steps': 3, 'checkpoint_every': 2, 'lr': 1e-4, **po})
  return config


@pytest.fixture(scope='module')
def straight(tfds_dir, init_run, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """Two rounds without interruption, and the params each phase started from."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  seen = {'sampled': [], 'reference': []}
  with pytest.MonkeyPatch.context() as mp:
    original_interp, original_ref = phases.Interpreter, logprobs.reference_logprobs

    def interpreter(model_config, params, *args, **kwargs):
      seen['sampled'].append(jax.device_get(params))
      return original_interp(model_config, params, *args, **kwargs)

    def reference(params, *args, **kwargs):
      seen['reference'].append(jax.device_get(params))
      return original_ref(params, *args, **kwargs)

    mp.setattr(phases, 'Interpreter', interpreter)
    mp.setattr(logprobs, 'reference_logprobs', reference)
    result = rounds.run_rounds(po_config(tfds_dir, init_run, rounds=2), workdir)
  return workdir, result, seen


def assert_trees_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), **tol)


def test_each_phase_writes_its_files(straight):
  workdir, result, _ = straight
  assert [r.round for r in result.rounds] == [1, 2] and result.stopped_by is None
  for r in (1, 2):
    directory = rounds.round_dir(workdir, r)
    for phase in rounds.PHASES:
      assert rounds.read_marker(directory, phase) is not None, phase
    store = sampling.SampleStore(os.path.join(directory, rounds.SAMPLES_FILE))
    assert sorted(store.samples()) == [0, 1, 2, 3] and len(store.chunks) == 2
    assert all(len(s) == 3 for s in store.samples().values())
    pairs = rounds.read_pairs(directory)
    assert pairs and all(p['chosen_score'] > p['rejected_score'] for p in pairs)
    with open(os.path.join(directory, rounds.SUMMARY_FILE)) as f:
      summary = json.load(f)
    assert summary['samples'] == 12 and summary['pairs'] == len(pairs)
    reference = rounds.read_reference(directory)
    assert reference['chosen'].shape == (len(pairs),)
    assert np.isfinite(reference['chosen']).all()  # none left out at seq_len 768
    # The round directory is a run directory: load_run reads its final params.
    run = runs.load_run(directory)
    assert run.step == 3 and run.config.po.lam == 4.0
    assert run.tokenizer.vocab_size == runs.load_tokenizer(workdir + '/round_1').vocab_size
    records = metrics_lib.read_metrics(os.path.join(directory, 'metrics.jsonl'))
    assert [(m['step'], m['split']) for m in records] == [
        (0, 'samples'), (1, 'train'), (2, 'train'), (3, 'train')]
    assert {'mean_score', 'mean_speedup', 'mean_quality', 'mean_margin'} <= set(records[0])
    assert {'loss', 'sft', 'ipo', 'h', 'margin', 'lr'} <= set(records[1])
    assert result.rounds[r - 1].steps == 3


def test_round_two_starts_from_round_one(straight, init_run):  # pylint: disable=redefined-outer-name
  workdir, _, seen = straight
  first = runs.load_run(init_run).params
  after_one = runs.load_run(rounds.round_dir(workdir, 1)).params
  for phase in ('sampled', 'reference'):
    assert len(seen[phase]) == 2
    assert_trees_close(seen[phase][0], first, rtol=0, atol=0)
    assert_trees_close(seen[phase][1], after_one, rtol=0, atol=0)
  with pytest.raises(AssertionError):  # training moved the params
    assert_trees_close(after_one, first, rtol=0, atol=1e-6)
  # Each round samples with its own seeds.
  seeds = [sampling.SampleStore(os.path.join(rounds.round_dir(workdir, r),
                                             rounds.SAMPLES_FILE)).settings.seed
           for r in (1, 2)]
  assert seeds[0] != seeds[1]


def test_killed_in_every_phase_resumes_to_the_same_outputs(straight, tfds_dir, init_run,
                                                           tmp_path, monkeypatch):  # pylint: disable=redefined-outer-name
  workdir = str(tmp_path / 'po')
  directory = rounds.round_dir(workdir, 1)
  config = lambda **po: po_config(tfds_dir, init_run, **po)

  def run_killed(patch_name, target, replacement):
    with monkeypatch.context() as mp:
      mp.setattr(target, patch_name, replacement)
      with pytest.raises(Killed):
        rounds.run_rounds(config(), workdir)

  # 1. Sampling, stopped by a signal after its first chunk (SIGTERM's path,
  # without a signal), then a partial line as a kill during the next append leaves.
  class StopAfterOneChunk(loop.StopRequest):

    def requested(self):
      self.calls = getattr(self, 'calls', 0) + 1
      if self.calls >= 2:
        self.signal = 15
      return self.signal is not None

  with monkeypatch.context() as mp:
    mp.setattr(loop, 'StopRequest', StopAfterOneChunk)
    stopped = rounds.run_rounds(config(), workdir)
  assert stopped.stopped_by == 15 and stopped.rounds == ()
  samples_path = os.path.join(directory, rounds.SAMPLES_FILE)
  assert len(sampling.SampleStore(samples_path).chunks) == 1
  assert rounds.read_marker(directory, 'sampled') is None
  with open(samples_path, 'ab') as f:
    f.write(b'{"version": 1, "prompt_ids": [2, 3], "sam')
  # Other sampling settings are refused before anything is sampled.
  with pytest.raises(ConfigError, match='num_samples'):
    rounds.run_rounds(config(num_samples=4), workdir)

  # 2.-3. Scoring and the reference log-probs: outputs written, marker not.
  original_mark = common.mark

  def kill_before(phase):
    def mark(directory_, phase_, *args, **kwargs):
      if phase_ == phase:
        raise Killed()
      return original_mark(directory_, phase_, *args, **kwargs)
    return mark

  run_killed('mark', common, kill_before('scored'))
  assert rounds.read_marker(directory, 'sampled') is not None
  assert rounds.read_marker(directory, 'scored') is None
  run_killed('mark', common, kill_before('reference'))
  assert rounds.read_marker(directory, 'reference') is None
  # A finished phase refuses another starting model.
  other = str(tmp_path / 'other_run')
  shutil.copytree(init_run, other)
  with pytest.raises(ConfigError, match='init_run'):
    rounds.run_rounds(po_config(tfds_dir, other), workdir)

  # 4. Training, once the checkpoint of step 2 is saved.
  original_save = checkpointing.Checkpoints.save

  def save_then_kill(self, state, **kwargs):
    original_save(self, state, **kwargs)
    self.wait()
    if int(jax.device_get(state.step)) == 2:
      raise Killed()

  run_killed('save', checkpointing.Checkpoints, save_then_kill)
  assert rounds.read_marker(directory, 'trained') is None
  assert runs.load_run(directory).step == 2

  result = rounds.run_rounds(config(), workdir)
  assert result.rounds[0].steps == 3

  # The same samples, pairs, reference log-probs and final params as without kills.
  want = rounds.round_dir(straight[0], 1)
  got_store = sampling.SampleStore(samples_path)
  assert got_store.partial_lines == 0
  assert got_store.samples() == sampling.SampleStore(
      os.path.join(want, rounds.SAMPLES_FILE)).samples()
  assert rounds.read_pairs(directory) == rounds.read_pairs(want)
  for key, value in rounds.read_reference(want).items():
    np.testing.assert_allclose(rounds.read_reference(directory)[key], value, rtol=1e-6)
  assert_trees_close(runs.load_run(directory).params, runs.load_run(want).params,
                     rtol=1e-5, atol=1e-6)
  records = metrics_lib.read_metrics(os.path.join(directory, 'metrics.jsonl'))
  assert [(m['step'], m['split']) for m in records] == [
      (0, 'samples'), (1, 'train'), (2, 'train'), (3, 'train')]


def test_user_errors(tfds_dir, tmp_path):  # pylint: disable=redefined-outer-name
  missing = str(tmp_path / 'no_such_run')
  with pytest.raises(errors.CheckpointError, match='no_such_run'):
    rounds.run_rounds(po_config(tfds_dir, missing), str(tmp_path / 'po'))
  with pytest.raises(ConfigError, match='config.po.num_samples'):
    rounds.run_rounds(po_config(tfds_dir, missing, num_samples=1), str(tmp_path / 'po'))
  with pytest.raises(ConfigError, match='config.po.lam'):
    rounds.run_rounds(po_config(tfds_dir, missing, lam=-1.0), str(tmp_path / 'po'))
  config = po_config(tfds_dir, missing)
  config.init.run = ''
  with pytest.raises(ConfigError, match='config.init.run'):
    rounds.run_rounds(config, str(tmp_path / 'po'))


def test_train_command_runs_stage_two_for_a_po_config(tmp_path):
  """`python -m pasta_jax.train` hands a config with a po section to the round
  driver: a missing init.run is its CheckpointError (exit status 4)."""
  root = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
  env = {**os.environ, 'PYTHONPATH': root + os.pathsep + os.environ.get('PYTHONPATH', ''),
         'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
      [sys.executable, '-m', 'pasta_jax.train', '--config', 'configs/synth_po.py:tiny',
       f'--workdir={tmp_path}/po', f'--config.init.run={tmp_path}/no_such_run',
       '--config.po.lam=inf'], capture_output=True, text=True, timeout=300, env=env,
      cwd=root, check=False)
  assert result.returncode == errors.CheckpointError.exit_status, result.stderr
  assert f'error: {tmp_path}/no_such_run does not exist' in result.stderr


@pytest.fixture(scope='module')
def sequential_run(tfds_dir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """A tiny sequential run trained 2 steps: the judge's baseline."""
  return train_tiny(tfds_dir, str(tmp_path_factory.mktemp('sequential') / 'run'),
                    'tiny_sequential', 2)


def test_judge_quality_against_the_sequential_answers(tfds_dir, init_run, sequential_run,
                                                      tmp_path, monkeypatch):
  """po.quality = 'judge': each sample's quality is the judge's win over the sequential
  model's answer (decoded once per run); a malformed verdict leaves a sample unrated;
  a run stopped while judging resumes without asking the judge twice."""
  from pasta_jax.preference import baseline, judged  # pylint: disable=g-import-not-at-top
  from tests.annotation import chat_server  # pylint: disable=g-import-not-at-top
  from tests.test_judge import shown, verdict  # pylint: disable=g-import-not-at-top
  state = {'refuse_from': 5}

  def script(request):  # the shorter answer is better; 'Neither.' for request 3 and its fix
    if request.number >= state['refuse_from']:
      return chat_server.Error(401, 'stopped here')
    if request.number == 3 or len(request.messages) > 2:
      return chat_server.Answer('Neither.')
    a, b = shown(request)
    letter = 'A' if len(a) < len(b) else 'B' if len(a) > len(b) else 'T'
    return verdict(letter, {letter: 0.6, **{v: 0.2 for v in 'ABT' if v != letter}})

  monkeypatch.setenv('JUDGE_KEY', 'k')
  workdir = str(tmp_path / 'po')
  with chat_server.ChatServer(script) as server:
    config = po_config(tfds_dir, init_run, num_prompts=2, num_samples=3, train_steps=1,
                       quality='judge', sequential_run=sequential_run)
    config.po.judge.update({'model': 'judge-model', 'base_url': server.url,
                            'api_key_env': 'JUDGE_KEY',
                            'concurrency': 1, 'max_retries': 0})
    with pytest.raises(errors.ServiceError, match='status 401: stopped here'):
      rounds.run_rounds(config, workdir)
    directory = rounds.round_dir(workdir, 1)
    assert rounds.read_marker(directory, 'scored') is None
    answers_path = os.path.join(workdir, baseline.ANSWERS_FILE)
    with open(answers_path) as f:
      stored = json.load(f)
    for i, answer in enumerate(stored['answers']):  # lengths no sample has: the speedup
      answer['tokens'] = 1000 + i                    # baseline must come from this file
    with open(answers_path, 'w') as f:
      json.dump(stored, f)
    decoded = os.stat(answers_path).st_mtime_ns
    state['refuse_from'] = 10 ** 6
    result = rounds.run_rounds(config, workdir)
    answered = list(server.answered)
  assert len(answered) == len(set(answered))  # no verdict was asked for twice
  assert os.stat(answers_path).st_mtime_ns == decoded  # decoded once
  with open(answers_path) as f:
    answers = json.load(f)
  assert answers['settings']['sequential_run'] == sequential_run
  assert len(answers['answers']) == 2
  with open(os.path.join(directory, judged.JUDGEMENTS_FILE)) as f:
    lines = [json.loads(line) for line in f]
  assert len(lines) == 6 and sum(l['outcome'] == 'invalid' for l in lines) == 1
  store = sampling.SampleStore(os.path.join(directory, rounds.SAMPLES_FILE))
  samples = {(s.prompt_id, s.index): s for ss in store.samples().values() for s in ss}
  wins = {}
  for line in lines:
    if line['outcome'] == 'judged':
      text, base = samples[line['prompt_id'], line['index']].text, answers['answers'][
          line['prompt_id']]['text']
      want = 0.7 if len(text) < len(base) else 0.3 if len(text) > len(base) else 0.5
      assert line['win'] == pytest.approx(want)
      wins[line['prompt_id'], line['index']] = line['win']
  summary = result.rounds[0].summary
  assert summary['unrated'] == 1 and summary['samples'] == 6
  assert summary['mean_quality'] == pytest.approx(np.mean(list(wins.values())))
  for pair in rounds.read_pairs(directory):
    assert pair['chosen_quality'] == pytest.approx(wins[pair['prompt_id'], pair['chosen_index']])
    # po.sequential_run is the speedup baseline too: its answer's tokens over the rounds
    for side in ('chosen', 'rejected'):
      sample = samples[pair['prompt_id'], pair[f'{side}_index']]
      assert pair[f'{side}_speedup'] == pytest.approx((1000 + pair['prompt_id']) / sample.steps)
  marker = rounds.read_marker(directory, 'scored')
  assert marker['settings']['quality'] == 'judge'
  assert marker['judge'] == {'judged': 5, 'invalid': 1, 'no_sequential_answer': 0}
