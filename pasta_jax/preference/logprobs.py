"""Log-probabilities of annotated responses under a model (docs/design.md section 7).

logp(y) of a response y to a prompt x is the sum, over the targets of the
PASTA training layout of (x, y) (`layout.pasta_layout`: each token predicts the
next token of its own thread; prompt tokens are not targets, the last one
predicts the first response token), of the target's log-probability under the
training forward pass (`step.target_log_probs`), in float32.

Pairs (y+, y-) of one prompt travel in *pair batches*: the training pipeline's
packed [B, T] fields (`pipeline.FIELDS`) where row r holds up to K pairs, pair k
as segment 2k + 1 (y+) and segment 2k + 2 (y-), plus [B, K] fields:

  pair_index (int32): the pair's index in the list given to `pack_pairs`, -1
    where row r has no k-th pair;
  ref_chosen, ref_rejected (float32, `with_reference` only): the frozen
    reference model's logp(y+) and logp(y-).

Every field has the batch axis first, so a pair batch shards like a stage-1
batch. The reference log-probabilities are computed once (`reference_logprobs`)
and stored; the reference params never enter the train step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pasta_jax import layout
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding
from pasta_jax.data import pipeline
from pasta_jax.models import sharding as model_sharding
from pasta_jax.models import transformer
from pasta_jax.models.config import TransformerConfig
from pasta_jax.settings import PositionStrategy
from pasta_jax.training import step as step_lib

Batch = Mapping[str, Any]

# [B, K] fields of a pair batch, besides the packed [B, T] `pipeline.FIELDS`.
PAIR_FIELDS = ('pair_index',)
REFERENCE_FIELDS = ('ref_chosen', 'ref_rejected')
# What `pair_logprobs` returns per pair.
PAIR_KEYS = ('chosen', 'rejected', 'chosen_targets', 'rejected_targets')


def segment_logprobs(params, batch: Batch, *, model_config: TransformerConfig,
                     max_segments: int) -> tuple[jax.Array, jax.Array]:
  """Per packed example: (sum of target log-probs, number of targets), each [B, S].

  Entry [r, s] belongs to segment s + 1 of row r (S = `max_segments`, static);
  segments that are absent, and padding, give 0. Jittable; float32.
  """
  logp_BT, _ = step_lib.target_log_probs(params, batch, transformer.Transformer(model_config))
  weights_BT = batch['loss_weights'].astype(jnp.float32)
  # in_BTS[b, t, s]: token t of row b belongs to segment s + 1 (padding, segment 0,
  # to none).
  in_BTS = (batch['segment'][..., None] ==
            jnp.arange(1, max_segments + 1, dtype=batch['segment'].dtype))
  # Non-targets count as exactly 0, whatever the forward gave them.
  weighted_BT = jnp.where(weights_BT > 0, logp_BT * weights_BT, 0.0)
  logp_BS = jnp.sum(jnp.where(in_BTS, weighted_BT[..., None], 0.0), axis=1)
  count_BS = jnp.sum(jnp.where(in_BTS, weights_BT[..., None], 0.0), axis=1)
  return logp_BS, count_BS


def pair_logprobs(params, batch: Batch, *, model_config: TransformerConfig
                  ) -> dict[str, jax.Array]:
  """logp(y+), logp(y-) and their target counts, each [B, K], of a pair batch.

  K is `batch['pair_index'].shape[1]`; entries where `pair_index` is -1 are 0.
  """
  k = batch['pair_index'].shape[1]
  logp_BS, count_BS = segment_logprobs(params, batch, model_config=model_config,
                                       max_segments=2 * k)
  logp_BK2 = logp_BS.reshape(logp_BS.shape[0], k, 2)
  count_BK2 = count_BS.reshape(count_BS.shape[0], k, 2)
  return {'chosen': logp_BK2[..., 0], 'rejected': logp_BK2[..., 1],
          'chosen_targets': count_BK2[..., 0], 'rejected_targets': count_BK2[..., 1]}


# -- laying out pairs ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairLayouts:
  """The training layouts of y+ and y- after the same prompt."""

  chosen: layout.Layout
  rejected: layout.Layout

  def __len__(self) -> int:
    return len(self.chosen) + len(self.rejected)


def layout_pair(prompt: str, chosen: str, rejected: str, tok: tokenizer_lib.Tokenizer, *,
                template: str = '{prompt}\n', promise_lengths: str = 'measured',
                position_strategy: PositionStrategy = PositionStrategy()) -> PairLayouts:
  """Encodes (prompt, y+, y-) like the training pipeline does (`encoding.encode_example`,
  `layout.pasta_layout`); raises lang.PastaLangError if a response is malformed."""
  def one(annotated: str) -> layout.Layout:
    enc = encoding.encode_example(prompt, annotated, tok, template=template,
                                  promise_lengths=promise_lengths)
    return layout.pasta_layout(enc.prompt, enc.response, tok.control,
                               position_strategy=position_strategy)
  return PairLayouts(one(chosen), one(rejected))


@dataclasses.dataclass(frozen=True)
class PackedPairs:
  """Pair batches and the pairs left out.

  Attributes:
    batches: the pair batches (numpy), each pair in exactly one of them.
    too_long: indices of the pairs whose y+ and y- together exceed seq_len.
    num_pairs: pairs given to `pack_pairs`.
  """

  batches: tuple[dict[str, np.ndarray], ...]
  too_long: tuple[int, ...]
  num_pairs: int


def pack_pairs(pairs: Sequence[PairLayouts], *, batch_size: int, seq_len: int,
               pairs_per_row: int, pad_id: int) -> PackedPairs:
  """Packs laid-out pairs, in order, into pair batches of [batch_size, seq_len].

  Each pair goes to the first row of the current batch with room for both its
  responses and fewer than `pairs_per_row` pairs; a pair that fits no row starts
  the next batch. The last batch is padded with empty rows.
  """
  if batch_size < 1 or seq_len < 2 or pairs_per_row < 1:
    raise ValueError('need batch_size >= 1, seq_len >= 2, pairs_per_row >= 1, got '
                     f'{batch_size}, {seq_len}, {pairs_per_row}')
  batches, too_long = [], []
  rows: list[list[tuple[int, PairLayouts]]] = [[] for _ in range(batch_size)]
  fill = [0] * batch_size
  for i, pair in enumerate(pairs):
    if len(pair) > seq_len:
      too_long.append(i)
      continue
    row = _free_row(rows, fill, len(pair), seq_len, pairs_per_row)
    if row is None:
      batches.append(_pack_rows(rows, seq_len, pairs_per_row, pad_id))
      rows = [[] for _ in range(batch_size)]
      fill = [0] * batch_size
      row = 0
    rows[row].append((i, pair))
    fill[row] += len(pair)
  if any(rows):
    batches.append(_pack_rows(rows, seq_len, pairs_per_row, pad_id))
  return PackedPairs(tuple(batches), tuple(too_long), len(pairs))


def _free_row(rows, fill, length, seq_len, pairs_per_row) -> int | None:
  return next((r for r in range(len(rows))
               if fill[r] + length <= seq_len and len(rows[r]) < pairs_per_row), None)


def _pack_rows(rows: Sequence[Sequence[tuple[int, PairLayouts]]], seq_len: int,
               pairs_per_row: int, pad_id: int) -> dict[str, np.ndarray]:
  # Segment 2k + 1 is pair k's y+, 2k + 2 its y- (`pipeline.pack` numbers the
  # layouts of a row 1, 2, ... in order).
  batch = pipeline.pack([[lay for _, p in row for lay in (p.chosen, p.rejected)]
                         for row in rows], seq_len, pad_id)
  batch['pair_index'] = np.full((len(rows), pairs_per_row), -1, np.int32)
  for r, row in enumerate(rows):
    for k, (i, _) in enumerate(row):
      batch['pair_index'][r, k] = i
  return batch


# -- the frozen reference ------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _jitted_pair_logprobs(model_config: TransformerConfig):
  return jax.jit(functools.partial(pair_logprobs, model_config=model_config))


def reference_logprobs(reference_params, batches: Iterable[Batch], num_pairs: int, *,
                       model_config: TransformerConfig) -> dict[str, np.ndarray]:
  """`pair_logprobs` of every pair, as [num_pairs] float32 numpy arrays by pair index
  (NaN for pairs that no batch holds).

  Computed once per round with the frozen reference params and stored: they are
  only read here (no gradient, nothing donated) and never reach the train step.
  """
  out = {key: np.full(num_pairs, np.nan, np.float32) for key in PAIR_KEYS}
  fn = _jitted_pair_logprobs(model_config)
  for batch in batches:
    fields = {k: batch[k] for k in pipeline.FIELDS + PAIR_FIELDS}
    logps = model_sharding.fetch(fn(reference_params, fields))
    index = np.asarray(batch['pair_index'])
    held = index >= 0
    for key in out:
      out[key][index[held]] = np.asarray(logps[key])[held]
  return out


def with_reference(batch: Batch, reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The pair batch with its pairs' stored reference log-probs as [B, K] fields
  `ref_chosen`, `ref_rejected` (0 where there is no pair)."""
  index = np.asarray(batch['pair_index'])
  out = dict(batch)
  for field, key in zip(REFERENCE_FIELDS, ('chosen', 'rejected')):
    values = np.asarray(reference[key], np.float32)[np.maximum(index, 0)]
    if np.isnan(values[index >= 0]).any():
      raise ValueError(f'the batch holds pairs without a reference {key} log-prob')
    out[field] = np.where(index >= 0, values, 0.0).astype(np.float32)
  return out
