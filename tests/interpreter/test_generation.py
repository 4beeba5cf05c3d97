"""The interpreter as a decoder: sequential mode, isolation, batching, grammar, stops."""

import collections
import dataclasses

import jax
import numpy as np
import pytest

from pasta_jax import lang
from pasta_jax import layout
from pasta_jax import masks
from pasta_jax import models
from pasta_jax import tokens as tokens_lib
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from tests.interpreter.conftest import DOCUMENTS, forced_threads, prompt_ids


def control_bias(tok, value=3.0):
  """Makes random weights emit PASTA tags often, to exercise the grammar."""
  c = tok.control
  return {c.promise: value + 1, c.sync: value, c.async_close: value, c.eos: value - 1,
          **{t: value for t in c.lengths}}


def test_sequential_mode_equals_a_full_forward_pass(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=1, mode='sequential', cache_size=128, max_steps=40, record_logits=True))
  prompt = prompt_ids(tok, 'count from 3 to 9')
  result = interp.generate_ids([prompt])[0]
  assert result.status in ('done', 'budget') and len(result.threads) == 1
  sampled = np.array([t for _, _, t in result.timeline])
  # Feed the prompt and what was generated through one causal forward pass.
  full_ids = np.concatenate([prompt, sampled[:-1]])
  meta = masks.AttentionMeta(*(a[None] for a in masks.causal_meta(len(full_ids))))
  logits, _ = models.Transformer(config).apply(
      {'params': params}, full_ids[None], np.arange(len(full_ids))[None], (meta, meta))
  expected = np.asarray(logits[0, len(prompt) - 1:])
  np.testing.assert_allclose(result.logits, expected, rtol=1e-4, atol=1e-4)
  # Greedy: every token is the argmax over the tokens sequential mode allows.
  allowed = interp.tables.is_text.copy()
  allowed[tok.eos_id] = True
  np.testing.assert_array_equal(sampled, np.where(allowed, expected, -np.inf).argmax(-1))
  assert not set(sampled.tolist()) & set(tok.control.tag_ids)
  assert result.steps == len(sampled)


def test_async_threads_are_identical_alone_or_together(tok, model):
  """Force only the main thread; greedy bodies must not depend on the other threads."""
  config, params = model
  response = tok.encode(lang.parse(DOCUMENTS[0]))
  forced = forced_threads(response, tok.control, 9)
  forced[1:] = -1  # the async threads sample
  bodies = {}
  for slots in (2, 4, 8):
    interp = Interpreter(config, params, tok, InterpreterConfig(
        slots=slots, max_threads=8, cache_size=256, max_steps=200, max_thread_tokens=10))
    result = interp.generate_ids([prompt_ids(tok, 'iso')], forced=forced[None])[0]
    assert result.status == 'done'
    bodies[slots] = [span.tokens for span in result.threads[1:]]
  assert len(bodies[2]) == 3
  assert bodies[2] == bodies[4] == bodies[8]


@pytest.mark.parametrize('sequential', [False, True], ids=['pasta', 'sequential'])
def test_hoisted_weight_layouts_change_nothing(tok, model, sequential):
  """The decode loop's transposed weights (hoist_layouts) are a layout change only."""
  config, params = model
  results = {}
  for hoist in (False, True):
    interp = Interpreter(config, params, tok, InterpreterConfig(
        slots=1 if sequential else 4, max_threads=6, cache_size=192, max_steps=60,
        mode='sequential' if sequential else 'pasta', record_logits=True, hoist_layouts=hoist))
    results[hoist] = interp.generate(['a prompt', 'another one'], temperature=0.0,
                                     logit_bias=None if sequential else control_bias(tok))
  for a, b in zip(results[False], results[True]):
    assert (a.ids, a.status, a.steps, a.timeline) == (b.ids, b.status, b.steps, b.timeline)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
  if not sequential:
    assert any(len(r.threads) > 1 for r in results[True])


