"""Stage 2 sampling: per-request seeds (the same samples in any batch, size or
order), too-long prompts, and the chunk store a killed run resumes from.

Run as a script (by `test_sampling_is_the_same_sharded`), it samples on a
two-device mesh and compares with one device.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from pasta_jax import models
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.preference import sampling
from tests import fixtures

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = pytest.mark.slow

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
PROMPTS = ['one', 'two prompts', 'a third, longer prompt', 'four', 'five five']
IDS = ['p0', 'p1', 2, 'p3', 'p4']  # ints and strings both work
N = 3


def build(mesh=None):
  """A tiny random-weight model whose logit bias makes it write tags and stop."""
  tok = fixtures.synthetic_tokenizer(300)
  config = models.get_config('tiny', vocab_size=tok.vocab_size, num_layers=2)
  params = models.init_params(config, jax.random.key(0))
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=4, max_threads=4, cache_size=96, max_steps=24, max_topic_tokens=2,
      round_widths=(4,)), mesh=mesh)
  c = tok.control
  bias = {c.promise: 4.0, c.sync: 3.0, c.async_close: 3.0, c.eos: 3.0,
          **{t: 3.0 for t in c.lengths}}
  return interp, bias


_fast_compiles = pytest.fixture(scope='module', autouse=True)(fixtures.fast_compiles)


@pytest.fixture(scope='module')
def setup():
  return build()


@pytest.fixture(scope='module')
def reference(setup):
  """The samples of PROMPTS (plus one too long), batch 4."""
  interp, bias = setup
  long_prompt = ' '.join(['word'] * 200)
  return sampling.sample_chunk(interp, PROMPTS + [long_prompt], IDS + ['long'], N, seed=0,
                               batch_size=4, logit_bias=bias)


def by_key(samples):
  return {(s.prompt_id, s.index): s for s in samples}


def test_request_seed_is_a_stable_hash():
  seeds = {sampling.request_seed(s, p, i) for s in (0, 1) for p in ('a', 'b') for i in (0, 1)}
  assert len(seeds) == 8 and all(0 <= s < 2**32 for s in seeds)
  assert sampling.request_seed(3, 'a', 1) == sampling.request_seed(3, 'a', 1)
  assert sampling.request_seed(3, 7, 1) == sampling.request_seed(3, '7', 1)
  assert sampling.request_seed(0, 'p0', 0) == 4194075965  # fixed across versions


def test_chunk_samples_and_counts(reference, setup):
  interp, _ = setup
  chunk = reference
  assert [(s.prompt_id, s.index) for s in chunk.samples] == [
      (p, i) for p in IDS for i in range(N)]
  assert chunk.stats.samples == 15 and chunk.stats.prompts == 6
  assert chunk.stats.prompt_too_long == 1 and chunk.stats.calls == 4
  assert chunk.stats.padding == 4 * 4 - 15
  assert sum(chunk.stats.statuses.values()) == 15
  assert chunk.stats.samples_per_second > 0
  # The too-long prompt is reported with what would fit, and never sampled.
  assert list(chunk.prompt_too_long) == ['long']
  assert 'more than the 64' in chunk.prompt_too_long['long']
  for s in chunk.samples:
    assert s.seed == sampling.request_seed(0, s.prompt_id, s.index)
    text_tokens = len(interp.tokenizer.encode_text(s.text))
    assert s.stripped_tokens == text_tokens + 1 and s.steps <= 24
  # Temperature 1 on random weights: varied samples, some parallel, some finished.
  for p in IDS:
    assert len({s.ids for s in chunk.samples if s.prompt_id == p}) > 1
  assert any(s.threads > 1 for s in chunk.samples)
  assert any(s.status == 'done' and s.annotated is not None for s in chunk.samples)


def test_samples_do_not_depend_on_batch_size_or_order(reference, setup):
  interp, bias = setup
  order = [3, 0, 4, 2, 1]
  other = sampling.sample_chunk(interp, [PROMPTS[k] for k in order], [IDS[k] for k in order],
                                N, seed=0, batch_size=7, logit_bias=bias)
  assert other.stats.calls == 3 and other.stats.padding == 6
  assert by_key(other.samples) == by_key(reference.samples)
  # One prompt alone, in a batch of its own.
  alone = sampling.sample_chunk(interp, [PROMPTS[2]], [IDS[2]], N, seed=0, batch_size=4,
                                logit_bias=bias)
  assert alone.samples == tuple(s for s in reference.samples if s.prompt_id == 2)
  # Another base seed: other samples.
  reseeded = sampling.sample_chunk(interp, [PROMPTS[2]], [IDS[2]], N, seed=1, batch_size=4,
                                   logit_bias=bias)
  assert [s.ids for s in reseeded.samples] != [s.ids for s in alone.samples]


def test_bad_arguments_are_refused(setup):
  interp, _ = setup
  with pytest.raises(ValueError, match='unique'):
    sampling.sample_chunk(interp, ['a', 'b'], [1, '1'], 2, 0)
  with pytest.raises(ValueError, match='prompt ids'):
    sampling.sample_chunk(interp, ['a', 'b'], [1], 2, 0)


def fake_chunk(ids, seed=0):
  samples = tuple(sampling.Sample(
      prompt_id=p, index=i, seed=sampling.request_seed(seed, p, i), status='done',
      annotated='a', text='a', ids=(1, 2), steps=2, tokens=2, stripped_tokens=2,
      prompt_tokens=3, threads=1) for p in ids for i in range(2))
  return sampling.Chunk(prompt_ids=tuple(ids), samples=samples, prompt_too_long={},
                        settings=sampling.Settings(n=2, seed=seed, temperature=1.0, top_p=1.0),
                        stats=sampling.SamplingStats(prompts=len(ids), samples=len(samples),
                                                     calls=1, seconds=0.5))


def test_store_round_trip_and_partial_last_line(tmp_path):
  path = str(tmp_path / 'samples.jsonl')
  store = sampling.SampleStore(path)
  assert store.done_ids == set() and store.settings is None
  store.append(fake_chunk(['a', 1]))
  store.append(fake_chunk(['c']))
  # A killed append: part of a third line, no newline.
  with open(path, 'ab') as f:
    f.write(json.dumps(fake_chunk(['d']).to_json())[:40].encode())
  store = sampling.SampleStore(path)
  assert store.partial_lines == 1
  assert store.done_ids == {'a', 1, 'c'}
  assert store.samples() == by_prompt(fake_chunk(['a', 1]).samples + fake_chunk(['c']).samples)
  assert store.stats().samples == 6 and store.stats().seconds == 1.0
  # The next append cuts the partial line off: every line parses again.
  store.append(fake_chunk(['d']))
  with open(path, encoding='utf-8') as f:
    lines = f.read().split('\n')
  assert lines[-1] == '' and [json.loads(x)['prompt_ids'] for x in lines[:-1]] == [
      ['a', 1], ['c'], ['d']]
  again = sampling.SampleStore(path)
  assert again.partial_lines == 0 and again.done_ids == {'a', 1, 'c', 'd'}


def test_store_refuses_a_damaged_middle_line(tmp_path):
  path = tmp_path / 'samples.jsonl'
  good = json.dumps(fake_chunk(['a']).to_json())
  path.write_text(good + '\n{"not": "a chunk"}\n' + good + '\n')
  with pytest.raises(ValueError, match='samples.jsonl:2: not a sample chunk'):
    sampling.SampleStore(str(path))


def by_prompt(samples):
  out = {}
  for s in samples:
    out.setdefault(s.prompt_id, []).append(s)
  return out


def test_killed_run_resumes_at_the_next_chunk(tmp_path, setup, reference):
  interp, bias = setup
  path = str(tmp_path / 'samples.jsonl')
  kwargs = dict(n=N, seed=0, chunk_prompts=2, batch_size=4, logit_bias=bias)
  stats = sampling.sample_prompts(interp, PROMPTS[:4], IDS[:4], store=sampling.SampleStore(path),
                                  **kwargs)
  assert (stats.prompts, stats.samples, stats.calls) == (4, 12, 4)
  # Kill during the second chunk's append: half its line was written.
  with open(path, 'rb') as f:
    data = f.read()
  first_end = data.index(b'\n') + 1
  with open(path, 'wb') as f:
    f.write(data[:first_end + (len(data) - first_end) // 2])
  store = sampling.SampleStore(path)
  assert store.partial_lines == 1 and store.done_ids == set(IDS[:2])
  stats = sampling.sample_prompts(interp, PROMPTS, IDS, store=store, **kwargs)
  assert (stats.prompts, stats.samples) == (3, 9)  # p0 and p1 were kept
  final = sampling.SampleStore(path)
  assert final.partial_lines == 0 and final.done_ids == set(IDS)
  assert final.samples() == by_prompt(reference.samples)
  # Resuming with other settings is refused.
  with pytest.raises(ValueError, match='drawn with'):
    sampling.sample_prompts(interp, PROMPTS, IDS, store=final, **dict(kwargs, seed=1))


def test_sampling_is_the_same_sharded(reference):
  """Two fake devices, requests split over the batch axes (an odd batch size is
  rounded up to the split): the single-device samples, exactly."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': os.environ.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=2',
         'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run([sys.executable, __file__], check=False, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  sharded = [sampling.Sample.from_json(s) for s in json.loads(result.stdout)]
  assert sharded == [s for s in reference.samples if s.prompt_id in IDS[:3]]


def _sharded_main():
  """Samples PROMPTS[:3] on a two-device mesh; prints them as JSON."""
  from pasta_jax.models import sharding  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 2
  jax.config.update('jax_disable_most_optimizations', True)
  interp, bias = build(mesh=sharding.make_mesh((2, 1, 1)))
  assert interp.batch_split == 2
  chunk = sampling.sample_chunk(interp, PROMPTS[:3], IDS[:3], N, seed=0, batch_size=3,
                                logit_bias=bias)
  assert (chunk.stats.calls, chunk.stats.padding) == (3, 3), chunk.stats
  print(json.dumps([s.to_json() for s in chunk.samples]))


if __name__ == '__main__':
  _sharded_main()
