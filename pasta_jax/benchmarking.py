"""What the decoding benchmarks in scripts/ share (bench_interpreter, bench_forced,
bench_batch): a tokenizer trained on the synthetic benchmark, a preset with
random weights and the flags that choose it, interleaved timing, and the forced
workload.

The forced workload needs no training: the synthetic test split's reference
answers, each in two token forms that both decoders are teacher-forced through
token for token (`pasta_jax.interpreter.forcing`): the PASTA annotation through
the PASTA interpreter (every thread's tokens) and its stripped form through
sequential mode. Random weights would never choose the answers, let alone end
them; forced, both decoders do exactly the work a trained model that wrote the
reference would make them do, rounds and tokens included, so their speeds can be
compared on any preset.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Sequence

from absl import flags
import jax
import numpy as np
from tqdm import auto as tqdm_auto

from pasta_jax import cli
from pasta_jax import errors
from pasta_jax import models
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding
from pasta_jax.data import synthetic
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.interpreter import forcing
from pasta_jax.interpreter import results as results_lib


def synthetic_tokenizer(num_examples: int = 1000, vocab_size: int = 512
                        ) -> tokenizer_lib.Tokenizer:
  """A tokenizer trained on the prompts and plain answers of the first
  `num_examples` synthetic training examples (seconds)."""
  texts = []
  for example in synthetic.generate('train', num_examples):
    texts += [example.prompt, example.plain]
  return tokenizer_lib.train_tokenizer(texts, None, vocab_size=vocab_size,
                                       max_promise_tokens=100)


def random_model(preset: str, tok: tokenizer_lib.Tokenizer, *, dtype: str | None = None,
                 vocab_size: int = 0, seed: int = 0):
  """(config, params) of model preset `preset` with random weights.

  `vocab_size` 0 is the tokenizer's (as in the synthetic runs, configs/synth.py);
  a larger one keeps e.g. a public preset's whole embedding and logits.
  `dtype` (None: the preset's) sets the parameter and activation dtypes.

  Raises:
    UsageError: an unknown preset or dtype, or fewer logits than token ids.
  """
  if preset not in models.PRESETS:
    raise errors.UsageError(f'unknown model preset {preset!r}; presets: '
                            f'{", ".join(sorted(models.PRESETS))}')
  if vocab_size and vocab_size < tok.vocab_size:
    raise errors.UsageError(f'a vocabulary of {vocab_size} has fewer logits than the '
                            f"tokenizer's {tok.vocab_size} ids")
  overrides = {'vocab_size': vocab_size or tok.vocab_size}
  if dtype is not None:
    overrides.update(dtype=dtype, param_dtype=dtype)
  try:
    config = models.get_config(preset, **overrides)
  except ValueError as e:  # a dtype the config rejects
    raise errors.UsageError(str(e)) from e
  return config, models.init_params(config, jax.random.key(seed))


def ban(*tokens: int) -> dict[int, float]:
  """A logit bias (`Interpreter.prepare(logit_bias=...)`) that keeps `tokens`
  from being sampled."""
  return {t: -1e9 for t in tokens}


def interleaved(fns: Mapping[str, Callable[[], object]], runs: int, *,
                own_timing: bool = False, progress: str | None = None) -> dict:
  """The minimum seconds of each function over `runs` passes that call them in
  turn, after one untimed call each (compilation and warm-up).

  Each call is timed whole (what it returns is ignored), or, with `own_timing`,
  returns the seconds it measured itself: a float, or a tuple of floats (e.g.
  decode and prefill) whose parts are minimised apart. Interleaving and the
  minimum make the ratios robust to a noisy shared host. `progress`: a tqdm
  bar of that name counts the passes (on stderr).
  """
  passes = tqdm_auto.tqdm(total=runs + 1, desc=progress, unit='pass',
                          disable=progress is None)
  for fn in fns.values():
    fn()
  passes.update()
  best: dict = {}
  for _ in range(runs):
    passes.update()
    for name, fn in fns.items():
      start = time.perf_counter()
      value = fn()
      if not own_timing:
        value = time.perf_counter() - start
      previous = best.get(name, value)
      best[name] = (tuple(map(min, previous, value)) if isinstance(value, tuple)
                    else min(previous, value))
  passes.close()
  return best


class DecoderFlags:
  """The flags of a forced-decoding benchmark: the model (--preset, --dtype,
  --vocab_size), both decoders' settings (--slots, --cache_size, --max_steps,
  --max_threads; defaults: configs/synth.py's, the README models'
  evaluation) and --runs (`interleaved`)."""

  def __init__(self):
    self.preset = flags.DEFINE_string('preset', 'tiny', 'Model preset (random weights): '
                                      f'{", ".join(models.PRESETS)}.')
    self.dtype = flags.DEFINE_string('dtype', None, "Parameter and activation dtype, e.g. "
                                     "bfloat16 (default: the preset's).")
    self.vocab_size = flags.DEFINE_integer(
        'vocab_size', 0, "Logits of the model; 0: the tokenizer's (as the synthetic runs); "
        "e.g. 262144 keeps gemma3_1b's whole embedding and logits.")
    self.slots = flags.DEFINE_integer('slots', 8, 'Thread slots of the PASTA decoder.')
    self.cache_size = flags.DEFINE_integer('cache_size', 448, 'KV-cache entries per request.')
    self.max_steps = flags.DEFINE_integer('max_steps', 512, 'Decode rounds per request.')
    self.max_threads = flags.DEFINE_integer('max_threads', 16, 'Promises per request.')
    self.round_widths = flags.DEFINE_list(
        'round_widths', None, "The PASTA decoder's round widths (InterpreterConfig."
        "round_widths), e.g. 8 for one width, an accelerator's default, on a CPU "
        "(default: the backend's).")
    self.runs = flags.DEFINE_integer('runs', 5, 'Interleaved timing runs (the minimum is '
                                     'kept).')

  def check(self) -> None:
    """UsageErrors for values out of range (before anything is built)."""
    cli.check_positive(self.max_steps, self.max_threads, self.runs)
    cli.check_flag(self.slots, self.slots.value >= 2, 'an int >= 2')
    cli.check_flag(self.vocab_size, self.vocab_size.value >= 0, 'an int >= 0')
    cli.check_flag(self.cache_size, self.cache_size.value >= 2, 'an int >= 2')
    widths = self.widths()
    if self.round_widths.value is not None and not (
        widths and widths[0] >= 1 and widths[-1] == self.slots.value
        and list(widths) == sorted(set(widths))):
      raise errors.UsageError(
          f'--round_widths={",".join(self.round_widths.value)}: expected increasing ints '
          f'>= 1 that end with --slots={self.slots.value}')

  def widths(self) -> tuple[int, ...] | None:
    """--round_widths as ints (None: not given or not all ints)."""
    try:
      return tuple(int(w) for w in self.round_widths.value)
    except (TypeError, ValueError):
      return None

  def model(self, tok: tokenizer_lib.Tokenizer):
    """(config, params): `random_model` of the flags."""
    return random_model(self.preset.value, tok, dtype=self.dtype.value,
                        vocab_size=self.vocab_size.value)

  def interpreters(self, config, params, tok: tokenizer_lib.Tokenizer
                   ) -> dict[str, Interpreter]:
    """{'sequential': ..., 'pasta': ...}: both decoders of one model, with the
    same cache, budget and prompt buckets."""
    shared = dict(cache_size=self.cache_size.value, max_steps=self.max_steps.value,
                  max_threads=self.max_threads.value)
    try:
      return {'sequential': Interpreter(config, params, tok, InterpreterConfig(
                  mode='sequential', slots=1, **shared)),
              'pasta': Interpreter(config, params, tok, InterpreterConfig(
                  slots=self.slots.value, round_widths=self.widths(), **shared))}
    except ValueError as e:  # e.g. no prompt bucket fits the cache
      raise errors.UsageError(str(e)) from e

  def describe(self, config) -> str:
    """One line: the machine, the model and the decoder settings."""
    return (f'jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} '
            f'device(s); {self.preset.value}: {models.count_params(config) / 1e6:.1f}M params, '
            f'{config.param_dtype}, vocab {config.vocab_size}; PASTA S={self.slots.value}'
            f'{"" if self.widths() is None else f", round widths {self.widths()}"}, '
            f'cache {self.cache_size.value}, random weights, greedy')


@dataclasses.dataclass(frozen=True)
class ForcedPrompt:
  """One test example in the token forms the two decoders are forced through.

  Attributes:
    example: the synthetic example (prompt, annotation, plain answer, family).
    prompt: BOS + the rendered prompt.
    response: the reference annotation (training layout, promised lengths
      measured with the tokenizer), EOS last.
    plain: its stripped form, EOS last.
  """

  example: synthetic.Example
  prompt: np.ndarray
  response: np.ndarray
  plain: np.ndarray

  def threads(self, control, *, sequential: bool) -> list[np.ndarray]:
    """The tokens each thread samples (`forcing.thread_tokens`)."""
    return forcing.thread_tokens(self.plain if sequential else self.response, control,
                                 sequential=sequential)


def forced_workload(tok: tokenizer_lib.Tokenizer, num_prompts: int, *,
                    template: str = '{prompt}\n') -> list[ForcedPrompt]:
  """The first `num_prompts` examples of the synthetic test split (every family
  in turn), encoded as in training."""
  out = []
  for example in synthetic.generate('test', num_prompts):
    enc = encoding.encode_example(example.prompt, example.annotated, tok, template=template)
    out.append(ForcedPrompt(example, enc.prompt, enc.response, enc.plain))
  return out


def forcing_rows(workload: Sequence[ForcedPrompt], interp: Interpreter) -> np.ndarray:
  """int32 [N, max_threads + 1, F]: each prompt's `Requests.forced` row for
  `interp` (PASTA or sequential mode), F the longest thread of the whole
  workload, so that one compilation per prompt bucket serves every prompt.

  Raises:
    UsageError: a reference with more promises than the interpreter takes.
  """
  control = interp.tokenizer.control
  sequential = interp.config.sequential
  threads = [p.threads(control, sequential=sequential) for p in workload]
  width = max(len(t) for thread_list in threads for t in thread_list)
  try:
    return np.stack([forcing.thread_forcing(t, interp.engine.num_thread_ids, width)
                     for t in threads])
  except ValueError as e:
    raise errors.UsageError(f'{e}; raise --max_threads') from e


def check_forced(result: results_lib.Result, expected: np.ndarray, index: int,
                 mode: str) -> None:
  """That a forced decode wrote `expected` (the reference, EOS included) token for token.

  Raises:
    UsageError: the decode stopped early on a budget ('budget', 'cache_full').
    DataError: it finished but wrote other tokens (an answer the interpreter's
      grammar settings do not let it replay, e.g. a topic longer than
      max_topic_tokens).
  """
  expected = [int(t) for t in expected]
  where = f'test prompt {index}, {mode} decode'
  if result.status in ('budget', 'cache_full'):
    raise errors.UsageError(
        f'{where}: stopped with status {result.status!r} after {len(result.ids)} of the '
        f'reference\'s {len(expected)} tokens; raise --cache_size or --max_steps')
  if result.status != 'done' or list(result.ids) != expected:
    got = list(result.ids)
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                 min(len(got), len(expected)))
    raise errors.DataError(
        f'{where}: the forced decode did not reproduce the reference (status '
        f'{result.status!r}, {len(got)} tokens for {len(expected)}, first difference at '
        f'token {first})')
