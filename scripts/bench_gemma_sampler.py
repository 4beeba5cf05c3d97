r"""Our sequential decoding against google-deepmind's gemma library sampler, same weights.

  python scripts/bench_gemma_sampler.py                     # 5.9M and 159M, batch 1 and 4
  python scripts/bench_gemma_sampler.py --sizes 6m --batches 1 --new_tokens 16 --runs 2
  python scripts/bench_gemma_sampler.py --venv /path/to/venv --gemma_version 3.3.0

The gemma library (`gemma` on PyPI) is not a dependency of pasta_jax: the first
run makes a virtual environment for it (--venv, default
~/.cache/pasta_jax/gemma-VERSION-venv), upgrades its pip (older pips backtrack
for many minutes over the library's dependencies) and installs
gemma==--gemma_version there, with this interpreter's jax and jaxlib versions
(--same_jax), so both sides run the same XLA. Its side runs in a subprocess of
that venv (scripts/gemma_sampler_worker.py); ours in this process.

Setting (issue 19): Gemma-2-style models (Gemma 2 2B's architecture: local and
global layers alternating, sliding window 128, attention and final soft-caps,
post-attention and post-MLP norms; scaled down to 5.9M and 159M parameters),
float32, random weights (seed --seed), greedy, a --prompt_tokens prompt (BOS
and random text tokens), --new_tokens new tokens, a --cache_size cache, batches
--batches (every request of a batch has its own prompt, all the same length).
The weights are drawn by `models.init_params` and handed to the gemma library
as its own param tree (an .npz of '/'-joined Gemma paths, which our params use
unchanged); the worker refuses them unless their names and shapes are exactly
those of the gemma model's `init`.

The same tokens on both sides: our decoders never sample non-text tokens
(control tags, padding, BOS, unknown: the grammar masks them) and here not EOS
either (a logit bias bans it, so every request writes all its tokens); the
sampler gets those same ids as `forbidden_tokens`. The table counts the
positions where a decoder's tokens differ from the sampler's.

Decoders: the gemma library's `gm.text.Sampler` (prompts unpadded:
pad_length = the prompt's length; its default pads every prompt to 256 tokens);
pasta_jax's interpreter in sequential mode (S = 1); and in PASTA mode (S = 8)
with only its main thread running (promises and `<sync/>` banned), the
"never slower than PASTA with one thread" check.

Timing: every call is one whole generation as a user makes it
(`Sampler.sample(...)`, `Interpreter.generate_batch(...)`), compile time
excluded, the minimum over --runs interleaved runs of all decoders of a model
and batch (the sampler's calls are requests to its worker; a pipe round trip,
microseconds, is inside them). The sampler prefills and decodes in one call, so
decode time is measured the same way on every side, by difference: T(n) is a
generation of n = --new_tokens tokens and T(1) of one token (prefill and first
token), and

  first token = T(1);  decode = (T(n) - T(1)) / (n - 1);  end to end = T(n) / n

per step (a step writes one token of every request of the batch). The sampler's
T(1) includes one decode step (it recomputes the prompt's last token), ours
does not; the differences are n - 1 decode steps on both sides.
"""

from __future__ import annotations

from importlib import metadata
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from pasta_jax import benchmarking
from pasta_jax import cli
from pasta_jax import errors
from pasta_jax import models
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.models import checkpoint

# Gemma 2 2B's architecture scaled down (gemma2_2b overridden by these fields).
SIZES = {
    '6m': dict(num_layers=4, vocab_size=7680, embed_dim=256, hidden_dim=1024, num_heads=4,
               head_dim=64, num_kv_heads=2),
    '159m': dict(num_layers=18, vocab_size=4096, embed_dim=768, hidden_dim=3072,
                 num_heads=12, head_dim=64, num_kv_heads=4),
}
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gemma_sampler_worker.py')
MARK = '@@gemma '  # the worker's reply lines
GEMMA = 'gemma sampler'
SEQUENTIAL = 'pasta_jax sequential (S=1)'
PASTA = 'pasta_jax PASTA (S=8), one thread'