def test_hoisted_weights_are_made_once_per_params(tok, model):
  """The transposed copies are kept between generations, share the untouched
  leaves, and follow a change of `params`."""
  config, params = model
  icfg = InterpreterConfig(slots=4, max_threads=6, cache_size=128, max_steps=30,
                           hoist_layouts=True, record_logits=True)
  interp = Interpreter(config, params, tok, icfg)
  hoisted = interp.hoisted_params()
  assert interp.hoisted_params() is hoisted
  embedding = params['embedder']['input_embedding']
  np.testing.assert_array_equal(hoisted['embedder']['input_embedding'], np.asarray(embedding).T)
  # The projections' weights (an einsum module's 'w') are hoisted too: stored
  # [D, N, H] and [D, C, K, H], as the round's model reads them.
  attn, hoisted_attn = params['layer_0']['attn'], hoisted['layer_0']['attn']
  np.testing.assert_array_equal(hoisted_attn['q_einsum']['w'],
                                np.transpose(attn['q_einsum']['w'], (1, 0, 2)))
  np.testing.assert_array_equal(hoisted_attn['kv_einsum']['w'],
                                np.transpose(attn['kv_einsum']['w'], (2, 0, 1, 3)))
  assert hoisted_attn['attn_vec_einsum']['w'] is attn['attn_vec_einsum']['w']
  assert hoisted['final_norm']['scale'] is interp.params['final_norm']['scale']
  first = interp.generate('a prompt', temperature=0.0)[0]
  assert interp.hoisted_params() is hoisted
  # New weights (a new object): new copies, and the answers of those weights.
  scaled = models.init_params(config, jax.random.key(1))
  interp.params = scaled
  assert interp.hoisted_params() is not hoisted
  fresh = Interpreter(config, scaled, tok, icfg).generate('a prompt', temperature=0.0)[0]
  again = interp.generate('a prompt', temperature=0.0)[0]
  assert (again.ids, again.timeline) == (fresh.ids, fresh.timeline)
  np.testing.assert_allclose(again.logits, fresh.logits, rtol=1e-5, atol=1e-5)
  assert not np.allclose(again.logits[0], first.logits[0], atol=1e-3)


@pytest.mark.slow  # over 25 s on 2 cores: the newest Python only (CI's budget)
@pytest.mark.parametrize('sequential', [False, True], ids=['pasta', 'sequential'])
def test_cache_stages_change_nothing(tok, model, sequential):
  """Decoding through growing cache stages equals decoding on the whole cache."""
  config, params = model
  prompts = ['a prompt', 'another, rather longer prompt than the first one']
  bias = {tok.eos_id: -100.0} if sequential else {**control_bias(tok), tok.eos_id: -100.0}
  results = {}
  for stages in ((), (40, 64, 100)):
    interp = Interpreter(config, params, tok, InterpreterConfig(
        slots=1 if sequential else 4, max_threads=6, cache_size=160, max_steps=200,
        mode='sequential' if sequential else 'pasta', record_logits=True, cache_stages=stages))
    assert interp.config.stages == stages + (160,)
    results[stages] = interp.generate(prompts, temperature=0.0, logit_bias=bias)
  for a, b in zip(results[()], results[(40, 64, 100)]):
    assert (a.ids, a.status, a.steps, a.timeline) == (b.ids, b.status, b.steps, b.timeline)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
  # The answers ran through every stage and out of the last one.
  assert {r.status for r in results[()]} == {'cache_full'}
  if not sequential:
    assert any(len(r.threads) > 1 for r in results[()])


@pytest.mark.slow  # over 25 s on 2 cores: the newest Python only (CI's budget)
def test_generate_timed_times_prefill_and_decode_apart(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=3, max_threads=4, cache_size=128, max_steps=40, cache_stages=(48,)))
  ids = prompt_ids(tok, 'time me')
  result, timing = interp.generate_timed(ids)
  assert timing.prefill_seconds > 0 and timing.decode_seconds > 0
  assert timing.seconds == timing.prefill_seconds + timing.decode_seconds
  # Two programs (prefill into the first stage, then the rounds) give what the
  # one-program generate gives.
  expected = interp.generate_ids([ids])[0]
  assert (result.ids, result.status, result.steps, result.timeline) == (
      expected.ids, expected.status, expected.steps, expected.timeline)
  state = interp.prefill(interp.prepare([ids]), first_stage=True)
  assert state.capacity == 48 and models.cache_length(state.cache) == 48


