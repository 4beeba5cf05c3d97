"""The benchmark helpers: interleaved timing, the forced decode's check, model flags."""

import pytest

from pasta_jax import benchmarking
from pasta_jax import errors
from pasta_jax.interpreter import results as results_lib


def test_interleaved_keeps_each_minimum_after_an_untimed_warm_up():
  calls = []

  def returning(name, values):
    values = iter(values)

    def fn():
      calls.append(name)
      return next(values)
    return fn

  best = benchmarking.interleaved(
      {'a': returning('a', [0.0, 3.0, 1.0, 2.0]),
       'b': returning('b', [(0.0, 0.0), (2.0, 5.0), (4.0, 1.0), (3.0, 3.0)])},
      runs=3, own_timing=True)
  # The warm-up's zeros are not kept; tuple parts are minimised apart.
  assert best == {'a': 1.0, 'b': (2.0, 1.0)}
  assert calls == ['a', 'b'] * 4  # in turn, pass after pass

  timed = benchmarking.interleaved({'x': lambda: 'ignored'}, runs=2)
  assert isinstance(timed['x'], float) and timed['x'] >= 0


def _result(ids, status='done'):
  return results_lib.Result(prompt=None, status=status, ids=tuple(ids), document=None,
                            text='', threads=(), steps=len(ids), total_tokens=len(ids))


def test_check_forced_fails_on_other_tokens_and_on_budgets():
  benchmarking.check_forced(_result([5, 6, 1]), [5, 6, 1], 0, 'PASTA')
  with pytest.raises(errors.DataError, match=r'prompt 3, PASTA .* first difference at token 1'):
    benchmarking.check_forced(_result([5, 7, 1]), [5, 6, 1], 3, 'PASTA')
  with pytest.raises(errors.DataError, match='2 tokens for 3'):
    benchmarking.check_forced(_result([5, 6]), [5, 6, 1], 0, 'sequential')
  for status in ('budget', 'cache_full'):
    with pytest.raises(errors.UsageError, match='raise --cache_size or --max_steps'):
      benchmarking.check_forced(_result([5], status), [5, 6, 1], 0, 'sequential')


@pytest.fixture(scope='module')
def tok():
  return benchmarking.synthetic_tokenizer(200, vocab_size=400)


@pytest.mark.parametrize('preset,kwargs,message', [
    ('huge', {}, "unknown model preset 'huge'"),
    ('tiny', {'vocab_size': 300}, 'fewer logits than'),
    ('tiny', {'dtype': 'float77'}, 'not a dtype'),
])
def test_random_model_rejects_bad_settings(tok, preset, kwargs, message):
  with pytest.raises(errors.UsageError, match=message):
    benchmarking.random_model(preset, tok, **kwargs)


def test_forced_workload_cycles_the_families_and_ends_its_answers(tok):
  workload = benchmarking.forced_workload(tok, 8)
  families = [p.example.family for p in workload]
  assert families[:4] == families[4:] and len(set(families)) == 4
  for prompt in workload:
    assert prompt.prompt[0] == tok.bos_id
    assert prompt.response[-1] == prompt.plain[-1] == tok.eos_id
    threads = prompt.threads(tok.control, sequential=False)
    # Every response token is sampled by a thread but the <async> of each body.
    assert sum(map(len, threads)) == len(prompt.response) - (len(threads) - 1)
    assert all(t[-1] == tok.control.async_close for t in threads[1:])
    (plain,) = prompt.threads(tok.control, sequential=True)
    assert plain.tolist() == prompt.plain.tolist()
