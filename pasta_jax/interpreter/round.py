"""One decode round (docs/design.md section 5): which slots feed, their attention metadata,
the model call at the narrowest width that holds them, and the sampling under the
grammar; and the sequential decoder's round, a plain KV-cache step.

The cache invariants are those of `state`; the thread state machine is `threads`.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pasta_jax import masks
from pasta_jax.interpreter import grammar
from pasta_jax.interpreter import layouts
from pasta_jax.interpreter import record
from pasta_jax.interpreter import sampling
from pasta_jax.interpreter import threads
from pasta_jax.interpreter.config import InterpreterConfig
from pasta_jax.interpreter.state import (CACHE_FULL, DONE, NO_THREAD, RUNNING, Requests,
                                         State, scatter)
from pasta_jax.models import cache as cache_lib

# sample(logits [B, W, V], slots [B, W]) -> tokens [B, W]
Sampler = Callable[[jax.Array, jax.Array], jax.Array]


class Round:
  """One decode round of a model, config and vocabulary (pure functions of `State`)."""

  def __init__(self, model: nn.Module, config: InterpreterConfig,
               tables: grammar.TokenTables):
    self.model = model
    self.config = config
    self.tables = tables
    self.c = tables.control

  @property
  def widths(self) -> tuple[int, ...]:
    """Query widths the forward pass is compiled for (`InterpreterConfig.round_widths`;
    by default powers of two below S, and S, on the CPU, else S alone)."""
    return self.config.for_backend(jax.default_backend()).round_widths

  def layouts(self, width: int) -> layouts.Permutations:
    """The weights a model call at `width` tokens per request reads transposed
    (`layouts.permutations`)."""
    return layouts.permutations(
        width, hoist_layouts=self.config.for_backend(jax.default_backend()).hoist_layouts,
        transpose_gating_einsum=self.model.config.transpose_gating_einsum)

  def weights(self, params: Any, hoisted: Any | None, width: int) -> Any:
    """The weights of a model call at `width` tokens per request: `params`, or
    with the hoisted layouts those the call's model reads permuted
    (`layouts.select`; `model` gives that model)."""
    return params if hoisted is None else layouts.select(hoisted, params,
                                                         self.layouts(width))

  def model_for(self, width: int, hoisted: Any | None) -> nn.Module:
    """The model of a call at `width` tokens per request: with the hoisted
    layouts, one that reads its permuted weights as they are stored."""
    if hoisted is None:
      return self.model
    perms = layouts.model_layouts(self.layouts(width))
    return self.model.clone(layouts=perms) if perms else self.model

  def sample(self, state: State, logits_BWV: jax.Array, slots_BW: jax.Array,
             requests: Requests) -> jax.Array:
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
                           use_top_p=cfg.use_top_p, slot_ids_BS=slots_BW,
                           draws=requests.draws)

  def pasta(self, params: Any, hoisted: Any | None, state: State,
            requests: Requests) -> State:
    """A PASTA round of a state whose round counter is already advanced."""
    c = self.c
    state = threads.start_queued(state, c)
    b, s = state.slot_token.shape
    is_main = jnp.arange(s) == 0
    running = state.status == RUNNING
    thread_ids = jnp.arange(self.config.max_threads + 1)
    sync_waits = threads.sync_waits(state, c, thread_ids)
    fed = state.slot_ready & running[:, None] & ~(is_main & sync_waits[:, None])
    n_fed = fed.sum(axis=1)
    capacity = state.capacity
    full = running & (state.ptr + n_fed > capacity)
    fed &= ~full[:, None]
    state = state.replace(status=jnp.where(full, CACHE_FULL, state.status))

    # Cache entries for this round's tokens, consecutive in slot order.
    index = jnp.where(fed, state.ptr[:, None] + jnp.cumsum(fed, axis=1) - 1,
                      capacity).astype(jnp.int32)
    join = threads.join(state, c, thread_ids, fed[:, 0])
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
    sample = lambda logits_BWV, slots_BW: self.sample(state, logits_BWV, slots_BW, requests)
    token, logits, cache = self._forward(params, hoisted, state.cache, state.slot_token,
                                         state.slot_pos, query_meta, cache_meta, new_meta,
                                         index, fed, sample)
    entry_thread = scatter(state.entry_thread, index, state.slot_thread)
    entry_clock = scatter(state.entry_clock, index, query_clock)
    state = state.replace(cache=cache, entry_thread=entry_thread, entry_clock=entry_clock,
                          ptr=state.ptr + fed.sum(axis=1), join=join)
    return threads.advance(state, token, logits, fed, state.slot_token, requests,
                           config=self.config, tables=self.tables)

  def sequential(self, params: Any, hoisted: Any | None, state: State,
                 requests: Requests) -> State:
    """A round of the sequential decoder (S = 1, no tags), without thread
    bookkeeping: a plain KV-cache step (`hoisted`: as in `weights`).

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
    # with iota XLA:CPU folds the mask into every layer's softmax fusions, which
    # made a tiny-model step slower (docs/benchmarks.md).
    entries = state.entry_clock
    written = entries < (state.ptr + fed)[:, None]
    zeros_k, zeros_q = jnp.zeros_like(entries), jnp.zeros_like(index)
    key_meta = masks.AttentionMeta(zeros_k, entries, entries, entries,
                                   written.astype(jnp.int32))
    query_meta = masks.AttentionMeta(zeros_q, index, index, index,
                                     fed[:, None].astype(jnp.int32))
    logits, cache = self.model_for(1, hoisted).apply(
        {'params': self.weights(params, hoisted, 1)}, state.slot_token, state.slot_pos,
        (query_meta, key_meta), cache=state.cache, cache_index=index)
    # Sample among text and EOS (the whole grammar of sequential mode).
    allowed = jnp.asarray(self.tables.is_text) | (jnp.arange(self.tables.vocab_size)
                                                   == self.c.eos)
    biased = logits + requests.logit_bias[:, None, :]
    token = sampling.sample(biased, jnp.broadcast_to(allowed, biased.shape), requests.keys,
                            state.round, requests.temperature, requests.top_p,
                            top_k=cfg.top_k, use_top_p=cfg.use_top_p,
                            draws=requests.draws)
    token = record.force(token, requests, state.slot_count)
    ends = fed & (token[:, 0] == self.c.eos)
    logged = record.log(state, cfg, fed[:, None], token, jnp.zeros_like(token), logits)
    done = running & ~full & (state.main_done | ends)
    status = jnp.where(full, CACHE_FULL, jnp.where(done, DONE, state.status))
    return state.replace(
        cache=cache, ptr=state.ptr + fed, clock=state.clock + fed,
        slot_token=jnp.where(fed[:, None], token, state.slot_token),
        slot_pos=state.slot_pos + fed[:, None],
        slot_ready=(state.slot_ready & ~fed[:, None]) | (fed & ~ends)[:, None],
        slot_count=state.slot_count + fed[:, None],
        main_done=state.main_done | ends, status=status,
        steps=jnp.where(running & ~full, state.round, state.steps), **logged)

  def _forward(self, params: Any, hoisted: Any | None, cache: Any, token_BS: jax.Array,
               pos_BS: jax.Array, query_meta: masks.AttentionMeta,
               cache_meta: masks.AttentionMeta, new_meta: masks.AttentionMeta,
               index_BS: jax.Array, fed_BS: jax.Array, sample: Sampler
               ) -> tuple[jax.Array, jax.Array | None, Any]:
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
    round. With hoisted weights each branch's model reads them as they are
    stored (`model_for`).

    Returns the tokens [B, S], the logits [B, S, V] (record_logits; else None)
    and the cache.
    """
    b, s = token_BS.shape
    widths = self.widths
    record = self.config.record_logits

    def call(cache: Any, token: jax.Array, pos: jax.Array, query: masks.AttentionMeta,
             new_keys: masks.AttentionMeta, width: int) -> tuple[jax.Array, Any]:
      """The model over `width` tokens per request; the cache is only read."""
      keys = masks.AttentionMeta(*(jnp.concatenate([c, n], axis=1)
                                   for c, n in zip(cache_meta, new_keys)))
      weights = self.weights(params, hoisted, width)
      return self.model_for(width, hoisted).apply(
          {'params': weights}, token, pos, (query, keys), cache=cache, write_cache=False)

    if widths == (s,):
      # Every round runs every slot, in slot order: no partition, no conditional
      # (the accelerator default; see InterpreterConfig.round_widths).
      logits, entries = call(cache, token_BS, pos_BS, query_meta, new_meta, s)
      slots = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
      return (sample(logits, slots), logits if record else None,
              cache_lib.write_entries(cache, entries, index_BS, after=logits))
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
    index = columns[..., 2]
    n_meta = len(query_meta)
    rows = jnp.arange(b)[:, None]

    def run(width: int) -> Callable[[Any], tuple[jax.Array, jax.Array | None, Any]]:
      def branch(cache: Any, columns: jax.Array, perm: jax.Array
                 ) -> tuple[jax.Array, jax.Array | None, Any]:
        # The columns are cut and unstacked inside the branch, where the cuts
        # fuse into their consumers (outside, each was an op of its own).
        cut = columns[:, :width]
        query = masks.AttentionMeta(*(cut[..., 3 + i] for i in range(n_meta)))
        new_keys = masks.AttentionMeta(*(cut[..., 3 + n_meta + i] for i in range(n_meta)))
        logits, entries = call(cache, cut[..., 0], cut[..., 1], query, new_keys, width)
        slots = perm[:, :width]
        sampled = jnp.zeros((b, s), jnp.int32).at[rows, slots].set(sample(logits, slots))
        full = None
        if record:
          full = jnp.zeros((b, s, logits.shape[-1]), logits.dtype).at[rows, slots].set(logits)
        # Entries of the columns past `width` are zeros; their slots are not fed,
        # so their index drops them.
        return sampled, full, cache_lib.grow_cache(entries, s)
      return branch

    # The narrowest width that holds every request's fed slots: the number of
    # widths below the need (a compare and a sum; jnp.searchsorted is a loop).
    needed = jnp.max(n_fed)
    branch = jnp.sum(jnp.asarray(widths) < needed)
    sampled, logits, entries = jax.lax.switch(branch, [run(w) for w in widths], cache,
                                              columns, perm)
    return sampled, logits, cache_lib.write_entries(cache, entries, index)