def test_batch_equals_one_request_at_a_time(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=4, max_threads=6, cache_size=192, max_steps=60, max_topic_tokens=3))
  prompts = ['short', 'a rather longer prompt with more words in it', 'mid size one']
  for temperature in (0.0, 1.0):
    together = interp.generate(prompts, temperature=temperature, seed=7,
                               logit_bias=control_bias(tok))
    alone = [interp.generate([p], temperature=temperature, seed=7 + i,
                             logit_bias=control_bias(tok))[0]
             for i, p in enumerate(prompts)]
    for a, b in zip(together, alone):
      assert (a.ids, a.status, a.steps, a.timeline) == (b.ids, b.status, b.steps, b.timeline)
  assert any(len(r.threads) > 1 for r in together)  # the bias made threads
  # Sampling is deterministic for a seed and differs across seeds.
  again = interp.generate(prompts, temperature=1.0, seed=7, logit_bias=control_bias(tok))
  other = interp.generate(prompts, temperature=1.0, seed=8, logit_bias=control_bias(tok))
  assert [r.ids for r in again] == [r.ids for r in together]
  assert [r.ids for r in other] != [r.ids for r in together]


def _check_thread_grammar(result, tok):
  """Each thread's tokens are grammatical, whatever stopped the request."""
  c = tok.control
  main = list(result.threads[0].tokens)
  try:
    tokens_lib.scan(main, c, annotated=False)
  except lang.PastaLangError as e:
    assert result.status != 'done' and e.offset == len(main), e
  assert c.async_open not in main and c.async_close not in main
  for span in result.threads[1:]:
    body = list(span.tokens)
    tags = set(c.tag_ids) | {c.eos, c.pad}
    assert not tags & set(body[:-1])
    if result.status == 'done':
      assert body and body[-1] == c.async_close


def test_fuzz_high_temperature_never_malformed_never_stuck(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=4, max_threads=5, cache_size=160, max_steps=90, max_topic_tokens=3))
  statuses = collections.Counter()
  for seed in range(3):
    results = interp.generate([f'fuzz {i}' for i in range(8)], temperature=2.0,
                              seed=100 * seed, logit_bias=control_bias(tok, 4.0))
    for result in results:
      statuses[result.status] += 1
      assert result.steps <= 90 and result.total_tokens <= 160 + 4 + 1
      _check_thread_grammar(result, tok)
      if result.status == 'done':
        doc = lang.validate(result.annotated)
        assert result.document == doc and result.text == lang.strip(doc)
        layout.pasta_layout([tok.bos_id], list(result.ids), tok.control)
        # The rounds are exactly the ideal schedule of what was written.
        assert result.steps == layout.decode_steps(list(result.ids), tok.control, slots=4)
  assert statuses['done'] > 0 and sum(statuses.values()) == 24
  assert interp.compilations == 1


def test_one_compilation_per_bucket(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=2, max_threads=2, cache_size=96, max_steps=8), buckets=(16, 64))
  interp.generate(['a', 'bb', 'ccc'])  # padded to a batch of 4
  interp.generate(['another prompt', 'x y z', 'four', 'prompts'])
  interp.generate(['five', 'prompts', 'in', 'two', 'batches'], batch_size=4)
  assert interp.compilations == 1
  interp.generate(['a much longer prompt that does not fit in sixteen tokens at all, no'] * 4)
  assert interp.compilations == 2
  # A prompt no bucket holds is reported, not decoded (and compiles nothing).
  result = interp.generate(['word ' * 80])[0]
  assert result.status == 'prompt_too_long' and 'no prompt bucket holds it' in result.detail
  assert interp.compilations == 2


