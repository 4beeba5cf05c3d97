"""Host-level API: `Interpreter(...).generate(prompts)` and a step-by-step stream.

    interp = Interpreter(model_config, params, tokenizer, InterpreterConfig(slots=8))
    results = interp.generate(['spell and reverse each word, then join them: a) owl'])
    results[0].text          # the final answer
    results[0].annotated     # the annotated document (PASTA-LANG, training layout)
    results[0].threads       # per-thread token spans
    results[0].steps, results[0].total_tokens, results[0].parallelism

Prompts are padded to a few length buckets, so one compilation serves every
prompt of a bucket; the whole generation of a batch is one jitted call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pasta_jax import lang
from pasta_jax import tokenizer as tokenizer_lib
from pasta_jax.data import encoding
from pasta_jax.interpreter import engine as engine_lib
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.models import cache as cache_lib
from pasta_jax.models import sharding as sharding_lib
from pasta_jax.models import transformer

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass(frozen=True)
class Timing:
  """Seconds one request spent in the prefill and in the decode rounds."""

  prefill_seconds: float
  decode_seconds: float

  @property
  def seconds(self) -> float:
    return self.prefill_seconds + self.decode_seconds


@dataclasses.dataclass(frozen=True)
class ThreadSpan:
  """What one thread wrote: its tokens and the rounds it sampled them in."""

  thread: int
  tokens: tuple[int, ...]
  first_round: int
  last_round: int


@dataclasses.dataclass(frozen=True)
class Result:
  """One request's generation.

  Attributes:
    prompt: the prompt text (None when generating from ids).
    status: 'done', 'budget' (max_steps reached) or 'cache_full'.
    ids: the response in token form, training layout (each body right after its
      promise; reusable with `layout.pasta_layout`), EOS included when written.
    document: the annotated `lang.Document` (None if a stop cut an element).
    text: the final answer (`lang.strip(document)`), or the best text available.
    threads: one ThreadSpan per thread (0 = main).
    steps: decode rounds, the prefill round included (PASTA.md section 6).
    total_tokens: tokens sampled by all threads.
    timeline: (round, thread, token) of every sampled token, in sampling order.
    logits: [total_tokens, V] logits each token was sampled from, in timeline
      order (InterpreterConfig.record_logits only).
  """

  prompt: str | None
  status: str
  ids: tuple[int, ...]
  document: lang.Document | None
  text: str
  threads: tuple[ThreadSpan, ...]
  steps: int
  total_tokens: int
  timeline: tuple[tuple[int, int, int], ...] = ()
  logits: np.ndarray | None = None

  @property
  def annotated(self) -> str | None:
    return None if self.document is None else lang.serialize(self.document)

  @property
  def parallelism(self) -> float:
    return self.total_tokens / max(self.steps, 1)

  @property
  def tokens_per_thread(self) -> tuple[int, ...]:
    return tuple(len(t.tokens) for t in self.threads)


class Interpreter:
  """Runs PASTA (or, in sequential mode, plain) generation for a model."""

  def __init__(self, model_config, params, tok: tokenizer_lib.Tokenizer,
               config: InterpreterConfig, *, template: str = '{prompt}\n',
               buckets: Sequence[int] = DEFAULT_BUCKETS, mesh=None, rules=None):
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
    self.buckets = tuple(sorted(b for b in buckets if b <= config.cache_size))
    if not self.buckets:
      raise ValueError(f'no prompt bucket fits the cache of {config.cache_size} entries')
    self.mesh = mesh
    self.rules = None
    self._batch_split = 1
    if mesh is not None:
      self.rules = list(rules or sharding_lib.default_rules(model_config, mesh))
      self.params = jax.device_put(
          params, sharding_lib.param_shardings(model_config, mesh, self.rules))
      self._batch_axes = nn.logical_to_mesh_axes(('batch',), self.rules)[0]
      axes = (self._batch_axes,) if isinstance(self._batch_axes, str) else (
          self._batch_axes or ())
      sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
      for axis in axes:
        self._batch_split *= sizes[axis]
    self.tables = grammar.TokenTables.build(tok.control, model_config.vocab_size,
                                            unk=tok.unk_id)
    self.engine = engine_lib.Engine(transformer.Transformer(model_config), config,
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
  def from_run(cls, run, *, mesh=None, rules=None, **overrides) -> 'Interpreter':
    """An interpreter for a training run (`pasta_jax.runs.load_run`).

    Its settings are `run.interpreter_config(**overrides)` (the run config's
    interpreter section, mode and position strategy; `overrides` replace any
    InterpreterConfig field, e.g. slots=4, max_steps=256); prompts are rendered
    with the run's template.
    """
    return cls(run.model_config, run.params, run.tokenizer, run.interpreter_config(**overrides),
               template=run.prompt_template, mesh=mesh, rules=rules)

  # -- jitted programs ---------------------------------------------------------

  def _context(self):
    """The mesh and logical-axis-rule context the programs trace and run in."""
    if self.mesh is None:
      return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _shard(self, tree):
    """Puts per-request arrays on the mesh, split over the batch axes."""
    if self.mesh is None:
      return tree

    def put(x):
      spec = jax.sharding.PartitionSpec(self._batch_axes, *([None] * (np.ndim(x) - 1)))
      return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))
    return jax.tree.map(put, tree)

  def _new_cache(self, batch: int):
    return cache_lib.init_cache(self.model_config, batch, self.config.cache_size)

  def hoisted_params(self):
    """`Engine.hoist(self.params)`: the weights the decode loop reads
    transposed (CPU; see `InterpreterConfig.hoist_layouts`), made once and kept
    while `self.params` is the same object. Making them in every generation
    cost a PASTA decode on the tiny model about two rounds' time."""
    params, hoisted = self._hoisted
    if params is not self.params:
      with self._context():
        hoisted = self.engine.hoist(self.params, transpose=self._transpose)
      self._hoisted = (self.params, hoisted)
    return hoisted

  def _generate_fn(self, params, prompt, prompt_len, requests, hoisted):
    self.compilations += 1  # runs only while tracing
    return self.engine.generate(params, prompt, prompt_len, requests,
                                self._new_cache(prompt.shape[0]), hoisted)

  def _prefill_fn(self, params, prompt, prompt_len, requests, first_stage: bool = False):
    """The prefill, into the whole cache (step mode) or into its first stage
    (then `_decode` runs the rest, as `_generate` does in one program)."""
    cache = self._new_cache(prompt.shape[0])
    if first_stage:
      cache = self.engine.first_stage(cache, prompt.shape[1])
    return self.engine.prefill(params, prompt, prompt_len, requests, cache)

  # -- inputs ------------------------------------------------------------------

  def encode_prompts(self, prompts: Sequence[str]) -> list[np.ndarray]:
    return [encoding.encode_prompt(p, self.tokenizer, self.template) for p in prompts]

  def bucket(self, length: int) -> int:
    for size in self.buckets:
      if length <= size:
        return size
    raise ValueError(f'a prompt of {length} tokens is longer than the largest bucket '
                     f'{self.buckets[-1]} (cache_size {self.config.cache_size})')

  def _requests(self, batch: int, seeds, temperature, top_p, forced,
                logit_bias=None) -> engine_lib.Requests:
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
    if forced is None:
      forced = engine_lib.no_forcing(batch, self.engine.num_thread_ids)
    vocab = self.model_config.vocab_size
    bias = np.zeros(vocab, np.float32)
    if logit_bias is not None:
      for token, value in dict(logit_bias).items():
        if not 0 <= int(token) < vocab:
          raise ValueError(f'logit_bias token {token} outside the vocabulary of {vocab}')
        bias[int(token)] = value
    return engine_lib.Requests(
        keys=keys, temperature=jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (batch,)),
        top_p=jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), (batch,)),
        forced=jnp.asarray(forced, jnp.int32),
        logit_bias=jnp.broadcast_to(jnp.asarray(bias), (batch, vocab)))

  def _pad(self, ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(x) for x in ids], np.int32)
    if (lengths < 1).any():
      raise ValueError('every prompt needs at least one token')
    width = self.bucket(int(lengths.max()))
    padded = np.full((len(ids), width), self.tokenizer.pad_id, np.int32)
    for i, x in enumerate(ids):
      padded[i, :len(x)] = x
    return padded, lengths

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
                   logit_bias: dict[int, float] | None = None) -> list[Result]:
    """Generates from token ids. `forced` [N, max_threads + 1, F] teacher-forces
    each thread's sampled tokens (-1 = sample), for tests and replay."""
    n = len(prompt_ids)
    seeds = list(range(n)) if seeds is None else list(seeds)
    # Batches have a fixed size (given, or the next power of two), padded with
    # copies of their first request, so one compilation serves every batch.
    batch_size = batch_size or 1 << max(n - 1, 0).bit_length()
    batch_size += -batch_size % self._batch_split
    results = []
    for start in range(0, n, batch_size):
      chunk = list(range(start, min(start + batch_size, n)))
      real = len(chunk)
      chunk += [chunk[0]] * (batch_size - real)
      prompt, lengths = self._pad([prompt_ids[i] for i in chunk])
      requests = self._requests(len(chunk), [seeds[i] for i in chunk], temperature, top_p,
                                None if forced is None else np.asarray(forced)[chunk],
                                logit_bias)
      with self._context():
        state = self._generate(self.params, *self._shard((prompt, lengths, requests)),
                               self.hoisted_params())
      results += self.results(state)[:real]
    return results

  def generate_timed(self, prompt_ids: np.ndarray, *, seed: int = 0,
                     temperature: float = 0.0) -> tuple[Result, Timing]:
    """One request (batch 1) and the seconds its prefill and its decode ran.

    The prefill and the decode rounds run as two jitted programs (the same
    computation `generate` runs as one), each timed up to its results being
    ready on the device; tokenization and result assembly are not timed. The
    first call for a prompt bucket compiles; call once untimed to warm up.
    """
    if self._batch_split != 1:
      raise ValueError('generate_timed runs batch 1; use an Interpreter without a '
                       'batch-split mesh')
    prompt, lengths = self._pad([prompt_ids])
    requests = self._requests(1, [seed], temperature, 1.0, None)
    hoisted = self.hoisted_params()  # made once per interpreter, like a compilation
    with self._context():
      start = time.perf_counter()
      state = jax.block_until_ready(
          self._prefill(self.params, prompt, lengths, requests, first_stage=True))
      prefilled = time.perf_counter()
      state = jax.block_until_ready(self._decode(self.params, state, requests, hoisted))
      done = time.perf_counter()
    return self.results(state)[0], Timing(prefill_seconds=prefilled - start,
                                          decode_seconds=done - prefilled)

  def stream(self, prompt: str, *, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, logit_bias: dict[int, float] | None = None
             ) -> Iterator[list[tuple[int, int, str]]]:
    """Step mode for debugging: yields, each round, [(thread, token, piece)] sampled.

    Runs the same prefill and step functions as `generate`, one jitted call per
    round, so the host can inspect the state in between (`self.last_state`).
    """
    ids = self.encode_prompts([prompt])
    padded, lengths = self._pad(ids)
    if self._batch_split != 1:
      raise ValueError('stream runs one request; use an Interpreter without a batch-'
                       'split mesh')
    requests = self._requests(1, [seed], temperature, top_p, None, logit_bias)
    with self._context():
      state = self._prefill(self.params, padded, lengths, requests)
    seen = 0
    while True:
      self.last_state = state
      count = int(state.out_len[0])
      new = [(int(state.out_thread[0, i]), int(state.out_token[0, i]),
              self.tokenizer.id_to_piece(int(state.out_token[0, i])))
             for i in range(seen, count)]
      seen = count
      yield new
      if int(state.status[0]) != engine_lib.RUNNING or int(state.round) >= self.config.max_steps:
        return
      with self._context():
        state = self._step(self.params, state, requests, self.hoisted_params())

  # -- results -------------------------------------------------------------------

  def results(self, state: engine_lib.State) -> list[Result]:
    """Assembles the host-side results of a finished (or stopped) batch."""
    out_token = np.asarray(state.out_token)
    out_thread = np.asarray(state.out_thread)
    out_round = np.asarray(state.out_round)
    out_len = np.asarray(state.out_len)
    status = np.asarray(state.status)
    steps = np.asarray(state.steps)
    logits = np.asarray(state.out_logits) if self.config.record_logits else None
    results = []
    for b in range(len(out_len)):
      n = int(out_len[b])
      code = int(status[b])
      if code == engine_lib.RUNNING:
        code = engine_lib.BUDGET
      results.append(self._result(out_token[b, :n], out_thread[b, :n], out_round[b, :n],
                                  engine_lib.STATUS_NAMES[code], int(steps[b]),
                                  None if logits is None else logits[b, :n]))
    return results

  def _result(self, tokens, threads, rounds, status, steps, logits) -> Result:
    c = self.tokenizer.control
    spans = []
    for k in range(int(threads.max(initial=0)) + 1):
      where = np.flatnonzero(threads == k)
      spans.append(ThreadSpan(k, tuple(int(t) for t in tokens[where]),
                              int(rounds[where[0]]) if len(where) else 0,
                              int(rounds[where[-1]]) if len(where) else 0))
    # Training layout: each thread's <async> + body + </async> after its length token.
    ids, promise = [], 0
    for token in spans[0].tokens:
      ids.append(token)
      if not self.config.sequential and self.tables.length[token] >= 0:
        promise += 1
        if promise < len(spans):
          ids += [c.async_open, *spans[promise].tokens]
    document, text = None, ''
    try:
      document = self.tokenizer.decode(ids)
      text = lang.strip(document)
    except lang.PastaLangError:
      # A stop cut an element (only with status budget / cache_full): keep the
      # main thread's plain text as the best available answer.
      main_text = [t for t in spans[0].tokens if self.tables.is_text[t]]
      text = self.tokenizer.decode_text(main_text)
    return Result(prompt=None, status=status, ids=tuple(ids), document=document,
                  text=text, threads=tuple(spans), steps=steps,
                  total_tokens=int(len(tokens)),
                  timeline=tuple(zip(rounds.tolist(), threads.tolist(), tokens.tolist())),
                  logits=logits)
