"""Data for training: the splits, train and eval batches.

Each host reads its own rows (`process_index` of `process_count`) with the
input pipeline (`pasta_jax.data.pipeline`); the global batch is assembled on
device by `partitioning.global_batch`.
"""

from __future__ import annotations

import math

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from tqdm import auto as tqdm_auto

from pasta_jax import config as config_lib
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.config import ConfigError
from pasta_jax.data import pipeline
from pasta_jax.data import sources as sources_lib


def data_sources(data: ml_collections.ConfigDict, splits) -> dict:
  """`data.sources.data_sources`, the dataset built by process 0 alone: the
  other hosts wait for it (hosts building one data_dir at once collide on
  TFDS's final rename), then open it."""
  if jax.process_count() == 1:
    return sources_lib.data_sources(data, splits)
  if jax.process_index() == 0:
    try:
      return sources_lib.data_sources(data, splits)
    finally:
      multihost_utils.sync_global_devices('pasta_jax: dataset built')
  multihost_utils.sync_global_devices('pasta_jax: dataset built')
  return sources_lib.data_sources(data, splits)


def batches(config: ml_collections.ConfigDict, source, tok: tokenizer_lib.Tokenizer, *,
            rows: int, train: bool, process_index: int, process_count: int,
            num_epochs: int | None = None) -> pipeline.Batches:
  """This host's pipeline over `source` (`rows` per batch on this host; in
  `data.workers` processes when training)."""
  data = config.data
  return pipeline.Batches(
      source, tok, mode=config_lib.mode(config), batch_size=rows, seq_len=data.seq_len,
      seed=config.seed, shuffle=train, num_epochs=num_epochs,
      process_index=process_index, process_count=process_count,
      position_strategy=config_lib.position_strategy(config),
      template=data.prompt_template, promise_lengths=data.promise_lengths,
      workers=data.workers if train else 0)


def check_lengths(config: ml_collections.ConfigDict, it: pipeline.Batches, split: str, *,
                  show_progress: bool = True) -> str | None:
  """Checks the examples of `split` against `data.seq_len` before training.

  Each host lays out the first `data.length_check` examples of its share (a
  random sample when the split is shuffled) and the counts of all hosts are
  added. Raises a `ConfigError` naming `data.seq_len` when no checked example
  fits, or when more than `data.max_too_long` of them are too long (the
  pipeline would skip them); returns a line that reports skipped examples (None
  when there are none or nothing was checked).
  `show_progress` shows a bar of the examples checked on stderr.
  """
  data = config.data
  if not data.length_check:
    return None
  with tqdm_auto.tqdm(total=min(data.length_check, it.share), unit=' examples', leave=False,
                      desc=f'checking {split} lengths', disable=not show_progress) as bar:
    lengths = it.lengths(data.length_check, progress=lambda n: bar.update(n - bar.n))
  if jax.process_count() > 1:
    counts = multihost_utils.process_allgather(np.asarray(
        [lengths.checked, lengths.total, lengths.too_long, lengths.shortest, lengths.longest],
        np.int64))
    lengths = pipeline.Lengths(int(counts[:, 0].sum()), int(counts[:, 1].sum()),
                               int(counts[:, 2].sum()), int(counts[:, 3].min()),
                               int(counts[:, 4].max()), lengths.seq_len)
  if not lengths.checked or not lengths.too_long:
    return None
  sample = ('' if lengths.checked == lengths.total else
            f' (a random sample of {lengths.checked} of its {lengths.total} examples)')
  if lengths.too_long == lengths.checked:
    checked = ' checked' if sample else ''
    raise ConfigError(f'config.data.seq_len={data.seq_len} is shorter than every {split} '
                      f'example{checked}{sample}: the shortest is {lengths.shortest} tokens, '
                      'raise data.seq_len')
  share = (f'{lengths.too_long} of {lengths.checked} {split} examples{sample} '
           f'({100 * lengths.fraction:.2f}%) are longer than data.seq_len={data.seq_len} '
           f'tokens (the longest is {lengths.longest})')
  if lengths.fraction > data.max_too_long:
    raise ConfigError(f'config.data.seq_len={data.seq_len}: {share} and would be skipped, '
                      f'more than config.data.max_too_long={data.max_too_long} allows; raise '
                      'data.seq_len, or data.max_too_long to train without them')
  return f'{share}; they are skipped'


def _max_over_hosts(value: int) -> int:
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int64(value))))


def _min_over_hosts(value: int) -> int:
  if jax.process_count() == 1:
    return value
  return int(np.min(multihost_utils.process_allgather(np.int64(value))))


def eval_batches(config: ml_collections.ConfigDict, source, tok: tokenizer_lib.Tokenizer,
                 *, rows: int, process_index: int, process_count: int
                 ) -> list[dict[str, np.ndarray]]:
  """This host's share of the eval split, packed once and kept in memory.

  Every host returns the same number of batches (hosts with fewer rows get
  all-padding batches, which have no targets), `eval.num_batches` at most.
  """
  it = batches(config, source, tok, rows=rows, train=False, num_epochs=1,
               process_index=process_index, process_count=process_count)
  limit = config.eval.num_batches or None
  out = []
  for batch in it:
    out.append(batch)
    if limit is not None and len(out) >= limit:
      break
  it.close()
  count = _max_over_hosts(len(out))
  empty = pipeline.pack([[] for _ in range(rows)], config.data.seq_len, tok.pad_id)
  return out + [empty] * (count - len(out))


def steps_for_epochs(config: ml_collections.ConfigDict, source, tok, *, rows: int,
                     process_index: int, process_count: int) -> int:
  """Updates in `train.num_epochs` epochs: packed batches of one epoch (the fewest
  of any host) times the epochs, rounded up."""
  it = batches(config, source, tok, rows=rows, train=True, num_epochs=1,
               process_index=process_index, process_count=process_count)
  count = sum(1 for _ in it)
  it.close()
  per_epoch = _min_over_hosts(count)
  return max(1, math.ceil(config.train.num_epochs * per_epoch))
