"""The training input pipeline on grain: random-access records -> fixed-shape packed batches.

The examples are a `grain.MapDataset` over any random-access sequence of records
(a `tfds.data_source` over the ArrayRecord files the builders in `tfds_builders`
write: no TensorFlow graph, no TensorFlow at all): grain's global shuffle (a new
permutation each epoch, from the seed), this host's share of it (host h of n
takes every n-th example, so hosts read disjoint parts that together cover the
data), then each record encoded with the tokenizer and laid out with
`pasta_jax.layout` (mode 'pasta': PASTA masks, positions and targets; mode
'sequential': the same documents stripped, causal). grain reads them, in
`workers` processes when asked (`mp_prefetch`, which keeps the order), and
`Batches`, our one own transform, packs several examples into each row of a
[batch, seq_len] batch. `prefetch` puts grain's background thread in front.

Determinism and resumption: every batch starts at an example boundary, so the
iterator state is just (epoch, index into the host's share): `get_state()` after
a batch and `set_state()` on a fresh iterator continue with exactly the same
batches, whatever the number of workers. A state of another host layout resumes
at the same epoch, from the same fraction of it.

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
from typing import Any, Mapping, Sequence

from absl import flags
import grain
import numpy as np

from pasta_jax import errors
from pasta_jax import layout
from pasta_jax import masks
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding
from pasta_jax.data import records
from pasta_jax.settings import Mode, PositionStrategy

FIELDS = ('tokens', 'positions', 'targets', 'loss_weights', 'segment', 'thread', 'anchor',
          'visible_from', 'order')
# 2: grain's shuffle (version 1 was numpy's permutation: another order).
STATE_VERSION = 2


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


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Layout lengths of (the first part of) a host's epoch, against `seq_len`.

  Attributes:
    checked: examples laid out (the first `checked` of the epoch's order: a
      random sample when the order is shuffled).
    total: examples in the host's epoch.
    too_long: checked examples longer than `seq_len` (the pipeline skips them).
    shortest, longest: the extreme lengths among the checked examples.
  """

  checked: int
  total: int
  too_long: int
  shortest: int
  longest: int
  seq_len: int

  @property
  def fraction(self) -> float:
    """The fraction of the checked examples that are too long."""
    return self.too_long / self.checked if self.checked else 0.0

  def merge(self, other: 'Lengths') -> 'Lengths':
    """Both hosts' counts together."""
    return Lengths(self.checked + other.checked, self.total + other.total,
                   self.too_long + other.too_long, min(self.shortest, other.shortest),
                   max(self.longest, other.longest), self.seq_len)


@dataclasses.dataclass(frozen=True, eq=False)
class ToLayout:
  """A record -> its layout in `mode` (a grain map; picklable for worker processes)."""

  tok: tokenizer_lib.Tokenizer
  mode: Mode
  position_strategy: PositionStrategy
  template: str
  promise_lengths: str

  def __call__(self, record: Mapping[str, Any]) -> layout.Layout:
    enc = encoding.encode_example(
        records.decode_text(record['prompt']),
        records.decode_text(record['annotated_response']), self.tok,
        template=self.template, promise_lengths=self.promise_lengths)
    if self.mode is Mode.PASTA:
      return layout.pasta_layout(enc.prompt, enc.response, self.tok.control,
                                 position_strategy=self.position_strategy)
    return layout.sequential_layout(enc.prompt, enc.plain)


