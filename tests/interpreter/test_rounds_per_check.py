"""Several decode rounds per test of the loop condition (`rounds_per_check`) give
exactly the final state of one round per test: a request that stops inside a chunk
stops where it would have (tokens, rounds, status, steps, logs, budget), stages grow
at the same round, and the rounds after every request stopped change nothing."""

import jax
import numpy as np
import pytest

from pasta_jax import lang
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.interpreter import state as state_lib
from tests.interpreter.conftest import DOCUMENTS, forced_threads, prompt_ids
from tests.interpreter.test_generation import control_bias

MAX_STEPS = 38  # (MAX_STEPS - 1) % c != 0 for c in 2, 3, 8: the budget ends inside a chunk
FORCED_WIDTH = 160


def _settings(mode):
  """Stages (the first one outgrown mid-generation), a budget the free requests
  reach, logits recorded; PASTA rounds compiled at two widths (CI time)."""
  shape = (dict(slots=1, mode='sequential') if mode == 'sequential' else
           dict(slots=4, max_threads=6, max_topic_tokens=3, round_widths=(1, 4)))
  return dict(cache_size=160, cache_stages=(48,), max_steps=MAX_STEPS, record_logits=True,
              **shape)


PROMPTS = ('a', 'a rather long prompt with more words in it', 'mid size one', 'x y')
# 32 rounds in either mode: the last request of 'stop' ends inside a chunk of 2, 3 or 8.
PLAIN = ' '.join(['one two three'] * 20)


def _batches(tok, interp, mode):
  """Two batches of one compiled shape, requests of different prompt lengths.

  'budget': two requests teacher-forced with reference answers (replay, done at
  different rounds) and two free ones, greedy and sampled (the sampling keys
  depend on the round), with EOS suppressed: they run out of budget.
  'stop': four forced answers of 12 to 32 rounds, so the loop ends because
  none is running, before the budget (forcing makes those rounds independent
  of the weights).
  """
  c = tok.control
  p = interp.engine.num_thread_ids

  def forced(text):
    row = np.full((p, FORCED_WIDTH), state_lib.NOT_FORCED, np.int32)
    if text is None:
      return row
    if text is PLAIN:
      main = tok.encode_text(text)[:31] + [c.eos]
      row[0, :len(main)] = main
    elif mode == 'sequential':
      main = tok.encode_text(lang.strip(lang.parse(text))) + [c.eos]
      row[0, :len(main)] = main
    else:
      row[:] = forced_threads(tok.encode(lang.parse(text)), c, p, FORCED_WIDTH)
    return row

  tags = {} if mode == 'sequential' else control_bias(tok)
  answers = {'budget': (DOCUMENTS[2], DOCUMENTS[1], None, None),
             'stop': (DOCUMENTS[2], DOCUMENTS[0], DOCUMENTS[3], PLAIN)}
  return {name: interp.prepare([prompt_ids(tok, x) for x in PROMPTS],
                               temperature=[0.0, 0.0, 0.0, 1.0], seeds=[5, 6, 7, 8],
                               forced=np.stack([forced(t) for t in texts]),
                               logit_bias={**tags, tok.eos_id: -100.0})
          for name, texts in answers.items()}


def _interpreter(tok, model, mode, rounds_per_check):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      rounds_per_check=rounds_per_check, **_settings(mode)))
  assert interp.engine.rounds_per_check == rounds_per_check
  return interp


def _decode(interp, batches):
  """{batch name: the final `State` on the host}."""
  states = {name: jax.device_get(interp.generate_batch(batch))
            for name, batch in batches.items()}
  assert interp.compilations == 1
  return states


@pytest.fixture(scope='module', params=['pasta', 'sequential'])
def reference(request, tok, model):
  """(mode, the final states of one round per check, and the round each batch's
  first cache stage ended at)."""
  mode = request.param
  interp = _interpreter(tok, model, mode, 1)
  batches = _batches(tok, interp, mode)
  states = _decode(interp, batches)
  stage = jax.jit(interp.engine.decode_stage)
  stage_end = {}
  for name, batch in batches.items():
    end = stage(interp.params, interp.prefill(batch, first_stage=True), batch.requests,
                interp.hoisted_params())
    # The stage ended because a running request might not fit another round.
    assert end.capacity == 48 and (end.status == state_lib.RUNNING).any()
    assert int(end.round) < MAX_STEPS
    stage_end[name] = int(end.round)
  codes = {name: [state_lib.STATUS_NAMES[int(s)] for s in st.status]
           for name, st in states.items()}
  # The scenarios happen: replayed and free requests done at different rounds
  # ('stop' ends with none running, before the budget), and free requests out
  # of budget (or cache) beside replayed ones done.
  assert codes['stop'] == ['done'] * 4, codes
  assert len(set(states['stop'].steps.tolist())) == 4
  assert max(states['stop'].steps) == 32
  assert codes['budget'][:2] == ['done', 'done'] and 'budget' in codes['budget'], codes
  assert int(states['budget'].round) == MAX_STEPS
  return mode, states, stage_end


@pytest.mark.parametrize('rounds_per_check', [
    3, pytest.param(2, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)])
def test_chunked_rounds_equal_one_round_per_check(tok, model, reference, rounds_per_check):
  mode, expected, stage_end = reference
  interp = _interpreter(tok, model, mode, rounds_per_check)
  got = _decode(interp, _batches(tok, interp, mode))
  # Rounds 2, 3, ... run in chunks of c, so what stops after round r (a
  # request, a stage, the loop) stops inside a chunk unless (r - 1) % c == 0.
  inside = lambda r: (int(r) - 1) % rounds_per_check != 0
  if rounds_per_check == 3:  # the test's parameters make it so
    assert any(inside(r) for r in stage_end.values())
  for name, want in expected.items():
    for field in want.__dataclass_fields__:
      for a, b in zip(jax.tree.leaves(getattr(want, field)),
                      jax.tree.leaves(getattr(got[name], field))):
        if a.dtype.kind == 'f':  # the cache and the logits: same ops, maybe other fusions
          np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=f'{name}.{field}')
        else:  # tokens, threads, rounds, statuses, steps, pointers, the round counter
          np.testing.assert_array_equal(b, a, err_msg=f'{name}.{field}')
  assert any(inside(r) for st in expected.values() for r in st.steps)
  assert inside(max(expected['stop'].steps)) and inside(MAX_STEPS)


def test_rounds_per_check_by_backend_and_checked():
  config = InterpreterConfig(slots=4)
  assert config.for_backend('cpu').rounds_per_check == 1
  assert config.for_backend('tpu').rounds_per_check == 1
  assert config.for_backend('gpu').rounds_per_check == 4
  assert InterpreterConfig(slots=4, rounds_per_check=2).for_backend('gpu').rounds_per_check == 2
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ValueError, match='rounds_per_check must be an integer >= 1'):
      InterpreterConfig(rounds_per_check=bad)
