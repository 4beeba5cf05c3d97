"""Bad input fails early with an error that names the key, the value and what fits."""

import dataclasses
import json
import os
import subprocess
import sys
import types

import jax
import pytest

from pasta_jax import config as config_lib
from pasta_jax.config import ConfigError
from pasta_jax.interpreter import InterpreterConfig
from pasta_jax.models import checkpoint as model_checkpoint
from pasta_jax.models import config as model_config_lib
from pasta_jax.models import transformer
from pasta_jax.training import loop
from pasta_jax.training import partitioning
from pasta_jax.training import step as step_lib

from configs import synth
from tests.training.conftest import ROOT
from tests.training.conftest import tiny_config


def _mesh(data=1, fsdp=1, tensor=1):
  return types.SimpleNamespace(shape={'data': data, 'fsdp': fsdp, 'tensor': tensor})


def test_unknown_keys_are_named_with_a_suggestion():
  config = synth.get_config('tiny')
  config.optimizer.warmup = 10
  with pytest.raises(ConfigError, match=r"unknown config key config\.optimizer\.warmup; "
                     r"did you mean 'warmup_steps'\? \(the keys of config\.optimizer are "
                     r"\['b1', 'b2', .*'lr', "):
    config_lib.resolve(config)
  config = synth.get_config('tiny')
  config.optimizer.learning_rate = 1e-3
  with pytest.raises(ConfigError, match=r"key config\.optimizer\.learning_rate \(the keys"):
    config_lib.resolve(config)
  config = synth.get_config('tiny')
  config.trainer = {'steps': 3}
  with pytest.raises(ConfigError, match=r'unknown config key config\.trainer; did you '
                     r"mean 'train'\?"):
    config_lib.resolve(config)
  config = synth.get_config('tiny')
  config.model.n_layers = 2
  with pytest.raises(ConfigError, match=r'config\.model\.n_layers.*num_layers'):
    config_lib.resolve(config)
  config = synth.get_config('tiny')
  del config.model['hidden_dim']
  with pytest.raises(ConfigError, match=r"config\.model lacks the fields \['hidden_dim'\]"):
    config_lib.resolve(config)


def test_the_interpreter_section_is_checked_and_defaults_fill_in():
  # The interpreter section is InterpreterConfig's fields (it used to be kept
  # as given, so a misspelt key there was silently dropped).
  config = synth.get_config('tiny')
  config.interpreter.anything = 'kept'
  with pytest.raises(ConfigError, match=r"unknown config key config\.interpreter\.anything \(the "
                     r"keys of config\.interpreter are \['cache_size', 'cache_stages', "):
    config_lib.resolve(config)
  resolved = config_lib.resolve(synth.get_config('tiny'))
  assert set(resolved.interpreter) == {f.name for f in dataclasses.fields(
      InterpreterConfig)} - {'mode', 'position_strategy'}
  assert resolved.interpreter.slots == 8 and resolved.interpreter.max_steps == 512
  assert resolved.interpreter.max_thread_tokens is None
  assert resolved.data.prefetch == config_lib.defaults().data.prefetch
  assert resolved.optimizer.eps == 1e-8 and resolved.init.checkpoint == ''
  assert config_lib.resolve(resolved).to_dict() == resolved.to_dict()


def test_a_jsonl_dataset_name_that_is_not_a_directory_name(tfds_dir, no_compile, tmp_path):
  config = tiny_config(tfds_dir, **{'data.name': 'pasta_jsonl', 'data.jsonl_name': 'a/../b',
                                    'data.jsonl_paths': {'train': 'x.jsonl'}})
  with pytest.raises(ConfigError, match=r"config\.data\.jsonl_name='a/\.\./b': expected "
                     'letters, digits'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))


