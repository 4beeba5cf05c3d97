"""Data for training: the dataset's splits, the tokenizer, train and eval batches.

Each host reads its own rows (`process_index` of `process_count`) with the
input pipeline (`pasta_jax.data.pipeline`); the global batch is assembled on
device by `partitioning.global_batch`.
"""

from __future__ import annotations

import math
import os
from typing import Iterator, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from pasta_jax import lang
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import build
from pasta_jax.data import pipeline
from pasta_jax.data import tfds_builders
from pasta_jax.training import config as config_lib
from pasta_jax.training.config import ConfigError


def data_sources(data: ml_collections.ConfigDict, splits: Sequence[str]) -> dict:
  """{split: random-access source}, building the TFDS dataset if needed.

  Raises ConfigError for a missing JSONL file or a split the dataset lacks.
  """
  if data.name == 'pasta_jsonl':
    for split, paths in dict(data.jsonl_paths).items():
      for path in ((paths,) if isinstance(paths, str) else tuple(paths)):
        if not os.path.isfile(path):
          raise ConfigError(f'config.data.jsonl_paths[{split!r}]: JSONL file {path!r} '
                            'does not exist')
  builder = build.builder(data)
  available = sorted(builder.info.splits)
  missing = [s for s in splits if s not in available]
  if missing:
    raise ConfigError(f'dataset {builder.info.full_name} in {builder.data_dir} has no '
                      f'split(s) {missing}; it has {available} (config.data.jsonl_paths '
                      'names the files of each split, config.eval.split the one to '
                      'validate on)')
  return {split: builder.as_data_source(split=split) for split in splits}


def tokenizer_texts(source, limit: int) -> Iterator[str]:
  """Prompts, plain responses and promise topics of the first `limit` records."""
  for i in range(min(limit, len(source))):
    record = source[i]
    yield tfds_builders.decode_text(record['prompt'])
    yield tfds_builders.decode_text(record['plain_response'])
    doc = lang.parse(tfds_builders.decode_text(record['annotated_response']), quantum=1)
    for promise in doc.promises:
      yield promise.topic


def make_tokenizer(config: ml_collections.ConfigDict, train_source) -> tokenizer_lib.Tokenizer:
  """The tokenizer the config asks for (deterministic, so every host builds the same).

  `tokenizer.path` '': trained on the training split (`tokenizer.vocab_size`,
  `tokenizer.num_texts`); else a sentencepiece model (e.g. Gemma's) wrapped by
  `Tokenizer.from_pretrained`, its reserved pieces becoming the control tokens.
  """
  data = config.data
  if config.tokenizer.path:
    path = os.path.expanduser(config.tokenizer.path)
    if not os.path.isfile(path):
      raise ConfigError(f'config.tokenizer.path={config.tokenizer.path!r}: no such file '
                        '(expected a sentencepiece .model file, e.g. Gemma\'s)')
    return tokenizer_lib.Tokenizer.from_pretrained(
        path, max_promise_tokens=data.max_promise_tokens, quantum=data.quantum)
  return tokenizer_lib.train_tokenizer(
      tokenizer_texts(train_source, config.tokenizer.num_texts), None,
      vocab_size=config.tokenizer.vocab_size, max_promise_tokens=data.max_promise_tokens,
      quantum=data.quantum, seed=config.seed)


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
