"""Skeleton-of-Thought decoding (docs/design.md section 9) on a tiny random model."""

import jax
import numpy as np
import pytest

from pasta_jax import models
from pasta_jax import runs
from pasta_jax import skeleton_of_thought as sot_lib
from pasta_jax.data import encoding

from configs import synth
from tests import fixtures

_fast_compiles = pytest.fixture(scope='module', autouse=True)(fixtures.fast_compiles)

LIST = 'two parts.\na) owl spelled out\nb) emu\n- not the same list\n'


def test_the_skeleton_is_the_first_list():
  skeleton = sot_lib.parse_skeleton(LIST + 'after\n1. x\n2. y\n', max_points=8)
  assert skeleton.intro == 'two parts.\n'
  assert skeleton.points == ('owl spelled out', 'emu')  # the rules' topics
  assert skeleton.dropped == 0
  assert sot_lib.parse_skeleton('1. a\n\n2. b\n3. c', max_points=2).points == ('a', 'b')
  assert sot_lib.parse_skeleton('1. a\n\n2. b\n3. c', max_points=2).dropped == 1
  for text in ('answer: 3 4 5.', 'a) one item only\nthen text', ''):
    assert sot_lib.parse_skeleton(text, max_points=8) is None


@pytest.fixture(scope='module')
def run():
  """A Run of configs/synth.py:tiny_sequential with random weights."""
  tok = fixtures.synthetic_tokenizer(200)
  config = synth.get_config('tiny_sequential')
  config.interpreter.max_steps = 40
  config.interpreter.cache_size = 192
  config.interpreter.slots = 4
  model_config = models.get_config('tiny', vocab_size=tok.vocab_size)
  params = models.init_params(model_config, jax.random.key(1))
  return runs.Run(config, model_config, params, tok, step=0, workdir='')


def _forced_skeleton(sot, text):
  """Makes the skeleton phase write `text` + EOS (a real decode, forced): a random
  model writes no list of its own."""
  decode = sot.skeleton_decoder.generate_timed
  ids = np.asarray(sot.tokenizer.encode_text(text) + [sot.tokenizer.eos_id], np.int32)
  sot.skeleton_decoder.generate_timed = (
      lambda prompt, prefix=None, logit_bias=None: decode(prompt, prefix=ids))


@pytest.mark.slow  # compiles both phases' programs (~25 s on 2 idle cores)
def test_points_are_expanded_in_threads_after_forced_promises(run):
  sot = sot_lib.SkeletonOfThought(run, sot_lib.SotConfig(point_tokens=20),
                                  max_thread_tokens=5)
  assert sot.expander.config.slots == 4 and not sot.expander.config.sequential
  assert sot.skeleton_decoder.config.sequential
  _forced_skeleton(sot, LIST)
  prompt = encoding.encode_prompt('do each: a) owl b) emu', run.tokenizer, run.prompt_template)
  result, timing = sot.generate_timed(prompt)
  skeleton, skeleton_time = sot.skeleton_decoder.generate_timed(prompt)
  assert sot.outcomes == {sot_lib.EXPANDED: 1}
  # The main thread wrote the intro, a promise per point and the sync, then went on.
  prefix = sot.forced_prefix(sot_lib.parse_skeleton(LIST, 16))
  main = result.threads[0].tokens
  assert main[:len(prefix)] == tuple(prefix) and len(main) > len(prefix)
  assert [p.topic for p in result.document.promises] == ['owl spelled out', 'emu']
  assert [p.tokens for p in result.document.promises] == [20, 20]
  assert len(result.threads) == 3 and all(len(t.tokens) <= 6 for t in result.threads[1:])
  assert result.text.startswith('two parts.\n')
  # The expansion is the interpreter's decode of prompt + skeleton with that prefix
  # (no promises of its own), and the cost is both phases'.
  context = np.concatenate([prompt, skeleton.threads[0].tokens[:-1]]).astype(np.int32)
  expansion = sot.expander.generate_ids([context], prefix=[prefix],
                                        logit_bias={run.tokenizer.control.promise: -1e9})[0]
  assert result.ids == expansion.ids and result.timeline == expansion.timeline
  assert result.steps == skeleton.steps + expansion.steps
  assert result.total_tokens == skeleton.total_tokens + expansion.total_tokens
  assert timing.decode_seconds > skeleton_time.decode_seconds > 0
  report = sot.report()
  assert report['outcomes'] == {'expanded': 1, 'no_skeleton': 0, 'context_too_long': 0}
  assert report['prompts'][0]['points'] == ['owl spelled out', 'emu']


@pytest.mark.slow
def test_a_skeleton_without_a_list_falls_back_to_the_plain_answer(run):
  sot = sot_lib.SkeletonOfThought(run)
  prompt = encoding.encode_prompt('count 3 from 4', run.tokenizer, run.prompt_template)
  plain, _ = sot.plain_decoder.generate_timed(prompt)
  _forced_skeleton(sot, 'answer: 5 6 7.')
  result, _ = sot.generate_timed(prompt)
  sot.generate_timed(prompt)  # decoded twice (a warm-up): counted once
  assert sot.outcomes == {sot_lib.NO_SKELETON: 1}
  assert result.text == 'answer: 5 6 7.' and result.document.promises == ()
  # The empty suffix made the skeleton phase the plain decode: paid for once.
  assert result.steps == len(result.threads[0].tokens) and plain.steps > 0
  assert 'no list in their skeleton' in sot.summary_line()


def test_a_suffix_asks_for_the_skeleton_and_the_fallback_decodes_plainly(run):
  sot = sot_lib.SkeletonOfThought(run, sot_lib.SotConfig(skeleton_suffix='outline:\n',
                                                         max_skeleton_tokens=12))
  assert sot.skeleton_decoder.config.max_steps == 12
  assert sot.plain_decoder.config.max_steps == 40
  prompt = encoding.encode_prompt('count 3 from 4', run.tokenizer, run.prompt_template)
  result, _ = sot.generate_timed(prompt)
  skeleton, _ = sot.skeleton_decoder.generate_timed(
      np.concatenate([prompt, run.tokenizer.encode_text('outline:\n')]).astype(np.int32))
  plain, _ = sot.plain_decoder.generate_timed(prompt)
  if sot.outcomes[sot_lib.NO_SKELETON]:  # a random model's skeleton: no list
    assert result.text == plain.text and result.steps == skeleton.steps + plain.steps
  with pytest.raises(ValueError, match='multiple of 10'):
    sot_lib.SkeletonOfThought(run, sot_lib.SotConfig(point_tokens=15))
  with pytest.raises(ValueError, match='multiple of 10'):
    sot_lib.SkeletonOfThought(run, sot_lib.SotConfig(point_tokens=110))


def test_context_too_long_falls_back(run):
  """Prompt + skeleton longer than the expansion takes (its largest bucket, 128)."""
  sot = sot_lib.SkeletonOfThought(run)
  _forced_skeleton(sot, 'items:\n1. a b\n2. c d\n3. e f g h i j k l\n')
  text = 'p'
  while len(encoding.encode_prompt(text, run.tokenizer, run.prompt_template)) < 110:
    text += ' word'
  prompt = encoding.encode_prompt(text, run.tokenizer, run.prompt_template)
  assert len(prompt) <= sot.max_prompt_tokens == 128
  result, _ = sot.generate_timed(prompt)
  assert sot.outcomes == {sot_lib.CONTEXT_TOO_LONG: 1}
  assert result.text.startswith('items:\n1. a b') and not result.document.promises
