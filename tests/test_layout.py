"""Thread layout: masks against a brute-force reference, positions and targets by hand."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from pasta_jax import lang, layout, masks, tokens
from pasta_jax.settings import PositionStrategy

C = tokens.ControlTokens(promise=4, async_open=5, async_close=6, sync=7,
                         lengths=tuple(range(8, 29)), eos=1, pad=0, bos=2)
PROM, ASYNC, END, SYNC, EOS = 4, 5, 6, 7, 1


def L(n):  # noqa: E743 - the length token for n promised tokens
  return C.length_id(n)


# ----------------------------------------------------------------------------
# A generator of tokenized responses that records the structure independently
# of tokens.scan, and a reference mask written from docs/design.md section 2.


@st.composite
def responses(draw):
  """(prompt, response, thread, promise_end, sync_idx) with absolute indices."""
  text = st.lists(st.integers(30, 99), max_size=3)
  prompt = draw(st.lists(st.integers(30, 99), max_size=4))
  ids, thread, promise_end, syncs = list(prompt), [0] * len(prompt), {}, []
  for _ in range(draw(st.integers(0, 7))):
    choice = draw(st.sampled_from(['text', 'promise', 'promise', 'sync']))
    if choice == 'text':
      run = draw(text)
      ids += run
      thread += [0] * len(run)
    elif choice == 'sync':
      syncs.append(len(ids))
      ids.append(SYNC)
      thread.append(0)
    else:
      k = len(promise_end) + 1
      topic = draw(text)
      ids += [PROM] + topic + [L(10 * draw(st.integers(0, 20)))]
      thread += [0] * (len(topic) + 2)
      promise_end[k] = len(ids) - 1
      body = draw(text)
      ids += [ASYNC] + body + [END]
      thread += [k] * (len(body) + 2)
  if draw(st.booleans()):
    syncs.append(len(ids))  # EOS is an implicit sync
    ids.append(EOS)
    thread.append(0)
  return (np.array(prompt, np.int32), np.array(ids[len(prompt):], np.int32),
          np.array(thread), promise_end, syncs)


def reference_mask(thread, promise_end, syncs):
  """docs/design.md section 2, literally, one (query, key) pair at a time."""
  n = len(thread)

  def joined_in(k, lo, hi):  # thread k joined by a sync s with lo <= s <= hi
    return any(promise_end[k] < s and lo <= s <= hi for s in syncs)

  mask = np.zeros((n, n), bool)
  for q in range(n):
    for k in range(n):
      tq, tk = thread[q], thread[k]
      if tq == 0:
        # prompt + earlier main tokens (and itself); threads joined at or before q.
        mask[q, k] = (k <= q) if tk == 0 else joined_in(tk, 0, q)
      else:
        fork = promise_end[tq]
        if tk == 0:
          mask[q, k] = k <= fork        # main thread up to its promise's last token
        elif tk == tq:
          mask[q, k] = k <= q           # earlier tokens of its own thread
        else:
          mask[q, k] = joined_in(tk, 0, fork - 1)  # joined before the fork
  return mask


@given(responses())
def test_mask_equals_brute_force_reference(case):
  prompt, response, thread, promise_end, syncs = case
  lay = layout.pasta_layout(prompt, response, C)
  np.testing.assert_array_equal(lay.thread, thread)
  np.testing.assert_array_equal(lay.mask(), reference_mask(thread, promise_end, syncs))


@given(responses())
def test_targets_follow_each_thread(case):
  prompt, response, thread, _, _ = case
  lay = layout.pasta_layout(prompt, response, C)
  ids = lay.tokens
  for i in range(len(ids)):
    later = [j for j in range(i + 1, len(ids)) if thread[j] == thread[i]]
    in_prompt = i < len(prompt) - 1
    if later and not in_prompt:
      assert lay.targets[i] == ids[later[0]] and lay.loss_weights[i] == 1
    else:
      assert lay.loss_weights[i] == 0
  assert ASYNC not in lay.targets[lay.loss_weights > 0]  # <async> is never a target
  assert not lay.loss_weights[ids == END].any()  # </async> predicts nothing


@given(responses())
def test_oracle_positions_equal_inline_positions(case):
  """With oracle reservations the layout's positions are the annotated order's."""
  prompt, response, _, _, _ = case
  lay = layout.pasta_layout(prompt, response, C, position_strategy=PositionStrategy('oracle'),
                            start_position=3)
  np.testing.assert_array_equal(lay.positions, 3 + np.arange(len(lay)))


def test_visibility_mask_works_under_jit():
  import jax
  lay = layout.pasta_layout([30, 31], [40, PROM, 41, L(10), ASYNC, 42, END, SYNC, 43, EOS], C)
  meta = lay.meta()
  np.testing.assert_array_equal(jax.jit(masks.visibility_mask)(meta, meta), lay.mask())


# ----------------------------------------------------------------------------
# Hand-worked examples.

PROMPT = [50, 51]
# index:     2    3    4   5       6      7   8   9   10   11   12    13  14
RESPONSE = [60, PROM, 61, L(20), ASYNC, 70, 71, 72, END, 62, SYNC, 63, EOS]


@pytest.mark.parametrize('strategy,reserve,after', [
    ('predicted', 32, [28, 29, 30, 31]),     # p = 5, R = 20 + 2
    ('oracle', 32, [11, 12, 13, 14]),        # R = 3 body tokens + 2
    ('fixed', 4, [10, 11, 12, 13]),          # R = 4
])
def test_positions_by_hand(strategy, reserve, after):
  lay = layout.pasta_layout(PROMPT, RESPONSE, C,
                            position_strategy=PositionStrategy(strategy, reserve))
  expected = [0, 1, 2, 3, 4, 5] + [6, 7, 8, 9, 10] + after
  assert lay.positions.tolist() == expected


def test_targets_by_hand():
  lay = layout.pasta_layout(PROMPT, RESPONSE, C)
  assert lay.targets.tolist() == [
      51, 60, PROM, 61, L(20), 62, 70, 71, 72, END, 0, SYNC, 63, EOS, 0]
  assert lay.loss_weights.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0]
  assert lay.thread.tolist() == [0] * 6 + [1] * 5 + [0] * 4


def test_mask_by_hand():
  lay = layout.pasta_layout(PROMPT, RESPONSE, C)
  mask = lay.mask()
  body = [6, 7, 8, 9, 10]
  # The async thread sees the prompt and main thread through the promise (0..5).
  assert mask[7].tolist() == [True] * 8 + [False] * 7
  # The main token after the promise does not see the body; the sync does.
  assert not mask[11, body].any() and mask[11, :6].all()
  assert mask[12, body].all() and mask[13, body].all()
  assert not mask[:, 11:][body].any()  # the body never sees later main tokens


def test_two_promises_and_positions_of_second_thread():
  # A, P1(len 10) B1, P2(len 0) B2, SYNC, C, EOS
  resp = [60, PROM, L(10), ASYNC, 70, END, PROM, L(0), ASYNC, 71, 72, END, SYNC, 61, EOS]
  lay = layout.pasta_layout([], resp, C)
  # Main: 60@0 PROM@1 L@2 -> thread 1 at 3..5; main resumes at 2+1+12=15:
  # PROM@15 L@16 -> thread 2 at 17..20; main resumes at 16+1+2=19: SYNC@19 61@20 EOS@21.
  assert lay.positions.tolist() == [0, 1, 2, 3, 4, 5, 15, 16, 17, 18, 19, 20, 19, 20, 21]
  mask = lay.mask()
  thread1, thread2 = [3, 4, 5], [8, 9, 10, 11]
  assert not mask[np.ix_(thread2, thread1)].any()  # siblings never see each other
  assert not mask[np.ix_(thread1, thread2)].any()
  assert mask[12, thread1 + thread2].all()  # the sync joins both


def test_thread_forked_after_a_sync_sees_the_joined_thread():
  resp = [PROM, L(0), ASYNC, 70, END, SYNC, PROM, L(0), ASYNC, 71, END, 60, EOS]
  lay = layout.pasta_layout([], resp, C)
  mask = lay.mask()
  assert mask[9, [2, 3, 4]].all()  # thread 2 sees thread 1, joined before its fork
  assert not mask[11, [8, 9, 10]].any()  # main sees thread 2 only at EOS
  assert mask[12, [8, 9, 10]].all()


def test_no_promises_is_causal():
  lay = layout.pasta_layout([30, 31], [60, 61, 62, EOS], C)
  np.testing.assert_array_equal(lay.mask(), np.tril(np.ones((6, 6), bool)))
  assert lay.positions.tolist() == list(range(6))


def test_sequential_layout():
  plain = layout.strip_ids(RESPONSE, C)
  assert plain.tolist() == [60, 70, 71, 72, 62, 63, EOS]
  lay = layout.sequential_layout(PROMPT, plain, start_position=1)
  assert lay.positions.tolist() == list(range(1, 10))
  assert lay.targets.tolist() == [51, 60, 70, 71, 72, 62, 63, EOS, 0]
  assert lay.loss_weights.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0]
  np.testing.assert_array_equal(lay.mask(), np.tril(np.ones((9, 9), bool)))


def test_packed_segments_never_see_each_other():
  a = layout.pasta_layout([30], [60, EOS], C).meta(segment=1)
  b = layout.pasta_layout([31], [61, EOS], C).meta(segment=2)
  pad = masks.causal_meta(2, segment=[0, 0])
  meta = masks.AttentionMeta(*[np.concatenate(f) for f in zip(a, b, pad)])
  mask = np.asarray(masks.visibility_mask(meta, meta))
  assert not mask[:3, 3:].any() and not mask[3:, :3].any()
  assert not mask[6:].any() and not mask[:, 6:].any()


@pytest.mark.parametrize('response,problem,index', [
    ([60, ASYNC, 70, END], r'<async> in the main thread', 1),
    ([PROM, 61, SYNC], r'<sync/> inside a promise tag', 2),
    ([PROM, L(10), 60], r'promise 1 has no body', 2),
    ([PROM, L(10), ASYNC, 70, SYNC, END], r'<sync/> inside an async body', 4),
    ([PROM, L(10), ASYNC, 70], r'unclosed <async>', 4),
    ([PROM, 61], r'unfinished promise tag', 2),
    ([60, EOS, 61], r'token after EOS', 2),
    ([60, L(0)], r'a length token in the main thread', 1),
    ([60, END], r'</async> in the main thread', 1),
    ([60, 0, 61], r'padding id 0 inside the response', 1),
    ([PROM, L(0), ASYNC, 2, END], r'bos id 2 inside the response', 3),
])
def test_malformed_token_sequences(response, problem, index):
  with pytest.raises(lang.PastaLangError, match=problem) as info:
    layout.pasta_layout([30], response, C)
  assert info.value.offset == index and str(info.value).startswith(f'token {index}: ')


def test_bad_strategy_and_reserve():
  with pytest.raises(ValueError, match='unknown position strategy'):
    PositionStrategy('guess')
  with pytest.raises(ValueError, match='fixed_reserve'):
    PositionStrategy('fixed', -1)


def test_control_tokens_validation():
  with pytest.raises(ValueError, match='distinct'):
    tokens.ControlTokens(promise=4, async_open=4, async_close=6, sync=7, lengths=(8,), eos=1)
  with pytest.raises(ValueError, match='overlap'):
    tokens.ControlTokens(promise=1, async_open=5, async_close=6, sync=7, lengths=(8,), eos=1)
  with pytest.raises(ValueError, match='exceeds the largest length token'):
    C.length_id(210)
  with pytest.raises(ValueError, match='multiple'):
    C.length_id(15)
  table = C.length_table(100)
  assert table[L(70)] == 70 and table[60] == -1 and (table >= 0).sum() == 21


# ----------------------------------------------------------------------------
# The ideal decode schedule.


def test_decode_steps_sequential_response_is_its_length():
  assert layout.decode_steps([60, 61, 62, EOS], C) == 4


def test_decode_steps_by_hand():
  # Rounds: 60@1 PROM@2 61@3 L@4 -> thread samples 70,71,72,END at 5..8; main:
  # 62@5, SYNC@6, then waits for END@8: 63@9, EOS@10.
  assert layout.decode_steps(RESPONSE, C) == 10
  # Without the sync: 62@5 63@6 EOS@7, but EOS waits for the thread (END@8).
  no_sync = [t for t in RESPONSE if t != SYNC]
  assert layout.decode_steps(no_sync, C) == 8


def test_decode_steps_with_queueing():
  # Three promises with 4-token bodies back to back, then EOS.
  resp = []
  for _ in range(3):
    resp += [PROM, L(10), ASYNC, 70, 71, 72, 73, END]
  resp += [EOS]
  # Main: PROM@1 L@2 PROM@3 L@4 PROM@5 L@6 EOS@7.
  # Unlimited slots: threads start at 3, 5, 7; sample END at 7, 9, 11.
  assert layout.decode_steps(resp, C) == 11
  # One async slot: thread 1 runs 3..7 and feeds END at 8, so thread 2 starts at 9
  # (END@13), thread 3 at 15 (END@19).
  assert layout.decode_steps(resp, C, slots=2) == 19
  # Two async slots: thread 3 waits for thread 1's slot (free at 9): END@13.
  assert layout.decode_steps(resp, C, slots=3) == 13
  with pytest.raises(ValueError, match='at least 2 slots'):
    layout.decode_steps(resp, C, slots=1)
