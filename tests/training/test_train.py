"""End to end on the tiny synthetic data: learning, outputs, resume, load_run."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from pasta_jax import config as config_lib
from pasta_jax import errors
from pasta_jax import runs
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import sources as sources_lib
from pasta_jax.models import checkpoint as model_checkpoint
from pasta_jax.training import checkpointing
from pasta_jax.training import inputs
from pasta_jax.training import loop
from pasta_jax.training import step as step_lib

from tests.training.conftest import RESUMABLE
from tests.training.conftest import tiny_config

# One worker runs this module, so its module fixtures are made once (setup.cfg).
pytestmark = pytest.mark.xdist_group('train')


def _metrics(workdir, split):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row for row in map(json.loads, f) if row['split'] == split]


def _assert_trees_close(a, b, **tol):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=str(path), **tol)


@pytest.fixture(scope='module')
def trained(tfds_dir, tmp_path_factory):
  """configs/synth.py:tiny, 40 steps (PASTA mode)."""
  workdir = str(tmp_path_factory.mktemp('run') / 'tiny')
  result = loop.train_and_evaluate(tiny_config(tfds_dir), workdir)
  return workdir, result


def test_tiny_run_learns(trained):
  workdir, result = trained
  train = _metrics(workdir, 'train')
  evals = _metrics(workdir, 'eval')
  assert [r['step'] for r in train] == list(range(5, 41, 5))
  assert [r['step'] for r in evals] == [20, 40]
  # Uniform guessing over 512 ids costs ln 512 = 6.2 nats; the first logged
  # window is near it, 40 steps later the loss is far below.
  assert train[0]['loss'] > 4.5
  assert train[-1]['loss'] < 2.0 and result.eval['loss'] < 2.0
  assert result.eval['loss'] < 0.4 * train[0]['loss']
  assert result.eval['accuracy'] > 0.45
  for kind in ('main_', 'async_'):
    assert result.eval[f'{kind}targets'] > 100
    assert result.eval[f'{kind}loss'] < 2.5
  assert result.eval['main_targets'] + result.eval['async_targets'] == \
      result.eval['targets']
  assert all(r['tokens_per_s'] > 0 and 0 < r['lr'] <= 3e-3 for r in train)
  assert result.step == 40 and result.stopped_by is None


def test_run_directory_is_self_contained(trained):
  workdir, _ = trained
  names = set(os.listdir(workdir))
  assert {'config.json', 'tokenizer.model', 'metrics.jsonl', 'checkpoints'} <= names
  assert any(n.startswith('events.out.tfevents') for n in names)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['20', '40']
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['vocab_size'] == tokenizer_lib.Tokenizer.load(
      os.path.join(workdir, 'tokenizer.model')).vocab_size
  assert saved['optimizer']['lr'] == 3e-3 and saved['data']['mode'] == 'pasta'
  # The interpreter section: every field, the config file's values over the defaults.
  assert saved['interpreter'] == runs.config_to_json(config_lib.interpreter_fields()) | {
      'slots': 8, 'cache_size': 448}


def test_load_run_restores_the_trained_params(trained, tfds_dir):
  workdir, result = trained
  run = runs.load_run(workdir)
  assert run.step == 40
  assert run.model_config == config_lib.model_config(run.config)
  assert run.tokenizer == tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.model'))
  for x, y in zip(jax.tree.leaves(run.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The saved params also read through the model's own checkpoint loader.
  params = model_checkpoint.load_params(
      os.path.join(workdir, 'checkpoints', '40', 'params'), run.model_config)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  earlier = runs.load_run(workdir, step=20)
  assert earlier.step == 20
  assert not np.array_equal(earlier.params['final_norm']['scale'],
                            run.params['final_norm']['scale'])
  # The restored params reproduce the logged validation loss.
  config = run.config
  source = sources_lib.data_sources(config.data, ['validation'])['validation']
  batches = inputs.eval_batches(config, source, run.tokenizer, rows=8, process_index=0,
                                process_count=1)
  total = None
  for batch in batches:
    total = step_lib.add_sums(total, jax.jit(step_lib.eval_step, static_argnames='model_config')(
        run.params, batch, model_config=run.model_config))
  assert step_lib.summarize(jax.device_get(total))['loss'] == pytest.approx(
      result.eval['loss'], rel=1e-5)
  with pytest.raises(errors.CheckpointError,
                     match=r'no checkpoint of step 7; it has steps \[20, 40\]'):
    runs.load_run(workdir, step=7)
  with pytest.raises(errors.CheckpointError, match='not a training run directory'):
    runs.load_run(os.path.dirname(workdir))


def test_finished_run_is_not_trained_again(trained):
  workdir, result = trained
  again = loop.train_and_evaluate(checkpointing_config(workdir), workdir)
  assert again.step == 40 and again.eval['loss'] == pytest.approx(result.eval['loss'])
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['20', '40']


def checkpointing_config(workdir):
  import ml_collections
  with open(os.path.join(workdir, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(interrupted, tfds_dir, tmp_path):
  straight, stopped, root = interrupted
  assert stopped.step == 6 and stopped.stopped_by == 15 and stopped.eval == {}
  assert sorted(os.listdir(root / 'stopped' / 'checkpoints')) == ['4', '6']
  workdir = tmp_path / 'resumed'
  shutil.copytree(root / 'stopped', workdir)
  resumed = loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE), str(workdir))
  assert resumed.step == 10 and straight.step == 10
  _assert_trees_close(resumed.state, straight.state, rtol=1e-6, atol=1e-7)
  assert resumed.eval['loss'] == pytest.approx(straight.eval['loss'], rel=1e-6)
  # The logged training losses of steps 7..10 agree too.
  tail = lambda d: [(r['step'], r['loss']) for r in _metrics(d, 'train') if r['step'] > 6]
  assert len(tail(workdir)) == 2
  np.testing.assert_allclose(tail(workdir), tail(root / 'straight'), rtol=1e-6)


def test_data_state_is_saved_per_host_and_maps_onto_another_host_count(interrupted,
                                                                       tmp_path):
  _, _, root = interrupted
  data = root / 'stopped' / 'checkpoints' / '6' / 'data'
  assert [n for n in os.listdir(data) if n.endswith('.json')] == ['process_0-of-1.json']
  saved = json.loads((data / 'process_0-of-1.json').read_text())
  assert saved['process_count'] == 1 and saved['seed'] == 0
  # Saved by two hosts, resumed by one: host 0's state (the pipeline maps it).
  states = {}
  for host in range(2):
    states[host, 2] = str(tmp_path / f'process_{host}-of-2.json')
    with open(states[host, 2], 'w') as f:
      json.dump({**saved, 'process_index': host, 'process_count': 2}, f)
  assert checkpointing._data_state_files(str(tmp_path)) == states
  assert checkpointing._other_layout_state(states)['process_index'] == 0


def test_a_checkpoint_of_the_pre_grain_pipeline_resumes(interrupted, tfds_dir, tmp_path):
  """The older pipeline saved one JSON item with every host's state (version 1):
  training resumes at its epoch and position and runs to the end."""
  _, _, root = interrupted
  workdir = tmp_path / 'legacy'
  shutil.copytree(root / 'stopped', workdir)
  data = workdir / 'checkpoints' / '6' / 'data'
  saved = json.loads((data / 'process_0-of-1.json').read_text())
  shutil.rmtree(data)
  data.mkdir()
  legacy = {'process_count': 1, 'hosts': [dict(saved, version=1)]}
  (data / 'metadata').write_text(json.dumps(legacy))  # orbax's JsonSave file
  assert checkpointing._legacy_state(legacy, 6) == dict(saved, version=2)
  with pytest.raises(ValueError, match='holds no input-pipeline state'):
    checkpointing._legacy_state({}, 6)
  resumed = loop.train_and_evaluate(tiny_config(tfds_dir, **RESUMABLE), str(workdir))
  assert resumed.step == 10 and np.isfinite(resumed.eval['loss'])


def test_sequential_mode_trains_on_stripped_documents(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, 'tiny_sequential', **{'train.num_steps': 4,
                                                       'eval.num_batches': 2})
  result = loop.train_and_evaluate(config, str(tmp_path / 'seq'))
  assert result.step == 4
  # No async threads in the baseline's documents.
  assert result.eval['async_targets'] == 0 and result.eval['main_targets'] > 0
  tok = runs.load_tokenizer(str(tmp_path / 'seq'))
  source = sources_lib.data_sources(config.data, ['train'])['train']
  batch = next(inputs.batches(config_lib.resolve(config), source, tok, rows=2, train=True,
                              process_index=0, process_count=1))
  assert not np.isin(batch['tokens'], tok.control.tag_ids).any()
  assert (batch['thread'] == 0).all()