@pytest.mark.parametrize('dotted, value, message', [
    ('optimizer.lr', 'fast', r"config\.optimizer\.lr='fast': expected a float"),
    ('optimizer.lr', 0.0, r'config\.optimizer\.lr=0\.0: expected a float > 0'),
    ('optimizer.schedule', 'exp', r"optimizer\.schedule='exp': expected one of \('linear'"),
    ('optimizer.grad_accum_steps', 0, r'grad_accum_steps=0: expected an int >= 1'),
    ('data.mode', 'parallel', r"config\.data\.mode='parallel': expected 'pasta' or"),
    ('data.name', 'c4', r"config\.data\.name='c4'"),
    ('data.position_strategy', 'bogus', r"config\.data\.position_strategy='bogus': expected "
     r"one of \['predicted', 'oracle', 'fixed'\]"),
    ('data.fixed_reserve', -1, r'config\.data\.fixed_reserve=-1: expected an int >= 0'),
    ('data.max_too_long', 1.5, r'config\.data\.max_too_long=1\.5: expected a fraction in '
     r'\[0, 1\]'),
    ('data.length_check', -1, r'config\.data\.length_check=-1: expected an int >= 0'),
    ('train.num_steps', 0, r'train\.num_epochs=0\.0: expected a number > 0 when '
     r'train\.num_steps is 0'),
    ('mesh.shape', (2, -1, -1), r'mesh\.shape=\(2, -1, -1\): expected \(data, fsdp, tensor\)'),
    ('mesh.rules', (('batch',),), r'config\.mesh\.rules=.*expected pairs'),
    ('init.format', 'hf', r"init\.format='hf': expected one of \('converted', 'orbax'\)"),
    ('interpreter.slotz', 4, r"unknown config key config\.interpreter\.slotz; did you mean "
     r"'slots'\?"),
    ('interpreter.slots', 1, r'config\.interpreter\.slots=1: PASTA decoding needs at least 2 '
     'slots'),
    ('interpreter.top_k', 'all', r"config\.interpreter\.top_k='all': expected a int"),
    ('interpreter.cache_stages', (64, 32), r'config\.interpreter\.cache_stages=\(64, 32\): '
     'cache_stages must be strictly increasing'),
    ('interpreter.max_thread_tokens', -1, r'config\.interpreter\.max_thread_tokens=-1: '
     'max_thread_tokens must be >= 0'),
    ('model.num_kv_heads', 3, r'config\.model: .*num_heads \(4\) must be a multiple of '
     r'num_kv_heads \(3\)'),
])
def test_bad_values(tfds_dir, dotted, value, message, no_compile, tmp_path):
  config = tiny_config(tfds_dir, **{dotted: value})
  with pytest.raises(ConfigError, match=message):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # failed before touching the workdir


def test_mesh_shapes():
  assert partitioning.mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert partitioning.mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ConfigError, match=r'mesh\.shape=\(3, 1, 1\) needs 3 devices; there '
                     r'are 8'):
    partitioning.mesh_shape((3, 1, 1), 8)
  with pytest.raises(ConfigError, match=r'the fixed axes \(3 devices\) do not divide the '
                     r'8 devices'):
    partitioning.mesh_shape((3, -1, 1), 8)
  with pytest.raises(ConfigError, match='three ints >= 1'):
    partitioning.mesh_shape((2, 0, 4), 8)


def test_impossible_mesh_end_to_end(tfds_dir, no_compile, tmp_path):
  config = tiny_config(tfds_dir)
  config.mesh.shape = (2, 2, 1)
  with pytest.raises(ConfigError, match=r'needs 4 devices; there are 1'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))


def test_batch_must_divide_over_hosts_shards_and_micro_batches():
  axes = partitioning.DEFAULT_BATCH_AXES
  check = lambda b, mesh, **kw: partitioning.check_batch(
      b, mesh=mesh, batch_axes=axes, **{'process_count': 1, **kw})
  check(8, _mesh(2, 2, 2))
  check(16, _mesh(2, 2, 1), process_count=4, grad_accum_steps=4)
  with pytest.raises(ConfigError, match=r'data\.batch_size=6 is not divisible by the batch '
                     r'shards of the mesh \(data=2 x fsdp=2: 4\); use a multiple of 4'):
    check(6, _mesh(2, 2, 2))
  with pytest.raises(ConfigError, match=r'data\.batch_size=6 is not divisible by the 4 hosts'):
    check(6, _mesh(4, 1, 1), process_count=4)
  with pytest.raises(ConfigError, match=r'split over 2 shards \(data=1 x fsdp=2\) but there '
                     'are 4 hosts'):
    check(8, _mesh(1, 2, 4), process_count=4)
  with pytest.raises(ConfigError, match=r'grad_accum_steps=3 micro-batches .*multiple of 6'):
    check(8, _mesh(2, 1, 1), grad_accum_steps=3)
  assert axes == tuple(dict(partitioning.model_sharding.default_rules(
      model_config_lib.get_config('tiny'), partitioning.make_mesh((1, 1, 1))))['batch'])
  assert partitioning.batch_axes([('batch', 'data')]) == ('data',)


def test_accumulation_batch_error_end_to_end(tfds_dir, no_compile, tmp_path):
  config = tiny_config(tfds_dir, **{'optimizer.grad_accum_steps': 3})
  with pytest.raises(ConfigError, match=r'config\.data\.batch_size=8 cannot be cut into '
                     r'optimizer\.grad_accum_steps=3'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))


def test_rules_that_do_not_divide_the_model():
  config = model_config_lib.get_config('tiny')
  with pytest.raises(ConfigError, match=r"layer_0/attn/q_einsum/w 'heads'=4 over "
                     r"\('tensor',\) \(3\)"):
    partitioning.check_params(config, _mesh(1, 1, 3), [('heads', 'tensor')])
  with pytest.raises(ConfigError, match=r"names mesh axis 'model'"):
    config_lib.rules_for(config, partitioning.make_mesh((1, 1, 1)), [('mlp', 'model')])


def _write_jsonl(path, n=6):
  rows = [{'prompt': f'count from {i} to {i + 2}',
           'annotated_response': f'answer: {i} {i + 1} {i + 2}.'} for i in range(n)]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


