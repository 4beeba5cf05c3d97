"""The jittable core of the PASTA interpreter (PASTA.md sections 2, 3 and 5).

Everything a generation needs lives in one fixed-shape `State`; `prefill` writes
the prompts and samples each request's first token, `step` runs one decode round
for every request, and `generate` runs the rounds inside one `lax.while_loop`, so
the host never looks at a token between rounds.

Shapes: B requests, S thread slots (slot 0 = main thread), C cache entries,
P = max_threads + 1 thread ids (0 = main, k = the k-th promise's async thread),
L = log entries (every sampled token), V vocabulary.

Invariants the code below relies on:

* Cache entries are appended in generation order: request b's next entry is
  `ptr[b]`; a round writes the tokens of all slots that feed, consecutively in slot
  order. Entries >= ptr are never visible (entry_thread -1 -> segment 0).
* The main clock of request b, `clock[b]`, is the number of main-thread entries
  written (prompt included). A main entry's `entry_clock` is the clock when it was
  written; an async entry's `entry_clock` is its thread's fork clock (the clock of
  the promise's length token). With `join[b, k]` the clock of the `<sync/>` that
  joined thread k (NEVER before), this is exactly the metadata of
  `masks.visibility_mask`: anchor = entry_clock, visible_from = entry_clock for main
  entries and join[thread] for async ones, order = entry index.
* A slot feeds its pending token in a round iff it has one, its request is
  running, and (main slot) the token is not a `<sync/>` waiting for outstanding
  threads. The token sampled from a slot's logits is the slot's next pending
  token, except right after an async slot fed `</async>`: that slot is released.
* Thread k forks when the main thread samples its length token in round r; it
  feeds `<async>` in the first round > r that has a free slot (FIFO over
  promises), at position p + 1 where p is the length token's position.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pasta_jax import layout
from pasta_jax import masks
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter import sampling
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.models import cache as cache_lib

RUNNING, DONE, BUDGET, CACHE_FULL = 0, 1, 2, 3
STATUS_NAMES = {RUNNING: 'running', DONE: 'done', BUDGET: 'budget', CACHE_FULL: 'cache_full'}
NO_THREAD = -1
NOT_FORCED = -1


@flax.struct.dataclass
class State:
  """The whole generation state of a batch of requests (all jax arrays)."""

  cache: Any                 # model KV cache, [B, C, ...] per layer
  entry_thread: jax.Array    # [B, C] thread of each cache entry, -1 = empty
  entry_clock: jax.Array     # [B, C] anchor clock of each entry
  ptr: jax.Array             # [B] next free cache entry
  clock: jax.Array           # [B] main clock (main entries written)
  fork: jax.Array            # [B, P] fork clock of each thread
  start_pos: jax.Array       # [B, P] position of each thread's <async>
  join: jax.Array            # [B, P] clock of the joining <sync/>, NEVER before
  thread_done: jax.Array     # [B, P] the thread sampled </async>
  n_threads: jax.Array       # [B] promises completed (threads created)
  n_started: jax.Array       # [B] threads that got a slot
  slot_thread: jax.Array     # [B, S] thread in each slot, -1 = free
  slot_token: jax.Array      # [B, S] the slot's pending input token
  slot_pos: jax.Array        # [B, S] position of the pending token
  slot_ready: jax.Array      # [B, S] the slot has a pending token
  slot_count: jax.Array      # [B, S] tokens the slot's thread has sampled
  in_topic: jax.Array        # [B] the main thread is inside a promise tag
  topic_len: jax.Array       # [B] topic tokens so far
  main_done: jax.Array       # [B] the main thread sampled EOS
  status: jax.Array          # [B] RUNNING / DONE / BUDGET / CACHE_FULL
  steps: jax.Array           # [B] decode rounds used (prefill = round 1)
  round: jax.Array           # [] the current round
  out_token: jax.Array       # [B, L] sampled tokens in sampling order
  out_thread: jax.Array      # [B, L] their threads
  out_round: jax.Array       # [B, L] the round each was sampled in
  out_len: jax.Array         # [B]
  out_logits: jax.Array      # [B, L, V] (record_logits) or [B, 0, V]

  @property
  def capacity(self) -> int:
    """C, the cache entries of this state (a stage of `generate`, or cache_size)."""
    return self.entry_thread.shape[1]


@flax.struct.dataclass
class Requests:
  """Per-request inputs that do not change during generation."""

  keys: jax.Array            # [B] PRNG keys
  temperature: jax.Array     # [B] 0 = greedy
  top_p: jax.Array           # [B]
  forced: jax.Array          # [B, P, F] tokens to force per thread (-1 = sample)
  logit_bias: jax.Array      # [B, V] added to the logits before the grammar mask


class Engine:
  """Pure functions over `State` for one model, vocabulary and config."""

  def __init__(self, model, config: InterpreterConfig, tables: grammar.TokenTables):
    self.model = model
    self.config = config
    self.tables = tables
    self.c = tables.control
    self.num_thread_ids = config.max_threads + 1

  # -- construction ----------------------------------------------------------

  def prefill(self, params, prompt_BT: jax.Array, prompt_len_B: jax.Array,
              requests: Requests, cache) -> State:
    """Writes the prompts into the cache and samples each first token (round 1)."""
    cfg = self.config
    b, t = prompt_BT.shape
    # The cache may be a stage smaller than cache_size (see `generate`).
    c_size = cache_lib.cache_length(cache)
    s, p = cfg.slots, self.num_thread_ids
    index = jnp.arange(t, dtype=jnp.int32)
    valid_BT = index[None, :] < prompt_len_B[:, None]
    positions = jnp.broadcast_to(index, (b, t))
    meta_q = masks.AttentionMeta(
        thread=jnp.zeros((b, t), jnp.int32), anchor=positions,
        visible_from=positions, order=positions, segment=valid_BT.astype(jnp.int32))
    # The prompt attends to itself only ([T, T], not [T, cache]): the model reads an
    # empty cache and returns the prompt's entries, written at 0..T-1.
    entry = jnp.arange(c_size, dtype=jnp.int32)
    written = entry[None, :] < prompt_len_B[:, None]
    entry_thread = jnp.where(written, 0, NO_THREAD).astype(jnp.int32)
    entry_clock = jnp.broadcast_to(entry, (b, c_size))
    empty = jax.tree.map(lambda x: x[:, :0], cache)
    logits, entries = self.model.apply(
        {'params': params}, prompt_BT, positions, (meta_q, meta_q), cache=empty,
        logits_index=(prompt_len_B - 1)[:, None], write_cache=False)
    cache = cache_lib.write_entries(cache, entries, jnp.broadcast_to(index, (b, t)))
    is_main = jnp.arange(s) == 0
    state = State(
        cache=cache, entry_thread=entry_thread, entry_clock=entry_clock,
        ptr=prompt_len_B.astype(jnp.int32),
        # The last prompt token acts as the main slot's fed token of round 1.
        clock=(prompt_len_B - 1).astype(jnp.int32),
        fork=jnp.zeros((b, p), jnp.int32), start_pos=jnp.zeros((b, p), jnp.int32),
        join=jnp.full((b, p), masks.NEVER, jnp.int32),
        thread_done=jnp.zeros((b, p), bool),
        n_threads=jnp.zeros(b, jnp.int32), n_started=jnp.zeros(b, jnp.int32),
        slot_thread=jnp.broadcast_to(jnp.where(is_main, 0, NO_THREAD), (b, s)).astype(jnp.int32),
        slot_token=jnp.zeros((b, s), jnp.int32),
        slot_pos=jnp.zeros((b, s), jnp.int32).at[:, 0].set(prompt_len_B - 1),
        slot_ready=jnp.zeros((b, s), bool),
        slot_count=jnp.zeros((b, s), jnp.int32),
        in_topic=jnp.zeros(b, bool), topic_len=jnp.zeros(b, jnp.int32),
        main_done=jnp.zeros(b, bool), status=jnp.full(b, RUNNING, jnp.int32),
        steps=jnp.zeros(b, jnp.int32), round=jnp.array(1, jnp.int32),
        out_token=jnp.zeros((b, cfg.log_size), jnp.int32),
        out_thread=jnp.zeros((b, cfg.log_size), jnp.int32),
        out_round=jnp.zeros((b, cfg.log_size), jnp.int32),
        out_len=jnp.zeros(b, jnp.int32),
        out_logits=jnp.zeros((b, cfg.log_size if cfg.record_logits else 0,
                              self.tables.vocab_size), jnp.float32))
    fed = jnp.broadcast_to(is_main, (b, s))
    fed_token = jnp.zeros((b, s), jnp.int32).at[:, 0].set(
        jnp.take_along_axis(prompt_BT, (prompt_len_B - 1)[:, None], 1)[:, 0])
    main = jnp.zeros((b, 1), jnp.int32)
    token = jnp.zeros((b, s), jnp.int32).at[:, :1].set(
        self._sample(state, logits, main, requests))
    full_logits = None
    if cfg.record_logits:
      full_logits = jnp.zeros((b, s, logits.shape[-1]), logits.dtype).at[:, 0].set(
          logits[:, 0])
    return self._advance(state, token, full_logits, fed, fed_token, requests)

  # -- one round -------------------------------------------------------------

  def step(self, params, state: State, requests: Requests, hoisted=None) -> State:
    """One decode round for every running request.

    `hoisted`: optional `hoist(params)`, the decode loop's weight layouts
    (transposed back where the model reads them).
    """
    cfg, c = self.config, self.c
    state = state.replace(round=state.round + 1)
    if cfg.sequential:
      return self._sequential_step(
          params if hoisted is None else self._unhoist(hoisted, params, 1), state, requests)
    state = self._start_queued(state)
    b, s = state.slot_token.shape
    is_main = jnp.arange(s) == 0
    running = state.status == RUNNING
    thread_ids = jnp.arange(self.num_thread_ids)
    outstanding = jnp.any((thread_ids >= 1) & (thread_ids <= state.n_threads[:, None])
                          & ~state.thread_done, axis=1)
    sync_waits = (state.slot_token[:, 0] == c.sync) & outstanding
    fed = state.slot_ready & running[:, None] & ~(is_main & sync_waits[:, None])
    n_fed = fed.sum(axis=1)
    capacity = state.capacity
    full = running & (state.ptr + n_fed > capacity)
    fed &= ~full[:, None]
    state = state.replace(status=jnp.where(full, CACHE_FULL, state.status))

    # Cache entries for this round's tokens, consecutive in slot order.
    index = jnp.where(fed, state.ptr[:, None] + jnp.cumsum(fed, axis=1) - 1,
                      capacity).astype(jnp.int32)
    main_fed = fed[:, 0]
    # A <sync/> fed now joins every thread created so far at its own clock.
    joins = main_fed & (state.slot_token[:, 0] == c.sync)
    newly_joined = (joins[:, None] & (thread_ids >= 1) & (thread_ids <= state.n_threads[:, None])
                    & (state.join == masks.NEVER))
    join = jnp.where(newly_joined, state.clock[:, None], state.join)
    slot_thread = jnp.maximum(state.slot_thread, 0)
    query_clock = jnp.where(is_main, state.clock[:, None],
                            jnp.take_along_axis(state.fork, slot_thread, axis=1))
    # Keys: the cache as it is (this round's entries are still empty there), then
    # this round's tokens, with the metadata their entries get.
    visible_from = lambda thread, clock: jnp.where(
        thread == 0, clock, jnp.take_along_axis(join, jnp.maximum(thread, 0), 1))
    cache_meta = masks.AttentionMeta(
        thread=state.entry_thread, anchor=state.entry_clock,
        visible_from=visible_from(state.entry_thread, state.entry_clock),
        order=jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32),
                               state.entry_thread.shape),
        segment=(state.entry_thread != NO_THREAD).astype(jnp.int32))
    new_meta = masks.AttentionMeta(
        thread=slot_thread, anchor=query_clock,
        visible_from=visible_from(slot_thread, query_clock), order=index,
        segment=fed.astype(jnp.int32))
    query_meta = masks.AttentionMeta(
        thread=slot_thread, anchor=query_clock, visible_from=query_clock, order=index,
        segment=fed.astype(jnp.int32))
    sample = lambda logits_BWV, slots_BW: self._sample(state, logits_BWV, slots_BW, requests)
    token, logits, cache = self._forward(params, hoisted, state.cache, state.slot_token,
                                         state.slot_pos, query_meta, cache_meta, new_meta,
                                         index, fed, sample)
    entry_thread = _scatter(state.entry_thread, index, state.slot_thread)
    entry_clock = _scatter(state.entry_clock, index, query_clock)
    state = state.replace(cache=cache, entry_thread=entry_thread, entry_clock=entry_clock,
                          ptr=state.ptr + fed.sum(axis=1), join=join)
    return self._advance(state, token, logits, fed, state.slot_token, requests)

  def _sequential_step(self, params, state: State, requests: Requests) -> State:
    """`step` for the sequential decoder (S = 1, no tags), without thread bookkeeping.

    One thread writes the cache contiguously, so an entry's clock is its index and
    the metadata of `masks.visibility_mask` is causal (entry_thread is not
    maintained in this mode; entry_clock keeps the indices the prefill wrote).
    """
    cfg = self.config
    running = state.status == RUNNING
    fed = state.slot_ready[:, 0] & running
    capacity = state.capacity
    full = fed & (state.ptr + 1 > capacity)
    fed &= ~full
    index = jnp.where(fed, state.ptr, capacity)[:, None].astype(jnp.int32)
    # An entry's clock is its index (the prefill and `grow` set entry_clock so,
    # and this mode never changes it). Read from the state, not made with iota:
    # with iota XLA:CPU folds the mask into every layer's softmax fusions,
    # which made a tiny-model step 6-7% slower.
    entries = state.entry_clock
    written = entries < (state.ptr + fed)[:, None]
    zeros_k, zeros_q = jnp.zeros_like(entries), jnp.zeros_like(index)
    key_meta = masks.AttentionMeta(zeros_k, entries, entries, entries,
                                   written.astype(jnp.int32))
    query_meta = masks.AttentionMeta(zeros_q, index, index, index,
                                     fed[:, None].astype(jnp.int32))
    logits, cache = self.model.apply(
        {'params': params}, state.slot_token, state.slot_pos, (query_meta, key_meta),
        cache=state.cache, cache_index=index)
    # Sample among text and EOS (the whole grammar of sequential mode).
    allowed = jnp.asarray(self.tables.is_text) | (jnp.arange(self.tables.vocab_size)
                                                   == self.c.eos)
    biased = logits + requests.logit_bias[:, None, :]
    token = sampling.sample(biased, jnp.broadcast_to(allowed, biased.shape), requests.keys,
                            state.round, requests.temperature, requests.top_p,
                            top_k=cfg.top_k, use_top_p=cfg.use_top_p)
    forced_len = requests.forced.shape[-1]
    count = state.slot_count[:, 0]
    forced = jnp.take_along_axis(requests.forced[:, 0, :],
                                 jnp.minimum(count, forced_len - 1)[:, None], axis=1)[:, 0]
    forced = jnp.where(count < forced_len, forced, NOT_FORCED)
    token = jnp.where(forced[:, None] != NOT_FORCED, forced[:, None], token)
    ends = fed & (token[:, 0] == self.c.eos)
    log_index = jnp.where(fed, state.out_len, cfg.log_size)[:, None]
    out_logits = state.out_logits
    if cfg.record_logits:
      out_logits = jax.vmap(lambda o, i, u: o.at[i].set(u, mode='drop'))(
          out_logits, log_index, logits.astype(jnp.float32))
    done = running & ~full & (state.main_done | ends)
    status = jnp.where(full, CACHE_FULL, jnp.where(done, DONE, state.status))
    b = fed.shape[0]
    return state.replace(
        cache=cache, ptr=state.ptr + fed, clock=state.clock + fed,
        slot_token=jnp.where(fed[:, None], token, state.slot_token),
        slot_pos=state.slot_pos + fed[:, None],
        slot_ready=(state.slot_ready & ~fed[:, None]) | (fed & ~ends)[:, None],
        slot_count=state.slot_count + fed[:, None],
        main_done=state.main_done | ends, status=status,
        steps=jnp.where(running & ~full, state.round, state.steps),
        out_token=_scatter(state.out_token, log_index, token),
        out_thread=_scatter(state.out_thread, log_index, jnp.zeros_like(token)),
        out_round=_scatter(state.out_round, log_index, jnp.broadcast_to(state.round, (b, 1))),
        out_len=state.out_len + fed, out_logits=out_logits)

  def _forward(self, params, hoisted, cache, token_BS, pos_BS, query_meta, cache_meta,
               new_meta, index_BS, fed_BS, sample):
    """The model and the sampling over this round's fed tokens, at the narrowest
    width that fits (`widths`; with the one width S, every slot in slot order).

    The fed slots of each request are moved to the front, and `lax.switch` runs
    the model on the first w columns, w the smallest width in `widths` that holds
    every request's fed slots, then `sample(logits [B, w, V], slots [B, w])` on
    them; the sampled tokens go back to their slots ([B, S], columns not run hold
    0; they are not fed, so nothing reads them). So a round with one running
    thread costs about what a one-slot decoder pays, grammar and sampling
    included, while shapes stay fixed (one compiled branch per width). The
    branches only read the cache (`write_cache=False`: keys = the cache, then the
    fed tokens) and return the new entries, written after the switch: a cache
    that went through the conditional would be copied into and out of it every
    round. Hoisted weights are transposed back inside each branch, where XLA
    folds the transposes into the products.

    Returns the tokens [B, S], the logits [B, S, V] (record_logits; else None)
    and the cache.
    """
    b, s = token_BS.shape
    widths = self.widths
    record = self.config.record_logits

    def call(cache, token, pos, query, new_keys, width):
      """The model over `width` tokens per request; the cache is only read."""
      keys = masks.AttentionMeta(*(jnp.concatenate([c, n], axis=1)
                                   for c, n in zip(cache_meta, new_keys)))
      weights = params if hoisted is None else self._unhoist(hoisted, params, width)
      return self.model.apply({'params': weights}, token, pos, (query, keys), cache=cache,
                              write_cache=False)

    if widths == (s,):
      # Every round runs every slot, in slot order: no partition, no conditional
      # (the accelerator default; see InterpreterConfig.round_widths).
      logits, entries = call(cache, token_BS, pos_BS, query_meta, new_meta, s)
      slots = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
      return (sample(logits, slots), logits if record else None,
              cache_lib.write_entries(cache, entries, index_BS))
    # Fed slots first, in slot order: slot j goes to column rank[j], so column r
    # holds the slot whose rank is r (a stable partition, without a sort).
    fed_i = fed_BS.astype(jnp.int32)
    n_fed = fed_i.sum(axis=1, keepdims=True)
    rank = jnp.where(fed_BS, jnp.cumsum(fed_i, axis=1) - 1,
                     n_fed + jnp.cumsum(1 - fed_i, axis=1) - 1)
    slot_ids = jnp.arange(s, dtype=jnp.int32)
    perm = jnp.sum(jnp.where(rank[:, None, :] == slot_ids[None, :, None], slot_ids, 0),
                   axis=2)
    # Every per-slot input in one gather.
    inputs = jnp.stack([jnp.asarray(x, jnp.int32) for x in
                        (token_BS, pos_BS, index_BS, *query_meta, *new_meta)], axis=-1)
    columns = jnp.take_along_axis(inputs, perm[:, :, None], axis=1)
    token, pos, index = columns[..., 0], columns[..., 1], columns[..., 2]
    n_meta = len(query_meta)
    query = masks.AttentionMeta(*(columns[..., 3 + i] for i in range(n_meta)))
    new_keys = masks.AttentionMeta(*(columns[..., 3 + n_meta + i] for i in range(n_meta)))
    rows = jnp.arange(b)[:, None]

    def run(width):
      def branch(cache):
        cut = lambda x: x[:, :width]
        logits, entries = call(cache, cut(token), cut(pos),
                               masks.AttentionMeta(*(cut(a) for a in query)),
                               masks.AttentionMeta(*(cut(a) for a in new_keys)), width)
        slots = cut(perm)
        sampled = jnp.zeros((b, s), jnp.int32).at[rows, slots].set(sample(logits, slots))
        full = None
        if record:
          full = jnp.zeros((b, s, logits.shape[-1]), logits.dtype).at[rows, slots].set(logits)
        # Entries of the columns past `width` are zeros; their slots are not fed,
        # so their index drops them.
        pad = lambda x: jnp.pad(x, [(0, 0), (0, s - width)] + [(0, 0)] * (x.ndim - 2))
        return sampled, full, jax.tree.map(pad, entries)
      return branch

    needed = jnp.max(fed_BS.sum(axis=1))
    branch = jnp.searchsorted(jnp.asarray(widths), needed)
    sampled, logits, entries = jax.lax.switch(branch, [run(w) for w in widths], cache)
    return sampled, logits, cache_lib.write_entries(cache, entries, index)

  @property
  def widths(self) -> tuple[int, ...]:
    """Query widths the forward pass is compiled for (`InterpreterConfig.round_widths`;
    by default powers of two below S, and S, on the CPU, else S alone)."""
    if self.config.round_widths is not None:
      return self.config.round_widths
    s = self.config.slots
    if jax.default_backend() != 'cpu':
      return (s,)
    return tuple(sorted({1 << i for i in range(s.bit_length()) if 1 << i < s} | {s}))

  def _start_queued(self, state: State) -> State:
    """Gives free async slots to queued threads, oldest promise first."""
    b, s = state.slot_thread.shape
    free = (state.slot_thread == NO_THREAD) & (jnp.arange(s) > 0)
    queued = state.n_threads - state.n_started
    rank = jnp.cumsum(free, axis=1) - 1
    take = free & (rank < queued[:, None]) & (state.status == RUNNING)[:, None]
    thread = state.n_started[:, None] + 1 + rank
    start = jnp.take_along_axis(state.start_pos, jnp.where(take, thread, 0), axis=1)
    return state.replace(
        slot_thread=jnp.where(take, thread, state.slot_thread).astype(jnp.int32),
        slot_token=jnp.where(take, self.c.async_open, state.slot_token),
        slot_pos=jnp.where(take, start, state.slot_pos),
        slot_ready=state.slot_ready | take,
        slot_count=jnp.where(take, 0, state.slot_count),
        n_started=state.n_started + take.sum(axis=1))

  # -- sampling and the state machine ----------------------------------------

  def _sample(self, state: State, logits_BWV, slots_BW, requests: Requests):
    """Tokens [B, W] sampled from the logits of the slots `slots_BW` under the
    grammar (W <= S: the slots a round ran, see `_forward`)."""
    cfg = self.config
    allowed = grammar.allowed_tokens(
        self.tables, is_main=slots_BW == 0, in_topic=state.in_topic,
        topic_len=state.topic_len, can_promise=state.n_threads < cfg.max_threads,
        body_len=jnp.take_along_axis(state.slot_count, slots_BW, axis=1),
        max_topic_tokens=cfg.max_topic_tokens, max_thread_tokens=cfg.max_thread_tokens,
        sequential=cfg.sequential)
    biased = logits_BWV + requests.logit_bias[:, None, :]
    return sampling.sample(biased, allowed, requests.keys, state.round,
                           requests.temperature, requests.top_p, top_k=cfg.top_k,
                           use_top_p=cfg.use_top_p, slot_ids_BS=slots_BW)

  def _advance(self, state: State, token, logits_BSV, fed, fed_token,
               requests: Requests) -> State:
    """The state machine after a round: `token` [B, S] sampled per slot (read
    where a slot fed), `logits_BSV` their logits (record_logits; else None)."""
    cfg, c, tables = self.config, self.c, self.tables
    b, s = fed.shape
    is_main = jnp.broadcast_to(jnp.arange(s) == 0, (b, s))
    slot_thread = jnp.maximum(state.slot_thread, 0)
    # Teacher forcing (tests, replay): the forced token of the slot's thread.
    forced_len = requests.forced.shape[-1]
    forced = requests.forced[jnp.arange(b)[:, None], slot_thread,
                             jnp.minimum(state.slot_count, forced_len - 1)]
    forced = jnp.where(state.slot_count < forced_len, forced, NOT_FORCED)
    token = jnp.where(forced != NOT_FORCED, forced, token)

    # An async slot that just fed </async> is released; its sample means nothing.
    release = fed & ~is_main & (fed_token == c.async_close)
    got = fed & ~release
    length = jnp.asarray(tables.length)

    # Main thread.
    main_got, main_token = got[:, 0], token[:, 0]
    opens = main_got & ~state.in_topic & (main_token == c.promise)
    closes = main_got & state.in_topic & (length[main_token] >= 0)
    ends = main_got & (main_token == c.eos)
    main_fed_token = fed_token[:, 0]
    # The positions reserved for a promise's thread: the rule of the training layout.
    reserve = cfg.position_strategy.reserved(length[main_fed_token], 0)
    jump = jnp.where(length[main_fed_token] >= 0, reserve, 0)
    main_pos = jnp.where(fed[:, 0], state.slot_pos[:, 0] + 1 + jump, state.slot_pos[:, 0])
    clock = state.clock + fed[:, 0]
    # A closed promise creates thread k; it forks at the length token's clock.
    # (Selects over the P thread ids rather than scatters: on an accelerator
    # each scatter is a kernel launch of its own.)
    thread_ids = jnp.arange(self.num_thread_ids)
    created = closes[:, None] & (thread_ids == (state.n_threads + 1)[:, None])
    fork = jnp.where(created, clock[:, None], state.fork)
    start_pos = jnp.where(created, (main_pos + 1)[:, None], state.start_pos)

    # Async threads: </async> sampled -> the thread is done (fed next round).
    ended = got & ~is_main & (token == c.async_close)
    thread_done = state.thread_done | jnp.any(
        ended[:, :, None] & (state.slot_thread[:, :, None] == thread_ids), axis=1)

    slot_pos = jnp.where(is_main, main_pos[:, None],
                         jnp.where(fed, state.slot_pos + 1, state.slot_pos))
    slot_ready = jnp.where(release, False, jnp.where(got, ~(is_main & ends[:, None]),
                                                     state.slot_ready))
    n_threads = state.n_threads + closes

    # Log every meaningful sample in slot order.
    log_index = jnp.where(got, state.out_len[:, None] + jnp.cumsum(got, axis=1) - 1,
                          cfg.log_size)
    out_logits = state.out_logits
    if cfg.record_logits:
      out_logits = jax.vmap(lambda o, i, u: o.at[i].set(u, mode='drop'))(
          out_logits, log_index, logits_BSV.astype(jnp.float32))

    main_done = state.main_done | ends
    all_joined = ~jnp.any((thread_ids >= 1) & (thread_ids <= n_threads[:, None])
                          & ~thread_done, axis=1)
    finished = (state.status == RUNNING) & main_done & all_joined
    return state.replace(
        clock=clock, fork=fork, start_pos=start_pos, thread_done=thread_done,
        n_threads=n_threads,
        slot_thread=jnp.where(release, NO_THREAD, state.slot_thread),
        slot_token=jnp.where(got, token, state.slot_token), slot_pos=slot_pos,
        slot_ready=slot_ready, slot_count=state.slot_count + got,
        in_topic=(state.in_topic | opens) & ~closes,
        topic_len=jnp.where(opens, 0, state.topic_len + (main_got & state.in_topic & ~closes)),
        main_done=main_done,
        status=jnp.where(finished, DONE, state.status),
        steps=jnp.where(finished | (state.status == RUNNING), state.round, state.steps),
        out_token=_scatter(state.out_token, log_index, token),
        out_thread=_scatter(state.out_thread, log_index, state.slot_thread),
        out_round=_scatter(state.out_round, log_index, jnp.broadcast_to(state.round, (b, s))),
        out_len=state.out_len + got.sum(axis=1), out_logits=out_logits)

  # -- the whole generation --------------------------------------------------

  def _loop_layouts(self, width: int) -> dict[str, tuple[int, ...]]:
    """Weights a model call at `width` tokens per request reads transposed:
    name -> axis permutation.

    Each is a product that contracts the weight's minor axis (x @ W^T). XLA then
    either copies the transposed weight every round or runs a transposed
    product; both cost a visible share of a small model's decode step on CPU.
    `hoist` transposes these once, before the loop, behind an optimization
    barrier; inside the loop `_unhoist` transposes them back, which XLA folds
    into the products (now x @ W with W's contracted axis major). Gemma 2/3's
    MLP gating is hoisted for wide calls only: a one-token call reads it as
    stored (a matrix-vector product is as fast either way, and the transposed
    copy makes XLA:CPU copy it back).
    """
    hoist = self.config.hoist_layouts
    if not (jax.default_backend() == 'cpu' if hoist is None else hoist):
      return {}
    perms = {'input_embedding': (1, 0), 'q_einsum': (1, 0, 2), 'kv_einsum': (2, 0, 1, 3),
             'qkv_einsum': (2, 0, 1, 3)}
    if width > 1 and self.model.config.transpose_gating_einsum:  # (2, F, D) -> (2, D, F)
      perms['gating_einsum'] = (0, 2, 1)
    return perms

  def hoist(self, params, transpose=None):
    """The decode loop's copies of `params` in its layouts (see `_loop_layouts`);
    `step(params, state, requests, hoisted=...)` and `decode` read them.

    Leaves the loop reads as stored are `params`' own arrays. `transpose(x, perm)`
    makes the others; the default, for use inside a program, keeps XLA from
    folding the transpose back into the loop (`Interpreter` passes a jitted
    transpose and keeps the result between generations).
    """
    perms = self._loop_layouts(max(self.widths))
    if transpose is None:
      transpose = lambda x, perm: jax.lax.optimization_barrier(jnp.transpose(x, perm))

    def transposed(path, x):
      perm = perms.get(getattr(path[-1], 'key', None))
      return x if perm is None else transpose(x, perm)
    return jax.tree_util.tree_map_with_path(transposed, params)

  def _unhoist(self, hoisted, params, width: int):
    """The weights for a model call at `width` tokens per request."""
    perms = self._loop_layouts(width)

    def unhoist(path, x, original):
      perm = perms.get(getattr(path[-1], 'key', None))
      return original if perm is None else jnp.transpose(x, np.argsort(perm))
    return jax.tree_util.tree_map_with_path(unhoist, hoisted, params)

  def generate(self, params, prompt_BT, prompt_len_B, requests: Requests, cache,
               hoisted=None) -> State:
    """Prefill, then rounds until every request stops (`decode`); one program.

    `cache` is `init_cache(..., cache_size)`; the prefill writes the prompts into
    the first cache stage that holds them (see `decode`).
    """
    cache = self.first_stage(cache, prompt_BT.shape[1])
    state = self.prefill(params, prompt_BT, prompt_len_B, requests, cache)
    return self.decode(params, state, requests, hoisted)

  def first_stage(self, cache, prompt_length: int):
    """`cache` cut to the first stage that holds a prompt of `prompt_length`."""
    first = next(n for n in self.config.stages if n >= prompt_length)
    return jax.tree.map(lambda x: x[:, :first], cache)

  def decode(self, params, state: State, requests: Requests, hoisted=None) -> State:
    """The decode rounds of a prefilled state, until every request stops.

    The rounds run in stages (`InterpreterConfig.stages`): a stage's loop holds
    a cache of its own size, so attention reads no more entries than that; it
    ends when a round might not fit, and the next stage pads the cache (once).
    Requests still running after max_steps rounds end with status BUDGET.
    `hoisted` is `hoist(params)`, made here when not given (a caller that
    decodes many times makes it once: the transposes cost about as much as a
    few rounds of a small model).
    """
    cfg = self.config
    if hoisted is None:
      hoisted = self.hoist(params)
    body = lambda st: self.step(params, st, requests, hoisted=hoisted)
    for size in (n for n in cfg.stages if n >= state.capacity):
      state = self.grow(state, size)
      last = size == cfg.cache_size

      def cond(state, last=last):
        running = state.status == RUNNING
        go = jnp.any(running) & (state.round < cfg.max_steps)
        if not last:  # every running request has room for a full round
          go &= jnp.all(~running | (state.ptr + cfg.slots <= state.capacity))
        return go

      state = jax.lax.while_loop(cond, body, state)
    return state.replace(status=jnp.where(state.status == RUNNING, BUDGET, state.status))

  def grow(self, state: State, size: int) -> State:
    """The state with its cache padded to `size` entries (empty, invisible)."""
    old = state.capacity
    if size == old:
      return state
    b = state.ptr.shape[0]
    return state.replace(
        cache=cache_lib.grow_cache(state.cache, size),
        entry_thread=jnp.pad(state.entry_thread, [(0, 0), (0, size - old)],
                             constant_values=NO_THREAD),
        entry_clock=jnp.concatenate(
            [state.entry_clock,
             jnp.broadcast_to(jnp.arange(old, size, dtype=jnp.int32), (b, size - old))], 1))


def _scatter(array_BN, index_BS, values_BS):
  """array[b, index[b, s]] = values[b, s]; indices outside the array are dropped."""
  return jax.vmap(lambda a, i, v: a.at[i].set(v.astype(a.dtype), mode='drop'))(
      array_BN, index_BS, values_BS)


def no_forcing(batch: int, num_thread_ids: int) -> np.ndarray:
  return np.full((batch, num_thread_ids, 1), NOT_FORCED, np.int32)
