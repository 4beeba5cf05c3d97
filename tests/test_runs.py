"""A run's decoder settings (`Run.interpreter_config`, `Interpreter.from_run`), and
inference loading runs without the training package."""

import dataclasses
import os
import subprocess
import sys

import pytest

from pasta_jax import config as config_lib
from pasta_jax import comparison
from pasta_jax import models
from pasta_jax import runs
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.settings import Mode, PositionStrategy

from configs import synth
from tests import fixtures

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))

# A value other than the synth config's for every InterpreterConfig field.
OVERRIDES = {
    'mode': 'sequential', 'slots': 4, 'max_threads': 3, 'cache_size': 300, 'max_steps': 100,
    'max_topic_tokens': 5, 'max_thread_tokens': 50,
    'position_strategy': PositionStrategy('fixed', 7), 'top_k': 5, 'use_top_p': True,
    'record_logits': True, 'hoist_layouts': False, 'cache_stages': (64,),
    'round_widths': (1, 8), 'rounds_per_check': 2,
}


@pytest.fixture(scope='module')
def tok():
  return fixtures.synthetic_tokenizer(100)


def _run(tok, preset='tiny', **fields) -> runs.Run:
  """A Run of configs/synth.py:PRESET with 'section.key' fields set (abstract params)."""
  config = synth.get_config(preset)
  for dotted, value in fields.items():
    section, key = dotted.split('.')
    config[section][key] = value
  model_config = models.get_config('tiny', vocab_size=tok.vocab_size)
  return runs.Run(config=config_lib.resolve(config), model_config=model_config,
                  params=models.param_shapes(model_config), tokenizer=tok, step=0, workdir='')


@pytest.mark.parametrize('modules', [
    ('pasta_jax.decode',),
    ('pasta_jax.evaluate', 'pasta_jax.comparison', 'pasta_jax.data.sources', 'pasta_jax.runs',
     'pasta_jax.interpreter'),
])
def test_inference_does_not_import_training(modules):
  code = ('import importlib, sys\n'
          f'for name in {modules!r}:\n  importlib.import_module(name)\n'
          "print(sorted(m for m in sys.modules if m.startswith('pasta_jax.training')))\n")
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'


def test_the_config_sets_the_interpreter(tok):
  run = _run(tok, **{'interpreter.max_steps': 77, 'interpreter.cache_stages': (64, 128),
                     'data.prompt_template': 'Q: {prompt}\n'})
  interp = Interpreter.from_run(run)
  assert interp.config == run.interpreter_config() == InterpreterConfig(
      slots=8, cache_size=448, max_steps=77, cache_stages=(64, 128))
  assert interp.template == run.prompt_template == 'Q: {prompt}\n'
  assert run.mode is Mode.PASTA


def test_every_interpreter_field_can_be_overridden(tok):
  assert set(OVERRIDES) == {f.name for f in dataclasses.fields(InterpreterConfig)}
  run = _run(tok)
  for name, value in OVERRIDES.items():
    config = Interpreter.from_run(run, **{name: value}).config
    assert getattr(config, name) == value, name
    assert config == run.interpreter_config(**{name: value})
    others = {f.name for f in dataclasses.fields(config)} - {name, 'slots'}
    assert all(getattr(config, k) == getattr(run.interpreter_config(), k) for k in others)
  with pytest.raises(ValueError, match=r"unknown InterpreterConfig fields \['slotz'\]; "
                     r"fields: \['cache_size', "):
    Interpreter.from_run(run, slotz=4)


def test_a_sequential_run_decodes_with_one_slot(tok):
  run = _run(tok, 'tiny_sequential')
  assert run.mode is Mode.SEQUENTIAL and run.config.interpreter.slots == 8
  config = Interpreter.from_run(run, max_steps=64).config
  assert config.sequential and config.slots == 1 and config.max_steps == 64


def test_a_run_trained_with_oracle_positions_decodes_with_predicted(tok):
  run = _run(tok, **{'data.position_strategy': 'oracle', 'data.fixed_reserve': 9})
  assert run.position_strategy == PositionStrategy('oracle', 9)
  interp = Interpreter.from_run(run)
  assert interp.config.position_strategy == PositionStrategy('predicted', 9)
  assert comparison.position_setting(run, interp) == 'trained oracle, decoded predicted'