def test_cache_full_and_budget_are_reported(tok, model):
  config, params = model
  bias = {tok.eos_id: -100.0}  # never stop by itself
  small_cache = Interpreter(config, params, tok, InterpreterConfig(
      slots=2, max_threads=2, cache_size=24, max_steps=100), buckets=(16,))
  result = small_cache.generate(['fill the cache'], logit_bias=bias)[0]
  assert result.status == 'cache_full'
  assert result.total_tokens <= 24
  budget = Interpreter(config, params, tok, InterpreterConfig(
      slots=2, max_threads=2, cache_size=96, max_steps=12), buckets=(16,))
  result = budget.generate(['spend the budget'], logit_bias=bias)[0]
  assert result.status == 'budget' and result.steps == 12


def test_stream_matches_generate(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=3, max_threads=3, cache_size=128, max_steps=30, max_topic_tokens=2))
  bias = control_bias(tok)
  result = interp.generate(['stream me'], temperature=1.0, seed=3, logit_bias=bias)[0]
  events = list(interp.stream('stream me', temperature=1.0, seed=3, logit_bias=bias))
  streamed = [(thread, token) for round_events in events for thread, token, _ in round_events]
  assert streamed == [(thread, token) for _, thread, token in result.timeline]
  assert len(events) == result.steps


@pytest.mark.parametrize('kwargs,problem', [
    (dict(slots=1), 'at least 2 slots'),
    (dict(slots=2, mode='sequential'), 'one slot'),
    (dict(position_strategy='oracle'), 'oracle'),
    (dict(position_strategy='guess'), 'unknown position strategy'),
    (dict(max_threads=0), 'max_threads'),
    (dict(cache_size=256, cache_stages=(128, 64)), 'strictly increasing'),
    (dict(cache_size=256, cache_stages=(64, 64)), 'strictly increasing'),
    (dict(cache_size=256, cache_stages=(64, 256)), 'smaller than cache_size = 256'),
    (dict(slots=8, cache_size=256, cache_stages=(8, 64)), 'more than one round'),
    (dict(cache_size=256, cache_stages=(64.0,)), 'must be integers'),
    (dict(slots=8, round_widths=(1, 4)), 'end with slots = 8'),
    (dict(slots=8, round_widths=(4, 2, 8)), 'strictly increasing'),
    (dict(slots=8, round_widths=(0, 8)), '>= 1'),
    (dict(slots=8, round_widths=()), 'strictly increasing'),
    (dict(slots=8, round_widths=(2.0, 8)), 'must be integers'),
])
def test_config_errors(kwargs, problem):
  with pytest.raises(ValueError, match=problem):
    InterpreterConfig(**kwargs)


def test_round_widths_from_a_config_list():
  assert InterpreterConfig(slots=4, round_widths=[1, 4]).round_widths == (1, 4)
  assert InterpreterConfig(slots=4).round_widths is None


def test_backend_defaults():
  """hoist_layouts, round_widths and rounds_per_check left to the backend: the
  CPU's, or an accelerator's (what a program compiled ahead of time for a TPU runs)."""
  config = InterpreterConfig(slots=8)
  cpu, tpu = config.for_backend('cpu'), config.for_backend('tpu')
  assert (cpu.hoist_layouts, cpu.round_widths) == (True, (1, 2, 4, 8))
  assert (tpu.hoist_layouts, tpu.round_widths) == (False, (8,))
  given = InterpreterConfig(slots=8, hoist_layouts=False, round_widths=(2, 8),
                            rounds_per_check=2)
  assert given.for_backend('cpu') == given


def test_a_remat_model_decodes_as_without_remat(tok, model):
  """A run trained with remat (configs/gemma_sft.py) decodes: remat is training's."""
  config, params = model
  icfg = InterpreterConfig(slots=4, max_threads=6, cache_size=128, max_steps=40)
  results = [Interpreter(dataclasses.replace(config, remat=remat), params, tok, icfg).generate(
      ['a prompt'], temperature=0.0, logit_bias=control_bias(tok))[0] for remat in (False, True)]
  assert results[0].ids == results[1].ids and results[0].timeline == results[1].timeline


def test_cache_stages_from_a_config_list():
  config = InterpreterConfig(cache_size=256, cache_stages=[64, 128])
  assert config.cache_stages == (64, 128) and config.stages == (64, 128, 256)
  assert InterpreterConfig(cache_size=256).stages == (256,)
