"""The training input pipeline: random-access records -> fixed-shape packed batches.

Reads any random-access sequence of records (a `tfds.data_source` over the
ArrayRecord files the builders in `tfds_builders` write: no TensorFlow graph, no
TensorFlow at all), encodes each example with the tokenizer, lays it out with
`pasta_jax.layout` (mode 'pasta': PASTA masks, positions and targets; mode
'sequential': the same documents stripped, causal) and packs several examples into
each row of a [batch, seq_len] batch.

Determinism and resumption: the order of an epoch is a permutation seeded by
(seed, epoch); host h of n takes every n-th example of it, so hosts see disjoint
parts that together cover the data. Every batch starts at an example boundary, so
the iterator state is just (epoch, index into the host's share): `get_state()` after
a batch and `set_state()` on a fresh iterator continue with exactly the same
batches.

A batch is a dict of numpy arrays, all [batch, seq_len]:

  tokens, positions, targets (int32), loss_weights (float32),
  segment (int32, 1.. per packed example, 0 = padding),
  thread, anchor, visible_from, order (int32): the `masks.AttentionMeta` fields.

Within a row, `order` is the row index and each example's anchor/visible_from are
shifted by its start, so `masks.visibility_mask(meta, meta)` gives every example
exactly its own layout's mask and never lets a token see another example.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from pasta_jax import layout
from pasta_jax import masks
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding
from pasta_jax.data import tfds_builders
from pasta_jax.settings import Mode, PositionStrategy

FIELDS = ('tokens', 'positions', 'targets', 'loss_weights', 'segment', 'thread', 'anchor',
          'visible_from', 'order')
STATE_VERSION = 1


def meta_of(batch: Mapping[str, Any]) -> masks.AttentionMeta:
  """The attention metadata of a batch (numpy or jax arrays)."""
  return masks.AttentionMeta(thread=batch['thread'], anchor=batch['anchor'],
                             visible_from=batch['visible_from'], order=batch['order'],
                             segment=batch['segment'])


@dataclasses.dataclass
class Stats:
  """What the iterator has done so far (not part of its state)."""

  examples: int = 0
  dropped_too_long: int = 0
  batches: int = 0
  tokens: int = 0          # non-padding tokens
  slots: int = 0           # batch * seq_len over all batches

  @property
  def fill(self) -> float:
    return self.tokens / self.slots if self.slots else 0.0


class Batches:
  """A deterministic, resumable iterator of packed batches for one host.

  Args:
    source: random-access records (len() and [i]) with `prompt` and
      `annotated_response` text fields (bytes or str).
    tok: the tokenizer.
    mode: 'pasta' or 'sequential'.
    batch_size: rows per batch on this host.
    seq_len: tokens per row.
    seed: seeds the per-epoch order.
    shuffle: permute each epoch (else the source's order).
    num_epochs: stop after this many epochs (None: forever).
    process_index, process_count: this host and the number of hosts.
    position_strategy: the positions a promise reserves (PASTA.md section 3).
    template: how a prompt is rendered (see `encoding.encode_prompt`).
    promise_lengths: 'measured' or 'annotated' (see `encoding.encode_example`).
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], tok: tokenizer_lib.Tokenizer, *,
               mode: Mode | str, batch_size: int, seq_len: int, seed: int = 0,
               shuffle: bool = True, num_epochs: int | None = None,
               process_index: int = 0, process_count: int = 1,
               position_strategy: PositionStrategy = PositionStrategy(),
               template: str = '{prompt}\n', promise_lengths: str = 'measured'):
    if batch_size < 1 or seq_len < 2:
      raise ValueError(f'need batch_size >= 1 and seq_len >= 2, got {batch_size}, {seq_len}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    if len(source) < process_count:
      raise ValueError(f'{len(source)} examples cannot be shared by {process_count} hosts')
    if promise_lengths not in encoding.PROMISE_LENGTHS:
      raise ValueError(f'promise_lengths must be one of {encoding.PROMISE_LENGTHS}, '
                       f'got {promise_lengths!r}')
    self._source, self._tok = source, tok
    self.mode, self.batch_size, self.seq_len = Mode.parse(mode), batch_size, seq_len
    self._seed, self._shuffle, self._num_epochs = seed, shuffle, num_epochs
    self._host, self._hosts = process_index, process_count
    self._position_strategy = position_strategy
    self._template, self._promise_lengths = template, promise_lengths
    self._epoch, self._index = 0, 0
    self._order = self._host_order(0)
    self.stats = Stats()

  # -- state ---------------------------------------------------------------

  def get_state(self) -> dict[str, int]:
    return {'version': STATE_VERSION, 'epoch': self._epoch, 'index': self._index,
            'seed': self._seed, 'process_index': self._host,
            'process_count': self._hosts}

  def set_state(self, state: Mapping[str, int]) -> None:
    if state.get('version') != STATE_VERSION:
      raise ValueError(f'iterator state version {state.get("version")} is not '
                       f'{STATE_VERSION}')
    if state['seed'] != self._seed:
      raise ValueError(f'iterator state has seed {state["seed"]}, this iterator '
                       f'{self._seed}')
    if (state['process_index'], state['process_count']) != (self._host, self._hosts):
      # Another host layout: resume at the same epoch, from the same fraction of it.
      old_share = _share(len(self._source), state['process_index'],
                         state['process_count'])
      fraction = state['index'] / max(old_share, 1)
      self._epoch = state['epoch']
      self._order = self._host_order(self._epoch)
      self._index = min(int(round(fraction * len(self._order))), len(self._order))
      return
    self._epoch, self._index = state['epoch'], state['index']
    self._order = self._host_order(self._epoch)

  # -- iteration -----------------------------------------------------------

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rows: list[list[layout.Layout]] = [[] for _ in range(self.batch_size)]
    fill = [0] * self.batch_size
    while True:
      if self._index >= len(self._order):
        if self._num_epochs is not None and self._epoch + 1 >= self._num_epochs:
          break
        self._epoch += 1
        self._index = 0
        self._order = self._host_order(self._epoch)
      item = self.example(int(self._order[self._index]))
      if len(item) > self.seq_len:
        self.stats.dropped_too_long += 1
        self._index += 1
        continue
      row = next((r for r in range(self.batch_size)
                  if fill[r] + len(item) <= self.seq_len), None)
      if row is None:
        break  # starts the next batch
      rows[row].append(item)
      fill[row] += len(item)
      self._index += 1
      self.stats.examples += 1
    if not any(rows):
      raise StopIteration
    self.stats.batches += 1
    self.stats.tokens += sum(fill)
    self.stats.slots += self.batch_size * self.seq_len
    return pack(rows, self.seq_len, self._tok.pad_id)

  def example(self, index: int) -> layout.Layout:
    """The layout of record `index` in this iterator's mode."""
    record = self._source[index]
    enc = encoding.encode_example(
        tfds_builders.decode_text(record['prompt']),
        tfds_builders.decode_text(record['annotated_response']), self._tok,
        template=self._template, promise_lengths=self._promise_lengths)
    if self.mode is Mode.PASTA:
      return layout.pasta_layout(enc.prompt, enc.response, self._tok.control,
                                 position_strategy=self._position_strategy)
    return layout.sequential_layout(enc.prompt, enc.plain)

  def host_indices(self, epoch: int) -> np.ndarray:
    """The source indices this host reads in `epoch`, in order."""
    return self._host_order(epoch)

  def _host_order(self, epoch: int) -> np.ndarray:
    n = len(self._source)
    if self._shuffle:
      order = np.random.default_rng([self._seed, epoch]).permutation(n)
    else:
      order = np.arange(n)
    return order[self._host::self._hosts]


def _share(n: int, host: int, hosts: int) -> int:
  return len(range(host, n, hosts))


def pack(rows: Sequence[Sequence[layout.Layout]], seq_len: int, pad_id: int
         ) -> dict[str, np.ndarray]:
  """Packs layouts row by row into one padded batch (see the module docstring)."""
  batch = {
      'tokens': np.full((len(rows), seq_len), pad_id, np.int32),
      'positions': np.zeros((len(rows), seq_len), np.int32),
      'targets': np.zeros((len(rows), seq_len), np.int32),
      'loss_weights': np.zeros((len(rows), seq_len), np.float32),
      'segment': np.zeros((len(rows), seq_len), np.int32),
      'thread': np.zeros((len(rows), seq_len), np.int32),
      'anchor': np.zeros((len(rows), seq_len), np.int32),
      'visible_from': np.full((len(rows), seq_len), masks.NEVER, np.int32),
      'order': np.tile(np.arange(seq_len, dtype=np.int32), (len(rows), 1)),
  }
  for r, items in enumerate(rows):
    start = 0
    for s, item in enumerate(items, 1):
      span = slice(start, start + len(item))
      batch['tokens'][r, span] = item.tokens
      batch['positions'][r, span] = item.positions
      batch['targets'][r, span] = item.targets
      batch['loss_weights'][r, span] = item.loss_weights
      batch['segment'][r, span] = s
      batch['thread'][r, span] = item.thread
      # Shift the main clock by the example's start; NEVER stays NEVER.
      batch['anchor'][r, span] = item.anchor + start
      batch['visible_from'][r, span] = np.where(item.visible_from == masks.NEVER,
                                                masks.NEVER, item.visible_from + start)
      start += len(item)
  return batch


class Prefetch:
  """Produces batches in a background thread; `get_state` follows what was yielded."""

  def __init__(self, batches: Batches, size: int = 2):
    self._batches = batches
    self._state = batches.get_state()
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True)
    self._thread.start()

  def _produce(self) -> None:
    while not self._stop.is_set():
      try:
        item = (next(self._batches), self._batches.get_state(), None)
      except StopIteration:
        item = (None, None, StopIteration())
      except Exception as e:  # pylint: disable=broad-except
        item = (None, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch, state, error = self._queue.get()
    if error is not None:
      self._stop.set()
      raise error
    self._state = state
    return batch

  def get_state(self) -> dict[str, int]:
    return dict(self._state)

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)


def describe(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
  """Counts of a batch: examples, tokens, targets by thread kind, fill."""
  weights, thread = batch['loss_weights'], batch['thread']
  segments = collections.Counter()
  for r in range(batch['segment'].shape[0]):
    segments[r] = len(np.unique(batch['segment'][r][batch['segment'][r] > 0]))
  return {
      'examples': float(sum(segments.values())),
      'fill': float((batch['segment'] > 0).mean()),
      'main_targets': float(weights[thread == 0].sum()),
      'async_targets': float(weights[thread > 0].sum()),
  }