_SIZES = flags.DEFINE_list('sizes', ['6m', '159m'], f'Model sizes: {sorted(SIZES)}.')
_BATCHES = flags.DEFINE_list('batches', ['1', '4'], 'Batch sizes.')
_PROMPT_TOKENS = flags.DEFINE_integer('prompt_tokens', 32, 'Prompt length, BOS included.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 128, 'Tokens generated per request.')
_CACHE_SIZE = flags.DEFINE_integer('cache_size', 256, 'KV-cache entries per request.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Interleaved timing runs (the minimum is kept).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the weights and the prompts.')
_VENV = flags.DEFINE_string('venv', None, 'Virtual environment of the gemma library '
                            '(default ~/.cache/pasta_jax/gemma-VERSION-venv).')
_GEMMA_VERSION = flags.DEFINE_string('gemma_version', '3.3.0', 'The gemma release to install.')
_SAME_JAX = flags.DEFINE_bool('same_jax', True, "Pin the venv's jax and jaxlib to this "
                              "interpreter's versions (the same XLA on both sides).")
_INSTALL = flags.DEFINE_bool('install', True, 'Make the venv and install the gemma library '
                             'when it is not there (else refuse to run).')


def gemma2_style(size: str) -> models.TransformerConfig:
  """A Gemma-2-style float32 config of `size` (SIZES)."""
  return models.get_config('gemma2_2b', **SIZES[size], sliding_window_size=128,
                           query_pre_attn_scalar=None, dtype='float32',
                           param_dtype='float32')


def export_params(params: Any) -> dict[str, np.ndarray]:
  """Our params as the gemma library's param tree, flat: '/'-joined paths
  (`layer_0/attn/q_einsum/w`, ...) -> float32 arrays. Our modules and param
  names are Gemma's (docs/design.md), so the paths are ours unchanged."""
  return {path: np.asarray(x, np.float32) for path, x in checkpoint.flatten(params).items()}


# -- the gemma library's side ---------------------------------------------------


# sentencepiece 0.2.3's sentencepiece_model_pb2 (which gm.text imports) needs
# protobuf 7, and tensorflow (kauldron's dependency) holds protobuf below 7.
EXTRA_REQUIREMENTS = ('sentencepiece<0.2.3',)


def _installed(python: str) -> dict[str, str] | str:
  """{package: version} of gemma, jax and jaxlib in the venv of `python` once
  `gm.text.Sampler` imports there, else why not."""
  code = ('import importlib.metadata as m, json\n'
          'from gemma import gm\n'
          'gm.text.Sampler, gm.text.Tokenizer\n'
          'print(json.dumps({p: m.version(p) for p in ("gemma", "jax", "jaxlib")}))')
  out = subprocess.run([python, '-c', code], capture_output=True, text=True)
  if out.returncode:
    return (out.stderr.strip().splitlines() or [f'exit status {out.returncode}'])[-1]
  return json.loads(out.stdout.strip().splitlines()[-1])


def gemma_python(venv: str, version: str, *, same_jax: bool, install: bool) -> str:
  """The python of a venv where gemma==`version` imports (made and installed if
  needed)."""
  python = os.path.join(venv, 'bin', 'python')
  wanted = {'gemma': version}
  if same_jax:
    wanted.update(jax=jax.__version__, jaxlib=metadata.version('jaxlib'))

  def problem() -> str | None:
    """Why the venv cannot run the worker (None: it can)."""
    if not os.path.exists(python):
      return f'no {python}'
    found = _installed(python)
    if isinstance(found, str):
      return found
    if any(found.get(p) != v for p, v in wanted.items()):
      return f'it has {found}'
    return None

  why = problem()
  if why is None:
    return python
  if not install:
    raise errors.UsageError(f'--venv={venv} lacks a working {wanted} ({why}); run '
                            'without --noinstall to install them there')
  print(f'installing {wanted} into {venv} (pip prints below)', file=sys.stderr)
  steps = [[sys.executable, '-m', 'venv', venv],
           [python, '-m', 'pip', 'install', '--upgrade', 'pip'],
           [python, '-m', 'pip', 'install', *(f'{p}=={v}' for p, v in wanted.items()),
            *EXTRA_REQUIREMENTS]]
  for step in steps[0 if not os.path.exists(python) else 1:]:
    if subprocess.run(step, stdout=sys.stderr).returncode:
      raise errors.UsageError(f'`{" ".join(step)}` failed (its output is above); try another '
                              '--gemma_version, or --nosame_jax')
  why = problem()
  if why is not None:
    raise errors.UsageError(f'gemma=={version} does not work in {venv} after installing: {why}')
  return python


class GemmaWorker:
  """gm.text.Sampler in a subprocess of the gemma venv (scripts/gemma_sampler_worker.py)."""

  def __init__(self, python: str, spec: Mapping[str, Any], workdir: str):
    spec_path = os.path.join(workdir, 'spec.json')
    with open(spec_path, 'w', encoding='utf-8') as f:
      json.dump(spec, f)
    self._proc = subprocess.Popen([python, WORKER, spec_path], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    self.info = self._reply()

  def _reply(self) -> dict[str, Any]:
    for line in self._proc.stdout:
      if line.startswith(MARK):
        message = json.loads(line[len(MARK):])
        if 'error' in message:
          self._proc.wait()
          raise errors.CheckpointError(message['error'])
        return message
    raise RuntimeError(f'the gemma worker exited with status {self._proc.wait()} '
                       '(its messages are above)')

  def sample(self, batch: int, new_tokens: int, tokens: bool = False) -> list[list[int]] | None:
    """One `Sampler.sample` of the first `batch` prompts; their tokens if asked."""
    self._proc.stdin.write(json.dumps(
        {'batch': batch, 'new_tokens': new_tokens, 'tokens': tokens}) + '\n')
    self._proc.stdin.flush()
    return self._reply()['tokens']

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.write('\n')
      self._proc.stdin.close()
      self._proc.wait()


def gemma_spec(config: models.TransformerConfig, params_path: str,
               prompts: np.ndarray, tok: tokenizer_lib.Tokenizer, forbidden: Sequence[int],
               cache_size: int, new_tokens: int) -> dict[str, Any]:
  """What the worker needs (its docstring): prompts without their BOS."""
  if not (prompts[:, 0] == tok.bos_id).all():
    raise ValueError('every prompt must begin with BOS')
  return {'config': config.to_dict(), 'params': params_path,
          'prompts': prompts[:, 1:].tolist(),
          'special': {'pad': tok.pad_id, 'eos': tok.eos_id, 'bos': tok.bos_id,
                      'unk': tok.unk_id},
          'forbidden': [int(t) for t in forbidden], 'cache_length': cache_size,
          'new_tokens': new_tokens}


# -- our side --------------------------------------------------------------------


def banned(tok: tokenizer_lib.Tokenizer) -> dict[int, float]:
  """Logit biases that ban what the grammar would still allow besides text: EOS,
  and in PASTA mode promises and `<sync/>` (one thread, every token written)."""
  c = tok.control
  return benchmarking.ban(c.eos, c.promise, c.sync)


def our_decoders(config: models.TransformerConfig, params: Any,
                 tok: tokenizer_lib.Tokenizer, *, prompt_tokens: int, cache_size: int,
                 new_tokens: int) -> dict[tuple[str, int], Interpreter]:
  """{(decoder, tokens): Interpreter} generating `tokens` = 1 and `new_tokens`
  tokens per request, sequential and PASTA mode."""
  modes = {SEQUENTIAL: dict(mode='sequential', slots=1),
           PASTA: dict(mode='pasta', slots=8, max_threads=8)}
  return {(name, n): Interpreter(config, params, tok, InterpreterConfig(
              cache_size=cache_size, max_steps=n, **mode), buckets=(prompt_tokens,))
          for name, mode in modes.items() for n in (1, new_tokens)}


def our_functions(decoders: Mapping[tuple[str, int], Interpreter], prompts: np.ndarray,
                  bias: Mapping[int, float]) -> dict[tuple[str, int], Callable[[], Any]]:
  """One whole generation of `prompts` per decoder, waited for."""
  def generation(interp):
    batch = interp.prepare(list(prompts), logit_bias=dict(bias))
    return lambda: jax.block_until_ready(interp.generate_batch(batch).out_len)
  return {key: generation(interp) for key, interp in decoders.items()}


def our_tokens(interp: Interpreter, prompts: np.ndarray,
               bias: Mapping[int, float]) -> list[list[int]]:
  """The tokens `interp` samples for each prompt, in order (read from the state:
  `results` would decode them with the tokenizer, which has fewer pieces than
  the model has logits)."""
  state = interp.generate_batch(interp.prepare(list(prompts), logit_bias=dict(bias)))
  out_token, out_len = np.asarray(state.out_token), np.asarray(state.out_len)
  return [out_token[b, :out_len[b]].tolist() for b in range(len(prompts))]


# -- the table -------------------------------------------------------------------


def mismatches(tokens: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> int:
  """Positions where `tokens` differ from `reference` (a missing token counts)."""
  return sum(max(len(a), len(b)) - sum(x == y for x, y in zip(a, b))
             for a, b in zip(tokens, reference, strict=True))


def timing_row(best: Mapping[tuple[str, int], float], decoder: str,
               new_tokens: int) -> dict[str, float]:
  """ms of the first token, ms per decode step and ms per step end to end, from
  the best times (s) of generations of 1 and `new_tokens` tokens."""
  t1, tn = best[decoder, 1], best[decoder, new_tokens]
  return {'first': 1e3 * t1, 'decode': 1e3 * (tn - t1) / (new_tokens - 1),
          'end_to_end': 1e3 * tn / new_tokens}


def table_rows(model: str, batch: int, best: Mapping[tuple[str, int], float],
               new_tokens: int, unlike_gemma: Mapping[str, int]) -> list[str]:
  """The Markdown rows of one model and batch."""
  gemma = timing_row(best, GEMMA, new_tokens)
  rows = []
  for decoder in (GEMMA, SEQUENTIAL, PASTA):
    r = timing_row(best, decoder, new_tokens)
    rows.append(f'| {model} | {batch} | {decoder} | {r["first"]:.2f} | {r["decode"]:.3f} | '
                f'{r["end_to_end"]:.3f} | {r["decode"] / gemma["decode"]:.2f} | '
                f'{r["end_to_end"] / gemma["end_to_end"]:.2f} | '
                f'{unlike_gemma.get(decoder, 0)} |')
  return rows


HEADER = ('| model | batch | decoder | first token (ms) | decode (ms/step) | '
          'end to end (ms/step) | decode / gemma | end to end / gemma | '
          'tokens unlike gemma\'s |\n|---|---|---|---|---|---|---|---|---|')


def bench_model(size: str, batches: Sequence[int], tok: tokenizer_lib.Tokenizer,
                python: str, workdir: str) -> tuple[list[str], list[str]]:
  """(table rows, sequential-vs-PASTA rows) of one model size."""
  new_tokens, runs = _NEW_TOKENS.value, _RUNS.value
  config = gemma2_style(size)
  params = models.init_params(config, jax.random.key(_SEED.value))
  model = f'{size} ({models.count_params(config) / 1e6:.1f}M)'
  decoders = our_decoders(config, params, tok, prompt_tokens=_PROMPT_TOKENS.value,
                          cache_size=_CACHE_SIZE.value, new_tokens=new_tokens)
  is_text = decoders[SEQUENTIAL, 1].tables.is_text
  rng = np.random.default_rng(_SEED.value)
  prompts = np.concatenate(
      [np.full((max(batches), 1), tok.bos_id),
       rng.choice(np.flatnonzero(is_text), (max(batches), _PROMPT_TOKENS.value - 1))],
      axis=1).astype(np.int32)
  params_path = os.path.join(workdir, f'{size}.npz')
  np.savez(params_path, **export_params(params))
  bias = banned(tok)
  worker = GemmaWorker(python, gemma_spec(
      config, params_path, prompts, tok, np.flatnonzero(~is_text), _CACHE_SIZE.value,
      new_tokens), workdir)
  rows, ratios = [], []
  try:
    print(f'{size}: gemma {worker.info["gemma"]}, jax {worker.info["jax"]} '
          f'({worker.info["platform"]}) in the worker', file=sys.stderr)
    for batch in batches:
      fns = our_functions(decoders, prompts[:batch], bias)
      for n in (1, new_tokens):
        fns[GEMMA, n] = lambda n=n: worker.sample(batch, n)
      best = benchmarking.interleaved(fns, runs)
      reference = worker.sample(batch, new_tokens, tokens=True)
      unlike = {name: mismatches(our_tokens(decoders[name, new_tokens], prompts[:batch], bias),
                                 reference) for name in (SEQUENTIAL, PASTA)}
      rows += table_rows(model, batch, best, new_tokens, unlike)
      seq, pasta = (timing_row(best, d, new_tokens) for d in (SEQUENTIAL, PASTA))
      ratios.append(f'| {model} | {batch} | {seq["decode"] / pasta["decode"]:.2f} | '
                    f'{seq["end_to_end"] / pasta["end_to_end"]:.2f} |')
  finally:
    worker.close()
  return rows, ratios


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = sorted(set(_SIZES.value) - set(SIZES))
  if unknown:
    raise errors.UsageError(f'--sizes: unknown sizes {unknown}; sizes: {sorted(SIZES)}')
  try:
    batches = [int(b) for b in _BATCHES.value]
  except ValueError:
    batches = []
  cli.check_flag(_BATCHES, batches and min(batches) >= 1, 'a list of ints >= 1')
  cli.check_positive(_RUNS)
  cli.check_flag(_PROMPT_TOKENS, _PROMPT_TOKENS.value >= 2, 'an int >= 2 (BOS and text)')
  cli.check_flag(_NEW_TOKENS, _NEW_TOKENS.value >= 2, 'an int >= 2 (decode is T(n) - T(1))')
  cli.check_flag(_CACHE_SIZE, _CACHE_SIZE.value >= _PROMPT_TOKENS.value + _NEW_TOKENS.value,
                 f'at least --prompt_tokens + --new_tokens = '
                 f'{_PROMPT_TOKENS.value + _NEW_TOKENS.value}')
  venv = _VENV.value or os.path.expanduser(
      f'~/.cache/pasta_jax/gemma-{_GEMMA_VERSION.value}-venv')
  python = gemma_python(venv, _GEMMA_VERSION.value, same_jax=_SAME_JAX.value,
                        install=_INSTALL.value)
  tok = benchmarking.synthetic_tokenizer()
  print(f'jax {jax.__version__}, {jax.devices()[0].platform}; greedy, float32, '
        f'{_PROMPT_TOKENS.value}-token prompts, {_NEW_TOKENS.value} new tokens, cache '
        f'{_CACHE_SIZE.value}, min of {_RUNS.value} interleaved runs\n')
  rows, ratios = [], []
  with tempfile.TemporaryDirectory() as workdir:
    for size in _SIZES.value:
      r, q = bench_model(size, batches, tok, python, workdir)
      rows += r
      ratios += q
  print(HEADER)
  print('\n'.join(rows))
  print('\n| model | batch | sequential / PASTA one thread, decode | end to end |')
  print('|---|---|---|---|')
  print('\n'.join(ratios))


if __name__ == '__main__':
  cli.run(main)
