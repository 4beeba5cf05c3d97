"""Helpers that several test packages' fixtures share."""

import functools
import importlib.util
import types
from typing import Iterator

from absl import flags
import jax
import pytest

from pasta_jax import benchmarking
from pasta_jax import tokenizer as tokenizer_lib


def fast_compiles() -> Iterator[None]:
  """A fixture body: XLA's optimizations off while the fixture's scope lasts (the
  tests compare programs with themselves or with float tolerances; compile time
  dominates their tiny models)."""
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def load_script(path: str, name: str) -> types.ModuleType:
  """The script at `path` as a module, its absl flags defined in a FlagValues of
  its own: a script's flag names (e.g. --cache_size) may be taken in the global
  FLAGS by a module another test of this process imported."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  own = flags.FlagValues()
  with pytest.MonkeyPatch.context() as patch:
    for define in ('DEFINE_bool', 'DEFINE_enum', 'DEFINE_float', 'DEFINE_integer',
                   'DEFINE_list', 'DEFINE_multi_string', 'DEFINE_string'):
      patch.setattr(flags, define, functools.partial(getattr(flags, define), flag_values=own))
    spec.loader.exec_module(module)
  return module


def synthetic_tokenizer(num_examples: int) -> tokenizer_lib.Tokenizer:
  """A small tokenizer trained on the prompts and plain answers of the first
  `num_examples` synthetic training examples."""
  return benchmarking.synthetic_tokenizer(num_examples, vocab_size=400)


def build_synth(data_dir: str, configs: tuple[str, ...],
                splits: tuple[str, ...] = ('train', 'validation', 'test', 'preference')
                ) -> dict[str, dict[str, list[dict[str, str]]]]:
  """{config: {split: [record as text fields]}} of pasta_synth builds in `data_dir`."""
  from pasta_jax.data import records  # pylint: disable=g-import-not-at-top
  from pasta_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  out = {}
  for name in configs:
    builder = tfds_builders.PastaSynth(config=name, data_dir=data_dir,
                                       file_format=tfds_builders.FILE_FORMAT)
    builder.download_and_prepare()
    out[name] = {}
    for split in splits:
      source = builder.as_data_source(split=split)
      out[name][split] = [{k: records.decode_text(v) for k, v in source[i].items()}
                          for i in range(len(source))]
  return out
