"""Bad requests: sampling settings out of range are refused; an over-long prompt
is reported on its own result while the rest of its batch decodes unchanged."""

import dataclasses

import numpy as np
import pytest

from pasta_jax.interpreter import Interpreter, InterpreterConfig, PromptTooLongError
from pasta_jax.interpreter import sampling


@pytest.mark.parametrize('kwargs,message', [
    (dict(temperature=-1.0), r'temperature=-1.0: expected a finite number >= 0'),
    (dict(temperature=float('nan')), r'temperature=nan: expected a finite number'),
    (dict(temperature=float('inf')), r'temperature=inf: expected a finite number'),
    (dict(temperature=[0.5, -0.1]), r'temperature=-0.1: '),
    (dict(top_p=0.0), r'top_p=0.0: expected a number in \(0, 1\]'),
    (dict(top_p=1.5), r'top_p=1.5: expected a number in \(0, 1\]'),
    (dict(top_p=float('nan')), r'top_p=nan: '),
])
def test_sampling_settings_out_of_range_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=f'^{message}'):
    sampling.check_settings(**kwargs)


def test_sampling_settings_in_range_pass():
  sampling.check_settings(temperature=0.0, top_p=1.0)
  sampling.check_settings(temperature=[0.0, 2.5], top_p=[1e-6, 0.9])


def test_requests_are_checked_before_any_work(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(slots=2, cache_size=64))
  with pytest.raises(ValueError, match='temperature=-1.0'):
    interp.prepare(['a'], temperature=-1.0)
  with pytest.raises(ValueError, match='top_p=0.0'):
    interp.generate(['a'], top_p=0.0)
  assert interp.compilations == 0
  # A Batch cannot hold an over-long prompt: prepare names its length and the limit.
  with pytest.raises(PromptTooLongError, match='has 70 tokens, more than the 64'):
    interp.prepare([np.ones(70, np.int32)])


def test_an_over_long_prompt_does_not_stop_the_others(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=2, max_threads=2, cache_size=64, max_steps=10))
  assert interp.max_prompt_tokens == 64
  long_prompt = 'word ' * 80
  prompts = ['spell owl', long_prompt, 'sort: 3 1 2']
  results = interp.generate(prompts)
  alone = interp.generate([prompts[0], prompts[2]])
  assert interp.compilations == 1  # the same program (batch 2) both times
  bad = results[1]
  assert bad.prompt == long_prompt and bad.status == 'prompt_too_long'
  assert bad.prompt_tokens > 64 and bad.ids == () and bad.total_tokens == 0
  assert bad.detail == (
      f'the prompt has {bad.prompt_tokens} tokens, more than the 64 this interpreter takes '
      '(its largest prompt bucket within cache_size=64); a cache_size of at least 128 plus '
      'room for the answer takes it (--cache_size, or the config key '
      'interpreter.cache_size)')
  for got, want in zip([results[0], results[2]], alone):
    assert got.status != 'prompt_too_long' and got.prompt_tokens > 0
    assert got == want
  # Sampled requests keep their seeds: the same tokens as without the long prompt.
  ids = interp.encode_prompts(prompts)
  sampled = interp.generate_ids(ids, temperature=1.0, seeds=[5, 6, 7])
  sampled_alone = interp.generate_ids([ids[0], ids[2]], temperature=1.0, seeds=[5, 7])
  assert [r.status for r in sampled].count('prompt_too_long') == 1
  assert [sampled[0], sampled[2]] == sampled_alone
  # Timed generation (the evaluation's) reports it with zero seconds.
  result, timing = interp.generate_timed(ids[1])
  assert result.status == 'prompt_too_long' and timing.seconds == 0.0
  assert dataclasses.replace(result, prompt=long_prompt) == bad
