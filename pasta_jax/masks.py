"""The PASTA visibility rule (docs/design.md section 2), in one place.

Training masks, the model's masks and the interpreter's masks are all built by
`visibility_mask` from the compact per-token metadata `AttentionMeta`. Nothing else
in the project decides which token may see which.

The rule uses a *main clock*: a number that grows along the main thread (a main
token's clock is its index in the main thread, or any strictly increasing stand-in
for it, such as its index in the training sequence). For every token we keep

  * ``thread``: 0 for the main thread (and the prompt), k for async thread k.
  * ``anchor`` (query side): the main-clock value at which the token's view of the
    main thread is frozen. A main token: its own clock. A token of async thread k:
    the clock of the last token of promise k (its fork point).
  * ``visible_from`` (key side): the main-clock value from which main-thread
    queries see the token. A main token: its own clock. A token of async thread k:
    the clock of the `<sync/>` that joins thread k, or `NEVER` while unjoined.
  * ``order``: generation order (training: sequence index; interpreter: the cache
    entry index). Within one async thread a token sees the thread's earlier tokens.
  * ``segment``: packing segment; 0 marks padding / empty cache entries.

Query q sees key k iff they share a non-zero segment and

    visible_from[k] <= anchor[q]                       (what the main thread saw)
    or (thread[k] == thread[q] and order[k] <= order[q])   (own thread, causal)

A main query's anchor is its own clock, so the first clause alone gives it the
prompt, earlier main tokens and every thread joined at or before it (a `<sync/>`
sees the threads it joins: their visible_from is the sync's own clock). An async
query's anchor is its fork point, so it sees exactly what the main thread saw when
the promise was completed, plus its own thread.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

# visible_from of a token that no main-thread token may (yet) see.
NEVER = np.iinfo(np.int32).max


class AttentionMeta(NamedTuple):
  """Compact per-token visibility metadata; every field is an int array [..., T]."""

  thread: Any
  anchor: Any
  visible_from: Any
  order: Any
  segment: Any


def visibility_mask(query: AttentionMeta, key: AttentionMeta):
  """Expands metadata into a boolean mask [..., Tq, Tk] (True = may attend).

  Works on numpy and jax.numpy arrays alike (only operators and broadcasting),
  so the same function builds training masks on the host and masks inside jitted
  model and interpreter code.
  """
  q = [a[..., :, None] for a in query]
  k = [a[..., None, :] for a in key]
  q_thread, q_anchor, _, q_order, q_segment = q
  k_thread, _, k_visible_from, k_order, k_segment = k
  same_segment = (q_segment == k_segment) & (k_segment != 0)
  seen_by_main = k_visible_from <= q_anchor
  own_thread = (k_thread == q_thread) & (k_order <= q_order)
  return same_segment & (seen_by_main | own_thread)


def causal_meta(length: int, segment=None) -> AttentionMeta:
  """Metadata under which `visibility_mask` is the ordinary causal mask."""
  index = np.arange(length, dtype=np.int32)
  if segment is None:
    segment = np.ones(length, np.int32)
  return AttentionMeta(
      thread=np.zeros(length, np.int32),
      anchor=index,
      visible_from=index,
      order=index,
      segment=np.asarray(segment, np.int32),
  )
