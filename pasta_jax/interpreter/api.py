"""Host-level API: `Interpreter(...).generate(prompts)` and a step-by-step stream.

    interp = Interpreter(model_config, params, tokenizer, InterpreterConfig(slots=8))
    results = interp.generate(['spell and reverse each word, then join them: a) owl'])
    results[0].text          # the final answer
    results[0].annotated     # the annotated document (PASTA-LANG, training layout)
    results[0].threads       # per-thread token spans
    results[0].steps, results[0].total_tokens, results[0].parallelism

Prompts are padded to a few length buckets, so one compilation serves every
prompt of a bucket; the whole generation of a batch is one jitted call. A prompt
longer than the largest bucket (`max_prompt_tokens`, at most the cache size) is
not decoded: its result has status 'prompt_too_long' and a `detail` saying what
would fit, and the other prompts decode as they would without it.

A request may begin with a forced prefix (`prefix=`: token ids the main thread
writes first, checked against the grammar, e.g. promise tags), after which it
decodes freely; prefixes are padded to a few width buckets too
(`PREFIX_BUCKETS`), so they do not compile a program per prompt either.

Below `generate` the programs are public one by one: `prepare` pads prompts and
makes their requests (a `Batch`), `generate_batch` runs the whole generation of a
batch, and `prefill`, `decode` and `step` its parts; `results` reads a `State`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding
from pasta_jax.interpreter import engine as engine_lib
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter import results as results_lib
from pasta_jax.interpreter import sampling
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.interpreter.results import Result, ThreadSpan, Timing
from pasta_jax.interpreter.state import (NOT_FORCED, RUNNING, Requests, State,
                                         make_requests, no_forcing)
from pasta_jax.models import sharding as sharding_lib
from pasta_jax.models.config import TransformerConfig

if TYPE_CHECKING:
  from pasta_jax import runs

__all__ = ['Batch', 'Interpreter', 'PromptTooLongError', 'Result', 'ThreadSpan', 'Timing']

PromptTooLongError = results_lib.PromptTooLongError

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)
# Widths F of `Requests.forced` for forced prefixes: a batch's prefixes are
# padded (with NOT_FORCED) to the smallest that holds the longest.
PREFIX_BUCKETS = (16, 32, 64, 128, 256, 512)
# The `State` fields that `results` reads.
_OUTPUTS = ('out_token', 'out_thread', 'out_round', 'out_len', 'status', 'steps',
            'out_logits')


@dataclasses.dataclass(frozen=True)
class Batch:
  """Requests ready for the interpreter's programs (`Interpreter.prepare`).

  Attributes:
    prompt_BT: int32 [B, T], the prompts padded with the pad id to a bucket T.
    prompt_len_B: int32 [B], their lengths.
    requests: per-request sampling inputs (PRNG keys, temperature, top_p,
      forced tokens, logit bias).
  """

  prompt_BT: np.ndarray
  prompt_len_B: np.ndarray
  requests: Requests

  @property
  def size(self) -> int:
    """B, the requests of the batch."""
    return len(self.prompt_len_B)


def request_axes(rules: Sequence[tuple[str, Any]]) -> tuple[str, ...]:
  """The mesh axes that split a batch of requests: those of the logical 'batch' axis."""
  axes = nn.logical_to_mesh_axes(('batch',), rules)[0]
  return (axes,) if isinstance(axes, str) else tuple(axes or ())


def request_sharding(mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]],
                     ndim: int) -> jax.sharding.NamedSharding:
  """The sharding of a per-request array with `ndim` axes ([B, ...]): B split over
  `request_axes`, the rest whole."""
  spec = jax.sharding.PartitionSpec(request_axes(rules) or None, *([None] * (ndim - 1)))
  return jax.sharding.NamedSharding(mesh, spec)


class Interpreter:
  """Runs PASTA (or, in sequential mode, plain) generation for a model."""

  def __init__(self, model_config: TransformerConfig, params: Any,
               tok: tokenizer_lib.Tokenizer, config: InterpreterConfig, *,
               template: str = '{prompt}\n', buckets: Sequence[int] = DEFAULT_BUCKETS,
               mesh: jax.sharding.Mesh | None = None,
               rules: Sequence[tuple[str, Any]] | None = None):
    """Args:
      model_config, params: the model (params may already be sharded).
      tok: the tokenizer (its control tokens drive the grammar).
      config: the interpreter's static settings.
      template: how a prompt is rendered (as in training, see data.encoding).
      buckets: prompt lengths are padded up to the next bucket.
      mesh, rules: run sharded: params on the mesh by the logical axis rules
        (default `models.sharding.default_rules`), requests split over the
        mesh axes of the logical 'batch' axis. The batch is padded to a
        multiple of that split.
    """
    if model_config.vocab_size < tok.vocab_size:
      raise ValueError(f'the model has {model_config.vocab_size} logits but the '
                       f'tokenizer {tok.vocab_size} ids')
    self.model_config = model_config
    self.params = params
    self.tokenizer = tok
    self.config = config
    self.template = template
    self._all_buckets = tuple(sorted(buckets))
    self.buckets = tuple(b for b in self._all_buckets if b <= config.cache_size)
    if not self.buckets:
      raise ValueError(f'no prompt bucket fits the cache of {config.cache_size} entries')
    self.mesh = mesh
    self.rules = None
    self._batch_split = 1
    if mesh is not None:
      self.rules = list(rules or sharding_lib.default_rules(model_config, mesh))
      self.params = jax.tree.map(
          sharding_lib.put, params, sharding_lib.param_shardings(model_config, mesh, self.rules))
      self._batch_split = math.prod(mesh.shape[a] for a in request_axes(self.rules))
    self.tables = grammar.TokenTables.build(tok.control, model_config.vocab_size,
                                            unk=tok.unk_id)
    self.engine = engine_lib.Engine(engine_lib.decoding_model(model_config), config,
                                    self.tables)
    self.compilations = 0  # traces of the whole-generation program
    self._generate = jax.jit(self._generate_fn)
    self._prefill = jax.jit(self._prefill_fn, static_argnames='first_stage')
    # The prefilled state is donated unless stages grow its cache (then its
    # buffers have the wrong shapes to be reused).
    self._decode = jax.jit(self.engine.decode,
                           donate_argnums=() if config.cache_stages else (1,))
    # The decode loop's weight layouts (Engine.hoist), made on first use and
    # kept for as long as `self.params` is the same object.
    self._transpose = jax.jit(jnp.transpose, static_argnums=1)
    self._hoisted = (None, None)
    self._step = jax.jit(self.engine.step, donate_argnums=(1,))

  @classmethod
  def from_run(cls, run: runs.Run, *, mesh: jax.sharding.Mesh | None = None,
               rules: Sequence[tuple[str, Any]] | None = None, **overrides: Any
               ) -> 'Interpreter':
    """An interpreter for a training run (`pasta_jax.runs.load_run`).

    Its settings are `run.interpreter_config(**overrides)` (the run config's
    interpreter section, mode and position strategy; `overrides` replace any
    InterpreterConfig field, e.g. slots=4, max_steps=256); prompts are rendered
    with the run's template.
    """
    return cls(run.model_config, run.params, run.tokenizer, run.interpreter_config(**overrides),
               template=run.prompt_template, mesh=mesh, rules=rules)

  # -- jitted programs ---------------------------------------------------------

  def _context(self) -> contextlib.AbstractContextManager:
    """The mesh and logical-axis-rule context the programs trace and run in."""
    if self.mesh is None:
      return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _shard(self, tree: Any) -> Any:
    """Puts per-request arrays on the mesh, split over the batch axes."""
    if self.mesh is None:
      return tree

    return jax.tree.map(
        lambda x: sharding_lib.put(x, request_sharding(self.mesh, self.rules, np.ndim(x))),
        tree)

  def hoisted_params(self) -> Any:
    """`Engine.hoist(self.params)`: the weights the decode loop reads
    transposed (CPU; see `InterpreterConfig.hoist_layouts`), made once and kept
    while `self.params` is the same object (made in every generation, they
    would add their transposes to every decode; docs/benchmarks.md)."""
    params, hoisted = self._hoisted
    if params is not self.params:
      with self._context():
        hoisted = self.engine.hoist(self.params, transpose=self._transpose)
      self._hoisted = (self.params, hoisted)
    return hoisted

  def _generate_fn(self, params: Any, prompt: jax.Array, prompt_len: jax.Array,
                   requests: Requests, hoisted: Any) -> State:
    self.compilations += 1  # runs only while tracing
    return self.engine.generate(params, prompt, prompt_len, requests,
                                self.engine.new_cache(prompt.shape[0]), hoisted)

  def _prefill_fn(self, params: Any, prompt: jax.Array, prompt_len: jax.Array,
                  requests: Requests, first_stage: bool = False) -> State:
    """The prefill, into the whole cache (step mode) or into its first stage
    (then `_decode` runs the rest, as `_generate` does in one program)."""
    cache = self.engine.new_cache(prompt.shape[0])
    if first_stage:
      cache = self.engine.first_stage(cache, prompt.shape[1])
    return self.engine.prefill(params, prompt, prompt_len, requests, cache)

  # -- inputs ------------------------------------------------------------------

  def encode_prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
    return [encoding.encode_prompt(p, self.tokenizer, self.template) for p in prompts]

  @property
  def batch_split(self) -> int:
    """How many shards a batch's requests are split into (1 without a mesh);
    `generate_ids` pads its batches to a multiple of it."""
    return self._batch_split

  @property
  def max_prompt_tokens(self) -> int:
    """The longest prompt (in tokens) a request takes: the largest bucket."""
    return self.buckets[-1]

  def bucket(self, length: int) -> int:
    """The bucket a prompt of `length` tokens is padded to (PromptTooLongError
    when there is none)."""
    for size in self.buckets:
      if length <= size:
        return size
    raise PromptTooLongError(self.too_long_detail(length))

  def too_long_detail(self, length: int) -> str:
    """Why a prompt of `length` tokens is not decoded, and what would take it."""
    limit = self.max_prompt_tokens
    text = (f'the prompt has {length} tokens, more than the {limit} this interpreter takes '
            f'(its largest prompt bucket within cache_size={self.config.cache_size})')
    wider = [b for b in self._all_buckets if b >= length]
    if wider:
      return (f'{text}; a cache_size of at least {wider[0]} plus room for the answer takes '
              'it (--cache_size, or the config key interpreter.cache_size)')
    return (f'{text}; no prompt bucket holds it (Interpreter(buckets=...) sets them): '
            'shorten the prompt')

  def prefix_forcing(self, prefixes: Sequence[Sequence[int] | None]) -> np.ndarray:
    """`Requests.forced` [N, max_threads + 1, F] that makes request i's main
    thread write `prefixes[i]` (token ids; None or empty: nothing) as its first
    tokens and then sample freely; F is the smallest of `PREFIX_BUCKETS` that
    holds the longest prefix, so one compilation serves every prefix up to it.

    Raises:
      ValueError: a prefix the main thread's grammar does not allow
        (`grammar.check_prefix`), or longer than the largest bucket.
    """
    prefixes = [np.asarray(p if p is not None else [], np.int32) for p in prefixes]
    longest = max((len(p) for p in prefixes), default=0)
    if longest > PREFIX_BUCKETS[-1]:
      raise ValueError(f'a forced prefix of {longest} tokens; at most '
                       f'{PREFIX_BUCKETS[-1]} are taken')
    cfg = self.config
    for prefix in prefixes:
      grammar.check_prefix(self.tables, prefix, max_threads=cfg.max_threads,
                           max_topic_tokens=cfg.max_topic_tokens,
                           sequential=cfg.sequential)
    width = next(b for b in PREFIX_BUCKETS if b >= longest)
    forced = np.full((len(prefixes), self.engine.num_thread_ids, width), NOT_FORCED,
                     np.int32)
    for i, prefix in enumerate(prefixes):
      forced[i, 0, :len(prefix)] = prefix
    return forced

  def prepare(self, prompts: Sequence[str] | Sequence[np.ndarray], *,
              temperature: float | Sequence[float] = 0.0,
              top_p: float | Sequence[float] = 1.0, seeds: Sequence[int] | None = None,
              forced: np.ndarray | None = None,
              prefix: Sequence[Sequence[int] | None] | None = None,
              logit_bias: dict[int, float] | None = None) -> Batch:
    """A `Batch` of requests, one per prompt (text, rendered with the template, or
    token ids), for `generate_batch`, `prefill`, `decode` and `step`.

    The prompts are padded to the bucket of the longest. Request i samples with
    the seed `seeds[i]` (default i), `temperature` and `top_p` (one value, or
    one per request); `forced` [N, max_threads + 1, F] teacher-forces each
    thread's sampled tokens (-1 = sample), for tests and replay; `prefix` (one
    per prompt) forces the first tokens of each main thread instead
    (`prefix_forcing`); `logit_bias` {token id: value} is added to every
    request's logits before sampling (forced tokens are not affected).
    """
    sampling.check_settings(temperature, top_p)
    if prefix is not None:
      if forced is not None:
        raise ValueError('give forced or prefix, not both')
      if len(prefix) != len(prompts):
        raise ValueError(f'{len(prefix)} prefixes for {len(prompts)} prompts')
      forced = self.prefix_forcing(prefix)
    ids = [self.encode_prompts([p])[0] if isinstance(p, str) else p for p in prompts]
    n = len(ids)
    lengths = np.array([len(x) for x in ids], np.int32)
    if (lengths < 1).any():
      raise ValueError('every prompt needs at least one token')
    width = self.bucket(int(lengths.max()))
    padded = np.full((n, width), self.tokenizer.pad_id, np.int32)
    for i, x in enumerate(ids):
      padded[i, :len(x)] = x
    seeds = list(range(n)) if seeds is None else list(seeds)
    if any(not 0 <= int(s) < 2**32 for s in seeds):
      raise ValueError(f'seeds must be in [0, 2**32), got {seeds}')
    if forced is None:
      forced = no_forcing(n, self.engine.num_thread_ids)
    vocab = self.model_config.vocab_size
    bias = np.zeros(vocab, np.float32)
    if logit_bias is not None:
      for token, value in dict(logit_bias).items():
        if not 0 <= int(token) < vocab:
          raise ValueError(f'logit_bias token {token} outside the vocabulary of {vocab}')
        bias[int(token)] = value
    requests = make_requests(seeds, temperature=temperature, top_p=top_p, forced=forced,
                             logit_bias=bias)
    return Batch(prompt_BT=padded, prompt_len_B=lengths, requests=requests)

  # -- programs over a batch -----------------------------------------------------

  def generate_batch(self, batch: Batch) -> State:
    """The whole generation of a batch, one jitted program (prefill, then rounds
    until every request stops); `results` reads the state it returns."""
    with self._context():
      return self._generate(
          self.params, *self._shard((batch.prompt_BT, batch.prompt_len_B, batch.requests)),
          self.hoisted_params())

  def prefill(self, batch: Batch, *, first_stage: bool = False) -> State:
    """The prefill program: the prompts written into a new cache and each
    request's first token sampled (round 1). Into the whole cache (for `step`),
    or, with `first_stage`, into the first cache stage that holds the prompts
    (for `decode`, which grows it through the stages)."""
    with self._context():
      return self._prefill(
          self.params, *self._shard((batch.prompt_BT, batch.prompt_len_B, batch.requests)),
          first_stage=first_stage)

  def decode(self, state: State, batch: Batch) -> State:
    """The decode program: rounds of a prefilled state until every request stops.
    `state` is donated unless `cache_stages` grow its cache."""
    with self._context():
      return self._decode(self.params, state, self._shard(batch.requests),
                          self.hoisted_params())

  def step(self, state: State, batch: Batch) -> State:
    """One decode round of every running request (one jitted call; `state`
    is donated)."""
    with self._context():
      return self._step(self.params, state, self._shard(batch.requests),
                        self.hoisted_params())

  # -- generation ----------------------------------------------------------------

  def generate(self, prompts: Sequence[str] | str, *, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, batch_size: int | None = None,
               logit_bias: dict[int, float] | None = None) -> list[Result]:
    """Generates an answer per prompt; request i uses the seed `seed + i`.

    `logit_bias` {token id: value} is added to the logits before sampling (e.g. a
    positive bias on `tokenizer.control.promise` asks for more parallelism).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    ids = self.encode_prompts(prompts)
    results = self.generate_ids(ids, temperature=temperature, top_p=top_p,
                                seeds=[seed + i for i in range(len(ids))],
                                batch_size=batch_size, logit_bias=logit_bias)
    results = [dataclasses.replace(r, prompt=p) for r, p in zip(results, prompts)]
    return results

  def generate_ids(self, prompt_ids: Sequence[np.ndarray], *, temperature: float = 0.0,
                   top_p: float = 1.0, seeds: Sequence[int] | None = None,
                   batch_size: int | None = None,
                   forced: np.ndarray | None = None,
                   prefix: Sequence[Sequence[int] | None] | None = None,
                   logit_bias: dict[int, float] | None = None) -> list[Result]:
    """Generates from token ids. `forced` [N, max_threads + 1, F] teacher-forces
    each thread's sampled tokens (-1 = sample), for tests and replay; `prefix`
    (one per prompt: token ids, or None) forces the first tokens of each main
    thread, then it decodes freely (`prefix_forcing`).

    A prompt longer than `max_prompt_tokens` gets a 'prompt_too_long' result;
    the others decode exactly as they would without it (same batches, seeds).
    """
    sampling.check_settings(temperature, top_p)
    n = len(prompt_ids)
    if prefix is not None and len(prefix) != n:
      raise ValueError(f'{len(prefix)} prefixes for {n} prompts')
    seeds = list(range(n)) if seeds is None else list(seeds)
    lengths = [len(x) for x in prompt_ids]
    fits = [i for i in range(n) if lengths[i] <= self.max_prompt_tokens]
    # Batches have a fixed size (given, or the next power of two), padded with
    # copies of their first request, so one compilation serves every batch.
    batch_size = batch_size or 1 << max(len(fits) - 1, 0).bit_length()
    batch_size += -batch_size % self._batch_split
    results: list[Result | None] = [None] * n
    for start in range(0, len(fits), batch_size):
      chunk = fits[start:start + batch_size]
      real = len(chunk)
      chunk += [chunk[0]] * (batch_size - real)
      batch = self.prepare([prompt_ids[i] for i in chunk], temperature=temperature,
                           top_p=top_p, seeds=[seeds[i] for i in chunk],
                           forced=None if forced is None else np.asarray(forced)[chunk],
                           prefix=None if prefix is None else [prefix[i] for i in chunk],
                           logit_bias=logit_bias)
      for i, result in zip(chunk[:real], self.results(self.generate_batch(batch))):
        results[i] = dataclasses.replace(result, prompt_tokens=lengths[i])
    for i in range(n):
      if results[i] is None:
        results[i] = results_lib.prompt_too_long(lengths[i], self.too_long_detail(lengths[i]))
    return results

  def generate_timed(self, prompt_ids: np.ndarray, *, seed: int = 0,
                     temperature: float = 0.0, prefix: Sequence[int] | None = None,
                     forced: np.ndarray | None = None,
                     logit_bias: dict[int, float] | None = None
                     ) -> tuple[Result, Timing]:
    """One request (batch 1) and the seconds its prefill and its decode ran
    (`prefix`, `logit_bias`: as in `prepare`; `forced`: the request's
    [max_threads + 1, F] row of `prepare`'s).

    The prefill and the decode rounds run as two jitted programs (`prefill`
    into the first cache stage, then `decode`: the computation `generate` runs
    as one), each timed up to its results being ready on the device;
    tokenization and result assembly are not timed. The first call for a
    prompt bucket compiles; call once untimed to warm up. A prompt longer than
    `max_prompt_tokens` gets a 'prompt_too_long' result and zero seconds.
    """
    if self._batch_split != 1:
      raise ValueError('generate_timed runs batch 1; use an Interpreter without a '
                       'batch-split mesh')
    length = len(prompt_ids)
    if length > self.max_prompt_tokens:
      return (results_lib.prompt_too_long(length, self.too_long_detail(length)),
              Timing(prefill_seconds=0.0, decode_seconds=0.0))
    batch = self.prepare([prompt_ids], temperature=temperature, seeds=[seed],
                         prefix=None if prefix is None else [prefix],
                         forced=None if forced is None else np.asarray(forced)[None],
                         logit_bias=logit_bias)
    self.hoisted_params()  # made once per interpreter, like a compilation
    start = time.perf_counter()
    state = jax.block_until_ready(self.prefill(batch, first_stage=True))
    prefilled = time.perf_counter()
    state = jax.block_until_ready(self.decode(state, batch))
    done = time.perf_counter()
    result = dataclasses.replace(self.results(state)[0], prompt_tokens=length)
    return result, Timing(prefill_seconds=prefilled - start, decode_seconds=done - prefilled)

  def stream(self, prompt: str, *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, logit_bias: dict[int, float] | None = None
             ) -> Iterator[list[tuple[int, int, str]]]:
    """Step mode for debugging: yields, each round, [(thread, token, piece)] sampled.

    Runs the same prefill and step functions as `generate` (`prefill`, then
    `step`: one jitted call per round), so the host can inspect the state in
    between (`self.last_state`).
    """
    if self._batch_split != 1:
      raise ValueError('stream runs one request; use an Interpreter without a batch-'
                       'split mesh')
    batch = self.prepare([prompt], temperature=temperature, top_p=top_p, seeds=[seed],
                         logit_bias=logit_bias)
    state = self.prefill(batch)
    seen = 0
    while True:
      self.last_state = state
      count = int(state.out_len[0])
      new = [(int(state.out_thread[0, i]), int(state.out_token[0, i]),
              self.tokenizer.id_to_piece(int(state.out_token[0, i])))
             for i in range(seen, count)]
      seen = count
      yield new
      if int(state.status[0]) != RUNNING or int(state.round) >= self.config.max_steps:
        return
      state = self.step(state, batch)

  # -- results -------------------------------------------------------------------

  def results(self, state: State) -> list[Result]:
    """Assembles the host-side results of a finished (or stopped) batch (on
    every process, when the mesh spans several)."""
    if not state.out_len.is_fully_addressable:
      outputs = {name: getattr(state, name) for name in _OUTPUTS}
      state = state.replace(**multihost_utils.process_allgather(outputs, tiled=True))
    return results_lib.from_state(state, self.tokenizer, self.tables,
                                  sequential=self.config.sequential,
                                  record_logits=self.config.record_logits)
