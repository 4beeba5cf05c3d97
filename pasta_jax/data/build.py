r"""Builds the project's TFDS datasets offline (ArrayRecord, no TensorFlow).

The synthetic benchmark (sizes from the builder config: `default` or `tiny`):

  python -m pasta_jax.data.build --dataset=pasta_synth --config=default --data_dir=~/tensorflow_datasets

A dataset of your own annotated responses from JSONL files (`prompt`,
`annotated_response`, optional `family`, `facts` and any extras), skipping and
counting bad lines instead of stopping at the first:

  python -m pasta_jax.data.build --dataset=pasta_jsonl --name=slimorca_pasta \
      --train=train.jsonl --validation=val.jsonl --on_error=skip --data_dir=DIR

Building is idempotent: an existing build is reused while its inputs are the same
(each JSONL file's sha256, --on_error, --quantum, --max_promise_tokens, recorded with
the dataset); when they changed, this command deletes the old build and builds it
again, and says so. Training (`pasta_jax.data.sources`) refuses a stale build instead,
with the command that rebuilds it. Errors are one line, `error: ...`, with exit
status 2 (a flag, or an input file that does not exist) or 3 (what a file holds:
`path:line: problem`, an empty split), as `pasta_jax/errors.py` lists.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import shlex
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax import lang

SPLITS = ('train', 'validation', 'test')


def default_data_dir() -> str:
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def builder(data_config, data_dir: str | None = None, *, prepare: bool = True,
            rebuild_stale: bool = False):
  """The TFDS builder that `data_config` (a config's `data` field) names, built.

  `data_config.name` is 'pasta_synth' (with `tfds_config`, e.g. 'default' or
  'tiny') or 'pasta_jsonl' (with `jsonl_name`, `jsonl_paths` {split: path},
  `on_error`, `quantum`, `max_promise_tokens`).

  A pasta_jsonl build whose inputs changed since (a file's contents, a split, a
  setting) is stale: with `rebuild_stale` it is deleted and built again (the
  result's `rebuilt` lists why); else it raises DataError with the command that
  rebuilds it. (With `prepare=False` nothing is built, checked or rebuilt.)
  """
  from pasta_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  data_dir = data_dir or data_config.get('data_dir') or default_data_dir()
  name = data_config.name
  if name == 'pasta_synth':
    result = tfds_builders.PastaSynth(config=data_config.get('tfds_config', 'default'),
                                      data_dir=data_dir,
                                      file_format=tfds_builders.FILE_FORMAT)
  elif name == 'pasta_jsonl':
    result = _jsonl_builder(data_config, data_dir)
    changes = result.changes() if prepare else []
    if changes:
      where = f'dataset {result.info.full_name} in {result.data_dir}'
      if not rebuild_stale:
        raise errors.DataError(
            f'{where} was built from other inputs: {"; ".join(changes)}.\n'
            f'Rebuild it: {build_command(data_config, data_dir)}')
      logging.warning('%s is stale (%s); rebuilding it', where, '; '.join(changes))
      result.data_path.rmtree()
      result = _jsonl_builder(data_config, data_dir)
    result.rebuilt = changes
  else:
    raise ValueError(f"unknown dataset {name!r}; expected 'pasta_synth' or 'pasta_jsonl'")
  if prepare:
    result.download_and_prepare()
  return result


def jsonl_splits(data_config) -> dict:
  """`jsonl_paths` {split: path or paths} without the splits given no file (an empty
  string or list), so that a config can offer a split to fill in on the command line
  (configs/gemma_sft.py's `test`)."""
  return {split: paths for split, paths in dict(data_config.jsonl_paths).items() if paths}


def _jsonl_builder(data_config, data_dir: str):
  from pasta_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  config = tfds_builders.PastaJsonlConfig(
      name=data_config.jsonl_name, paths=jsonl_splits(data_config),
      on_error=data_config.get('on_error', 'fail'),
      quantum=data_config.get('quantum', lang.DEFAULT_QUANTUM),
      max_promise_tokens=data_config.get('max_promise_tokens',
                                         tfds_builders.DEFAULT_MAX_PROMISE_TOKENS))
  return tfds_builders.PastaJsonl(config=config, data_dir=data_dir,
                                  file_format=tfds_builders.FILE_FORMAT)


def build_command(data_config, data_dir: str) -> str:
  """The command line that builds the pasta_jsonl dataset `data_config` names."""
  words = ['python', '-m', 'pasta_jax.data.build', '--dataset=pasta_jsonl',
           f'--name={data_config.jsonl_name}']
  for split, paths in jsonl_splits(data_config).items():
    words += [f'--{split}={path}' for path in ((paths,) if isinstance(paths, str) else paths)]
  from pasta_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  for key, default in (('on_error', 'fail'), ('quantum', lang.DEFAULT_QUANTUM),
                       ('max_promise_tokens', tfds_builders.DEFAULT_MAX_PROMISE_TOKENS)):
    if data_config.get(key, default) != default:
      words.append(f'--{key}={data_config.get(key)}')
  words.append(f'--data_dir={data_dir}')
  return shlex.join(words)


def main(argv: Sequence[str]) -> None:
  """The command line (flags are defined only when this module is run)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  import ml_collections  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict({'name': _DATASET.value, 'tfds_config': _CONFIG.value,
                                    'on_error': _ON_ERROR.value})
  if _DATASET.value == 'pasta_jsonl':
    paths = {split: tuple(flag.value) for split, flag in _SPLITS.items() if flag.value}
    if not _NAME.value or not paths:
      raise app.UsageError('pasta_jsonl needs --name and at least one of --train, '
                           '--validation, --test')
    if not re.fullmatch(r'[A-Za-z0-9_.-]+', _NAME.value):
      raise errors.UsageError(f'--name={_NAME.value}: use letters, digits, "_", "." and "-" '
                              '(it names a directory)')
    for split, split_paths in paths.items():
      for path in split_paths:
        if os.path.isdir(path):
          raise errors.UsageError(f'--{split}={path}: a directory; give a JSONL file')
        if not os.path.isfile(path):
          raise errors.UsageError(f'--{split}={path}: no such file')
    if _QUANTUM.value < 1 or _MAX_TOKENS.value < 0 or _MAX_TOKENS.value % _QUANTUM.value:
      raise errors.UsageError(
          f'--max_promise_tokens={_MAX_TOKENS.value} must be a non-negative multiple of '
          f'--quantum={_QUANTUM.value} (>= 1)')
    data.jsonl_name, data.jsonl_paths = _NAME.value, paths
    data.quantum, data.max_promise_tokens = _QUANTUM.value, _MAX_TOKENS.value
  else:
    from pasta_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
    configs = [c.name for c in tfds_builders.PastaSynth.BUILDER_CONFIGS]
    if _CONFIG.value not in configs:
      raise errors.UsageError(f'--config={_CONFIG.value}: pasta_synth has configs {configs}')
  if not flags.FLAGS.verbose:
    _quiet_tfds()
  built = builder(data, _DATA_DIR.value, rebuild_stale=True)
  rebuilt = getattr(built, 'rebuilt', None)
  note = f' (rebuilt: {"; ".join(rebuilt)})' if rebuilt else ''
  print(f'{built.info.full_name} in {built.data_dir}{note}')
  skipped = dict(built.info.metadata or {}).get('skipped') if _DATASET.value == 'pasta_jsonl' else None
  for split, info in built.info.splits.items():
    counts = (skipped or {}).get(split)
    bad = f'; skipped {sum(counts.values())} bad lines: {counts}' if counts else ''
    print(f'  {split}: {info.num_examples} examples{bad}')


def _quiet_tfds() -> None:
  """Keeps TFDS's INFO and WARNING lines (and, off a terminal, its progress bars) off stderr."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  tfds_dir = f'{os.sep}tensorflow_datasets{os.sep}'
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= py_logging.ERROR or tfds_dir not in record.pathname)


def _define_flags() -> None:
  global _DATASET, _CONFIG, _NAME, _DATA_DIR, _ON_ERROR, _QUANTUM, _MAX_TOKENS, _SPLITS
  from pasta_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  _DATASET = flags.DEFINE_enum('dataset', 'pasta_synth', ['pasta_synth', 'pasta_jsonl'],
                               'Which dataset to build.')
  _CONFIG = flags.DEFINE_string('config', 'default', 'pasta_synth builder config.')
  _NAME = flags.DEFINE_string('name', None, 'pasta_jsonl: the dataset config name.')
  _DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
  _ON_ERROR = flags.DEFINE_enum('on_error', 'fail', ['fail', 'skip'],
                                'pasta_jsonl: what to do with a bad line.')
  _QUANTUM = flags.DEFINE_integer('quantum', lang.DEFAULT_QUANTUM,
                                  'pasta_jsonl: promised lengths are multiples of it '
                                  '(config.data.quantum).')
  _MAX_TOKENS = flags.DEFINE_integer('max_promise_tokens',
                                     tfds_builders.DEFAULT_MAX_PROMISE_TOKENS,
                                     'pasta_jsonl: the largest promised length, that of '
                                     'the last length token (config.data.max_promise_tokens).')
  _SPLITS = {split: flags.DEFINE_multi_string(split, [], f'pasta_jsonl: {split} JSONL file(s).')
             for split in SPLITS}


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