class Batches(grain.DatasetIterator):
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
    position_strategy: the positions a promise reserves (docs/design.md section 3).
    template: how a prompt is rendered (see `encoding.encode_prompt`).
    promise_lengths: 'measured' or 'annotated' (see `encoding.encode_example`).
    workers: processes that read and lay out examples (grain's `mp_prefetch`;
      0: this process). The batches are the same for any number.
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], tok: tokenizer_lib.Tokenizer, *,
               mode: Mode | str, batch_size: int, seq_len: int, seed: int = 0,
               shuffle: bool = True, num_epochs: int | None = None,
               process_index: int = 0, process_count: int = 1,
               position_strategy: PositionStrategy = PositionStrategy(),
               template: str = '{prompt}\n', promise_lengths: str = 'measured',
               workers: int = 0):
    super().__init__()
    self._reader: grain.DatasetIterator | None = None
    if batch_size < 1 or seq_len < 2:
      raise ValueError(f'need batch_size >= 1 and seq_len >= 2, got {batch_size}, {seq_len}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    if len(source) < process_count:
      raise ValueError(f'{len(source)} examples cannot be shared by {process_count} hosts')
    if promise_lengths not in encoding.PROMISE_LENGTHS:
      raise ValueError(f'promise_lengths must be one of {encoding.PROMISE_LENGTHS}, '
                       f'got {promise_lengths!r}')
    if workers < 0:
      raise ValueError(f'workers must be >= 0, got {workers}')
    self._source, self._tok = source, tok
    self.mode, self.batch_size, self.seq_len = Mode.parse(mode), batch_size, seq_len
    self._seed, self._shuffle, self._num_epochs = seed, shuffle, num_epochs
    self._host, self._hosts = process_index, process_count
    self._workers = workers
    self._layout = ToLayout(tok, self.mode, position_strategy, template, promise_lengths)
    self._share = _share(len(source), process_index, process_count)
    # The host's examples, epoch after epoch; `_position` indexes them. The
    # example at `_position` may already be read (`_pending`: it did not fit
    # into the last batch).
    self._examples = self._host_stream(grain.MapDataset.source(source)).map(self._layout)
    self._position = 0
    self._pending: layout.Layout | None = None
    # Where the current run of too-long examples began (None: the last one fitted).
    self._too_long_since: int | None = None
    self._shortest_dropped = np.iinfo(np.int64).max
    self.stats = Stats()

  def _host_stream(self, ds: grain.MapDataset) -> grain.MapDataset:
    """`ds` (one item per record) in this host's order, epoch after epoch."""
    if self._shuffle:
      ds = ds.shuffle(seed=self._seed)  # a new permutation each epoch (seed + epoch)
    return ds[self._host::self._hosts].repeat(self._num_epochs)

  # -- state ---------------------------------------------------------------

  def get_state(self) -> dict[str, int]:
    epoch, index = divmod(self._position, self._share)
    return {'version': STATE_VERSION, 'epoch': epoch, 'index': index,
            'seed': self._seed, 'process_index': self._host,
            'process_count': self._hosts}

  def set_state(self, state: Mapping[str, int]) -> None:
    if state.get('version') != STATE_VERSION:
      raise ValueError(f'iterator state version {state.get("version")} is not '
                       f'{STATE_VERSION}')
    if state['seed'] != self._seed:
      raise ValueError(f'iterator state has seed {state["seed"]}, this iterator '
                       f'{self._seed}')
    index = state['index']
    if (state['process_index'], state['process_count']) != (self._host, self._hosts):
      # Another host layout: resume at the same epoch, from the same fraction of it.
      old_share = _share(len(self._source), state['process_index'],
                         state['process_count'])
      fraction = index / max(old_share, 1)
      index = min(int(round(fraction * self._share)), self._share)
    self._position = state['epoch'] * self._share + index
    self._pending = None
    self._too_long_since = None
    self._close_reader()

  # -- iteration -----------------------------------------------------------

  @property
  def share(self) -> int:
    """The examples in one of this host's epochs."""
    return self._share

  def lengths(self, limit: int | None = None, progress: Any = None) -> Lengths:
    """The layout lengths of the first `limit` examples of this host's first
    epoch (all when None), in `workers` processes like the batches.

    `progress`, when given, is called with the number of examples checked so
    far (every 256 and at the end).
    """
    count = self._share if limit is None else min(limit, self._share)
    too_long, shortest, longest = 0, np.iinfo(np.int64).max, 0
    reader = self._read(self._examples[:count])
    try:
      for i, item in enumerate(reader, 1):
        n = len(item)
        too_long += n > self.seq_len
        shortest, longest = min(shortest, n), max(longest, n)
        if progress is not None and (i % 256 == 0 or i == count):
          progress(i)
    finally:
      reader.close()
    return Lengths(count, self._share, too_long, int(shortest) if count else 0, longest,
                   self.seq_len)

  def __next__(self) -> dict[str, np.ndarray]:
    rows: list[list[layout.Layout]] = [[] for _ in range(self.batch_size)]
    fill = [0] * self.batch_size
    while (item := self._peek()) is not None:
      if len(item) > self.seq_len:
        self.stats.dropped_too_long += 1
        if self._too_long_since is None:
          self._too_long_since = self._position
        self._shortest_dropped = min(self._shortest_dropped, len(item))
        epoch_start = -(-self._too_long_since // self._share) * self._share
        if self._position >= epoch_start + self._share - 1:
          # A whole epoch without an example that fits: waiting longer cannot help.
          raise errors.DataError(
              f'every example is longer than seq_len={self.seq_len} tokens (the shortest '
              f'is {self._shortest_dropped}); raise the sequence length')
        self._take()
        continue
      self._too_long_since, self._shortest_dropped = None, np.iinfo(np.int64).max
      row = next((r for r in range(self.batch_size)
                  if fill[r] + len(item) <= self.seq_len), None)
      if row is None:
        break  # starts the next batch
      rows[row].append(item)
      fill[row] += len(item)
      self._take()
      self.stats.examples += 1
    if not any(rows):
      raise StopIteration
    self.stats.batches += 1
    self.stats.tokens += sum(fill)
    self.stats.slots += self.batch_size * self.seq_len
    return pack(rows, self.seq_len, self._tok.pad_id)

  def _peek(self) -> layout.Layout | None:
    """The example at `_position` (None after the last epoch)."""
    if self._pending is None:
      if self._reader is None:
        self._reader = self._read_from(self._position)
      self._pending = next(self._reader, None)
    return self._pending

  def _take(self) -> None:
    self._pending = None
    self._position += 1

  def _read_from(self, position: int) -> grain.DatasetIterator:
    return self._read(self._examples[position:])

  def _read(self, examples: grain.MapDataset) -> grain.DatasetIterator:
    # One reading thread: the layouts are Python work, more threads only contend
    # for the GIL; `workers` processes do them in parallel, in order.
    ds = examples.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=64))
    if self._workers:
      if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    return iter(ds)

  def _close_reader(self) -> None:
    if self._reader is not None:
      self._reader.close()
      self._reader = None

  def close(self) -> None:
    self._close_reader()
    super().close()

  def example(self, index: int) -> layout.Layout:
    """The layout of record `index` in this iterator's mode."""
    return self._layout(self._source[index])

  def host_indices(self, epoch: int) -> np.ndarray:
    """The source indices this host reads in `epoch`, in order."""
    order = self._host_stream(grain.MapDataset.range(len(self._source)))
    return np.asarray([order[epoch * self._share + i] for i in range(self._share)])


def prefetch(batches: Batches, size: int) -> grain.DatasetIterator:
  """`batches` produced `size` ahead in grain's background thread (0: `batches`).

  Its `get_state` follows what was yielded; `close` stops the thread.
  """
  if not size:
    return batches
  return grain.experimental.ThreadPrefetchDatasetIterator(batches, size)


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
