"""Forced prefixes: a request's main thread writes given tokens first, then decodes
freely (the Skeleton-of-Thought baseline forces its promises this way)."""

import numpy as np
import pytest

from pasta_jax import lang
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.interpreter import api
from tests.interpreter.conftest import forced_threads, prompt_ids


def _interp(tok, model, sequential=False, **kwargs):
  config, params = model
  settings = dict(slots=1, mode='sequential') if sequential else dict(slots=4, max_threads=6)
  # Short budgets keep every main thread within the first prefix bucket (16), so
  # each interpreter compiles once for its prefixes (CI time).
  return Interpreter(config, params, tok, InterpreterConfig(
      cache_size=128, **{'max_steps': 16, **settings, **kwargs}))


@pytest.fixture(scope='module')
def pasta(tok, model):
  return _interp(tok, model, max_topic_tokens=2)  # promises close quickly


@pytest.mark.parametrize('sequential', [False, True], ids=['pasta', 'sequential'])
def test_forcing_what_the_model_chose_changes_nothing(tok, model, pasta, sequential):
  """Forcing the first k main-thread tokens of a free decode, then decoding
  freely, gives that decode back: same tokens, threads, rounds and status."""
  interp = _interp(tok, model, sequential) if sequential else pasta
  prompt = prompt_ids(tok, 'spell and reverse each word: a) owl b) emu')
  # Sampled (a seed fixes every round's draw) with promises made likely, so the
  # free decode holds promise tags and async threads.
  bias = None if sequential else {tok.control.promise: 8.0, tok.control.sync: 2.0}
  free = interp.generate_ids([prompt], temperature=1.0, seeds=[3], logit_bias=bias)[0]
  main = np.asarray(free.threads[0].tokens)
  if not sequential:
    assert len(free.threads) > 2  # the test covers forks and their threads
  for k in sorted({0, 1, len(main) // 3, len(main) // 2, len(main)}):
    forced = interp.generate_ids([prompt], temperature=1.0, seeds=[3], logit_bias=bias,
                                 prefix=[main[:k]])[0]
    assert forced.timeline == free.timeline, k
    assert (forced.ids, forced.steps, forced.status) == (free.ids, free.steps, free.status)


def test_forced_promises_then_free_decoding_replay_exactly(tok, model):
  """SoT's shape: forced text, promises and a sync the model would not choose,
  then free greedy decoding. Threads are decoded for every forced promise, the
  main thread continues after the sync, and teacher-forcing the whole document
  reproduces every logit (a forced prefix is decoded like any other token)."""
  interp = _interp(tok, model, record_logits=True, max_thread_tokens=6, max_steps=30)
  skeleton = lang.Document((lang.Text('points:\n'), lang.Promise('owl', 10),
                            lang.Promise('emu', 20), lang.Promise('a b', 10), lang.Sync()))
  prefix = tok.encode(skeleton, add_eos=False, annotated=False)
  prompt = prompt_ids(tok, 'a prompt')
  result = interp.generate_ids([prompt], prefix=[prefix])[0]
  assert result.threads[0].tokens[:len(prefix)] == tuple(prefix)
  assert len(result.threads) == 4  # main + one thread per forced promise
  assert all(0 < len(t.tokens) <= 7 for t in result.threads[1:])  # body + </async>
  assert result.document is not None
  assert [p.topic for p in result.document.promises] == ['owl', 'emu', 'a b']
  # The main thread decoded on after the forced sync (it sees the joined threads).
  assert len(result.threads[0].tokens) > len(prefix)
  response = np.asarray(result.ids)
  replay = interp.generate_ids(
      [prompt], forced=forced_threads(response, tok.control, interp.engine.num_thread_ids,
                                      width=32)[None])[0]  # the prefix's bucket: no compile
  assert interp.compilations == 1
  assert replay.timeline == result.timeline and replay.steps == result.steps
  np.testing.assert_allclose(replay.logits, result.logits, rtol=1e-5, atol=1e-5)
  # The free tokens are greedy: each is the best-scored token its grammar allows
  # (main-thread text here: the forced prefix made the promises; nothing else
  # ends the budget-free run but EOS).
  main_logits = result.logits[[th == 0 for _, th, _ in result.timeline]]
  for i in range(len(prefix), len(result.threads[0].tokens) - 1):
    token = result.threads[0].tokens[i]
    assert interp.tables.is_text[token] or token in (tok.control.promise, tok.control.sync)
    scores = np.where(interp.tables.is_text, main_logits[i], -np.inf)
    if interp.tables.is_text[token]:
      assert scores[token] == scores.max()


def test_prefixes_share_one_compilation_per_bucket(tok, pasta):
  interp = pasta
  promise = tok.encode(lang.Document((lang.Promise('x', 10),)), add_eos=False,
                       annotated=False)
  prompts = [prompt_ids(tok, 'one'), prompt_ids(tok, 'two two')]
  interp.generate_ids(prompts[:1], prefix=[promise])
  before = interp.compilations
  interp.generate_ids(prompts[1:], prefix=[None])
  interp.generate_ids(prompts[:1], prefix=[tok.encode_text('abc')])
  assert interp.compilations == before
  assert interp.prefix_forcing([promise]).shape[-1] == api.PREFIX_BUCKETS[0]
  assert interp.prefix_forcing([np.full(17, tok.encode_text('a')[0])]).shape[-1] == 32


def test_bad_prefixes_are_refused(tok, model, pasta):
  c = tok.control
  text = tok.encode_text('ab')
  length = tok.encode(lang.Document((lang.Promise('x', 10),)), add_eos=False,
                      annotated=False)[-1]
  interp = pasta
  bad = {
      'the main thread writes text': [c.async_open],
      'ends with a length token': [c.promise, c.sync],
      'writes text, <promise': [length],
      'EOS before the end': [*text, c.eos, *text],
      'more than max_threads=6': [c.promise, length] * 7,
      'at most 2 tokens': [c.promise, *text, *text, length],
      'outside the vocabulary': [10**6],
  }
  for problem, prefix in bad.items():
    with pytest.raises(ValueError, match=problem):
      interp.prefix_forcing([prefix])
  with pytest.raises(ValueError, match='at most 512'):
    interp.prefix_forcing([text * 300])
  with pytest.raises(ValueError, match='text and EOS only'):
    _interp(tok, model, sequential=True).prefix_forcing([[c.promise]])
  with pytest.raises(ValueError, match='forced or prefix'):
    interp.prepare([prompt_ids(tok, 'p')], prefix=[text], forced=np.zeros((1, 7, 1)))
  # A whole promise and EOS last are fine.
  interp.prefix_forcing([[*text, c.promise, *text, length, c.sync, c.eos]])
