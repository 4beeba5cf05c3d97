"""Thread layout of a tokenized response: the single source of truth for training.

From prompt ids and a tokenized annotated response (`tokens.scan` grammar) this
computes, per token of the training sequence (prompt, then the response in
annotated document order, each body right after its promise):

* thread ids, position ids (docs/design.md section 3, strategies predicted/oracle/fixed),
* the compact visibility metadata of section 2 (`masks.AttentionMeta`) and, through
  `masks.visibility_mask`, the [T, T] mask,
* next-token targets and loss weights (section 4).

The interpreter builds the same metadata for its cache entries (with the cache
index as `order`), so training and decoding share one visibility rule.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from pasta_jax import masks
from pasta_jax import tokens as tokens_lib
from pasta_jax.settings import PositionStrategy

@dataclasses.dataclass(frozen=True)
class Layout:
  """One training sequence: prompt followed by a response. Every array is [T].

  Attributes:
    tokens: input token ids.
    positions: RoPE position of each token.
    thread: 0 for the prompt and main thread, k for async thread k.
    anchor, visible_from, order: visibility metadata (see `masks`).
    targets: the next token of the token's own thread (0 where there is none).
    loss_weights: 1.0 where `targets` is a training target, else 0.0 (prompt
      tokens except the last, the last main token, every END_ASYNC).
    prompt_length: number of prompt tokens at the start.
  """

  tokens: np.ndarray
  positions: np.ndarray
  thread: np.ndarray
  anchor: np.ndarray
  visible_from: np.ndarray
  order: np.ndarray
  targets: np.ndarray
  loss_weights: np.ndarray
  prompt_length: int

  def __len__(self) -> int:
    return len(self.tokens)

  def meta(self, segment: int = 1) -> masks.AttentionMeta:
    """The compact attention metadata; all tokens in one packing segment."""
    return masks.AttentionMeta(
        thread=self.thread, anchor=self.anchor, visible_from=self.visible_from,
        order=self.order, segment=np.full(len(self), segment, np.int32))

  def mask(self) -> np.ndarray:
    """bool [T, T]: mask[q, k] is True iff token q may attend to token k."""
    meta = self.meta()
    return np.asarray(masks.visibility_mask(meta, meta))


def pasta_layout(prompt_ids: Sequence[int] | np.ndarray,
                 response_ids: Sequence[int] | np.ndarray,
                 control: tokens_lib.ControlTokens, *,
                 position_strategy: PositionStrategy = PositionStrategy(),
                 start_position: int = 0) -> Layout:
  """Lays out prompt + annotated response for PASTA training (docs/design.md sections 2-4).

  `position_strategy` sets the positions a promise reserves for its chunk.

  Raises:
    lang.PastaLangError: the response is not a well-formed annotated response
      (the token index is relative to the response).
  """
  prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
  response = np.asarray(response_ids, np.int32).reshape(-1)
  structure = tokens_lib.scan(response, control, annotated=True)
  n_prompt, n = len(prompt), len(prompt) + len(response)
  kind = np.concatenate([np.full(n_prompt, tokens_lib.Kind.TEXT, np.int32),
                         structure.kind])
  thread = np.concatenate([np.zeros(n_prompt, np.int32), structure.thread])
  index = np.arange(n, dtype=np.int32)
  num_threads = structure.num_threads
  promise_end = structure.promise_end + n_prompt  # [P + 1]; entry 0 unused
  body_tokens = np.bincount(thread, minlength=num_threads + 1) - 2  # minus tags

  # Join point of each thread: the first SYNC after its promise, else EOS (the
  # implicit sync), else never.
  join = np.full(num_threads + 1, masks.NEVER, np.int64)
  syncs = index[(kind == tokens_lib.Kind.SYNC) | (kind == tokens_lib.Kind.EOS)]
  for k in range(1, num_threads + 1):
    after = syncs[syncs > promise_end[k]]
    if len(after):
      join[k] = after[0]

  # Visibility metadata, in the main clock = sequence index.
  is_main = thread == 0
  anchor = np.where(is_main, index, promise_end[thread]).astype(np.int32)
  visible_from = np.where(is_main, index, join[thread]).astype(np.int32)

  # Positions (section 3): main tokens count up; a promise's last token at p starts
  # its thread at p + 1 and moves the main thread to p + 1 + R.
  positions = np.zeros(n, np.int32)
  positions[:n_prompt] = start_position + np.arange(n_prompt)
  main_pos = start_position + n_prompt
  thread_pos = np.zeros(num_threads + 1, np.int64)
  for i in range(n_prompt, n):
    k = thread[i]
    if k:
      positions[i] = thread_pos[k]
      thread_pos[k] += 1
      continue
    positions[i] = main_pos
    main_pos += 1
    if kind[i] == tokens_lib.Kind.LENGTH:
      t = int(np.searchsorted(promise_end, i))
      thread_pos[t] = main_pos
      main_pos += position_strategy.reserved(int(structure.promised[t]),
                                             int(body_tokens[t]))

  targets, loss_weights = _next_in_thread(np.concatenate([prompt, response]), thread,
                                          num_threads)
  loss_weights[:max(n_prompt - 1, 0)] = 0.0
  return Layout(np.concatenate([prompt, response]), positions, thread, anchor,
                visible_from, index, targets, loss_weights, n_prompt)


def sequential_layout(prompt_ids: Sequence[int] | np.ndarray,
                      response_ids: Sequence[int] | np.ndarray, *,
                      start_position: int = 0) -> Layout:
  """Lays out prompt + plain response: causal mask, ordinary positions."""
  prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
  response = np.asarray(response_ids, np.int32).reshape(-1)
  ids = np.concatenate([prompt, response])
  meta = masks.causal_meta(len(ids))
  targets, loss_weights = _next_in_thread(ids, meta.thread, 0)
  loss_weights[:max(len(prompt) - 1, 0)] = 0.0
  return Layout(ids, (start_position + meta.order).astype(np.int32), meta.thread,
                meta.anchor, meta.visible_from, meta.order, targets, loss_weights,
                len(prompt))


def strip_ids(response_ids: Sequence[int] | np.ndarray,
              control: tokens_lib.ControlTokens) -> np.ndarray:
  """Reading-order text ids of an annotated response: tags, topics and lengths removed.

  Each body stays where its promise stood (annotated order), EOS is kept.
  """
  response = np.asarray(response_ids, np.int32).reshape(-1)
  structure = tokens_lib.scan(response, control, annotated=True)
  keep = np.isin(structure.kind, (tokens_lib.Kind.TEXT, tokens_lib.Kind.BODY,
                                  tokens_lib.Kind.EOS))
  return response[keep]


def decode_steps(response_ids: Sequence[int] | np.ndarray,
                 control: tokens_lib.ControlTokens, *, slots: int | None = None) -> int:
  """Decode rounds an ideal interpreter needs for an annotated response.

  The schedule (docs/pasta_lang.md, "Decode schedule"): every round each running
  thread feeds one token and samples the next; the prefill round samples the first
  response token, so a response without promises of R tokens takes R rounds (the
  sequential baseline's steps). Sampling promise k's length token in round r forks
  thread k, which feeds `<async>` in round r + 1 and samples its body and
  `</async>` in rounds r + 1 ... r + 1 + body; it feeds `</async>` one round later
  and frees its slot. With `slots` thread slots (slot 0 the main thread) at most
  slots - 1 async threads run at once; later promises queue in order. After
  sampling `<sync/>` the main thread samples its next token only once every
  outstanding thread has sampled `</async>`; EOS waits for all threads.

  Returns:
    the number of rounds (docs/design.md section 6: theoretical speedup = baseline
    tokens / this).
  """
  response = np.asarray(response_ids, np.int32).reshape(-1)
  structure = tokens_lib.scan(response, control, annotated=True)
  if slots is not None and slots < 2:
    raise ValueError(f'PASTA decoding needs at least 2 slots (main + async), got {slots}')
  body = np.bincount(structure.thread, minlength=structure.num_threads + 1) - 2
  free_at = [] if slots is None else [0] * (slots - 1)  # round each async slot frees
  last_start = 0
  ends = []  # round in which each forked thread samples </async>
  rounds = 0  # round in which the current main token was sampled
  previous_kind = None
  thread = 0
  for i in np.flatnonzero(structure.thread == 0):
    kind = structure.kind[i]
    if previous_kind == tokens_lib.Kind.SYNC:
      rounds = max([rounds] + ends) + 1
    else:
      rounds += 1
    if kind == tokens_lib.Kind.LENGTH:
      thread += 1
      start = max(rounds + 1, last_start)
      if free_at:
        slot = int(np.argmin(free_at))
        start = max(start, free_at[slot])
        free_at[slot] = start + int(body[thread]) + 2
      last_start = start
      ends.append(start + int(body[thread]))
    previous_kind = kind
  return max([rounds] + ends)


def _next_in_thread(ids: np.ndarray, thread: np.ndarray,
                    num_threads: int) -> tuple[np.ndarray, np.ndarray]:
  """targets[i] = the next token of thread[i] after i; weights mark where one exists."""
  targets = np.zeros(len(ids), np.int32)
  weights = np.zeros(len(ids), np.float32)
  for k in range(num_threads + 1):
    members = np.flatnonzero(thread == k)
    targets[members[:-1]] = ids[members[1:]]
    weights[members[:-1]] = 1.0
  return targets, weights
