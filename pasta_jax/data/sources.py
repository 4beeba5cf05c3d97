"""The run's data sources and tokenizer, from its config.

`data_sources` opens the splits of the dataset that `config.data` names
(building it if needed); `make_tokenizer` trains the run's tokenizer on the
training split (or wraps a sentencepiece model such as Gemma's). Training,
`prepare` and `evaluate` read data through them.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import ml_collections

from pasta_jax import lang
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.config import ConfigError
from pasta_jax.data import build
from pasta_jax.data import records


def data_sources(data: ml_collections.ConfigDict, splits: Sequence[str]) -> dict:
  """{split: random-access source}, building the TFDS dataset if needed.

  Raises ConfigError for a missing JSONL file or a split the dataset lacks, and
  `errors.DataError` for a bad line or empty split of a JSONL file and for a
  pasta_jsonl dataset built from other inputs than `data` names (a file's contents
  or a setting changed since: the message gives the command that rebuilds it).
  """
  if data.name == 'pasta_jsonl':
    for split, paths in build.jsonl_splits(data).items():
      for path in ((paths,) if isinstance(paths, str) else tuple(paths)):
        if os.path.isdir(path):
          raise ConfigError(f'config.data.jsonl_paths[{split!r}]: {path!r} is a directory, '
                            'not a JSONL file')
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
    yield records.decode_text(record['prompt'])
    yield records.decode_text(record['plain_response'])
    doc = lang.parse(records.decode_text(record['annotated_response']), quantum=1)
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