def test_missing_data_tokenizer_and_checkpoints(tfds_dir, tmp_path, no_compile):
  def jsonl_config(**paths):
    config = tiny_config(tfds_dir)
    config.data.name = 'pasta_jsonl'
    config.data.jsonl_name = 'errors'
    config.data.jsonl_paths = paths
    config.data.data_dir = str(tmp_path / 'tfds')
    return config

  missing = str(tmp_path / 'nowhere.jsonl')
  with pytest.raises(ConfigError, match=r"config\.data\.jsonl_paths\['train'\]: JSONL file "
                     r".*nowhere\.jsonl' does not exist"):
    loop.train_and_evaluate(jsonl_config(train=missing), str(tmp_path / 'w'))
  train = _write_jsonl(tmp_path / 'train.jsonl')
  with pytest.raises(ConfigError, match=r"has no split\(s\) \['validation'\]; it has "
                     r"\['train'\]"):
    loop.train_and_evaluate(jsonl_config(train=train), str(tmp_path / 'w'))
  config = jsonl_config(train=train)
  config.data.name = 'pasta_jsonl'
  del config.data['jsonl_paths']
  with pytest.raises(ConfigError, match=r'config\.data\.jsonl_paths=None: expected a value'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))

  config = tiny_config(tfds_dir)
  config.tokenizer.path = str(tmp_path / 'gemma.model')
  with pytest.raises(ConfigError, match=r"config\.tokenizer\.path=.*gemma\.model': no such "
                     'file'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))

  config = tiny_config(tfds_dir)
  config.init.checkpoint = str(tmp_path / 'ckpt')
  with pytest.raises(ConfigError, match=r"config\.init\.checkpoint=.*ckpt': .*ckpt does not "
                     r"exist \(expected a directory written by scripts/convert_hf_checkpoint"):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))


def test_checkpoint_of_another_architecture(tfds_dir, tmp_path, monkeypatch):
  other = model_config_lib.get_config('tiny', vocab_size=400, num_layers=2)
  model_checkpoint.save_converted(str(tmp_path / 'ckpt'), transformer.init_params(
      other, jax.random.key(0)), other)
  config = tiny_config(tfds_dir)
  config.init.checkpoint = str(tmp_path / 'ckpt')
  monkeypatch.setattr(step_lib, 'jit_steps', None)
  with pytest.raises(ConfigError, match=r'holds another architecture than config\.model: '
                     r'num_layers: checkpoint 2, config 4; vocab_size: checkpoint 400'):
    loop.train_and_evaluate(config, str(tmp_path / 'w'))


def test_resuming_a_run_of_another_model(tfds_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'w')
  loop.train_and_evaluate(tiny_config(tfds_dir, **{'train.num_steps': 1}), workdir)
  monkeypatch.setattr(step_lib, 'jit_steps', None)
  with pytest.raises(ConfigError, match=r'holds a run of another model than config\.model: '
                     r'model\.num_layers: 4 -> 2'):
    loop.train_and_evaluate(tiny_config(tfds_dir, **{'model.num_layers': 2}), workdir)


def test_command_line_errors(tfds_dir, tmp_path):
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  run = lambda *args: subprocess.run(
      [sys.executable, '-m', 'pasta_jax.train', *args], capture_output=True, text=True,
      timeout=300, cwd=ROOT, env=env)
  result = run()
  assert result.returncode != 0 and '--config and --workdir are required' in result.stderr
  result = run('--config', 'configs/synth.py:tiny', '--workdir', str(tmp_path / 'w'),
               '--config.optimizer.learning_rate=1')
  assert result.returncode != 0 and 'learning_rate' in result.stderr
  result = run('--config', 'configs/synth.py:tiny', '--workdir', str(tmp_path / 'w'),
               f'--config.data.data_dir={tfds_dir}', '--config.mesh.shape=(4,1,1)')
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().endswith(
      'error: config.mesh.shape=(4, 1, 1) needs 4 devices; there are 1 (use -1 on one axis '
      'to take the rest)')
  # A misspelt interpreter key in a config file, and a bad interpreter value.
  typo = tmp_path / 'typo.py'
  typo.write_text('from configs import synth\n\n\ndef get_config(arg):\n'
                  '  config = synth.get_config(arg)\n  config.interpreter.max_step = 64\n'
                  '  return config\n')
  result = run('--config', f'{typo}:tiny', '--workdir', str(tmp_path / 'w'))
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().endswith(
      "error: unknown config key config.interpreter.max_step; did you mean 'max_steps'? (the "
      f'keys of config.interpreter are {sorted(config_lib.interpreter_fields())})')
  result = run('--config', 'configs/synth.py:tiny', '--workdir', str(tmp_path / 'w'),
               '--config.interpreter.slots=0')
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().endswith(
      'error: config.interpreter.slots=0: slots must be >= 1, got 0')
