"""PASTA-LANG grammar on device: token classes and per-slot logit masks (docs/design.md section 5).

Each slot is in one of three grammatical places, known from O(1) state:

* main thread, in text: ordinary text, `<promise>` (while promises remain),
  `<sync/>` and EOS may follow;
* main thread, inside a promise tag (after `PROMISE`): topic text (while the topic
  is shorter than the cap) or a length token, which closes the tag;
* an async thread: body text (while shorter than the cap) or `</async>`.

Never offered: `<async>` (the interpreter inserts it), padding, BOS, unknown. So
every document the interpreter writes is well formed by construction.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pasta_jax import tokens as tokens_lib


@dataclasses.dataclass(frozen=True, eq=False)
class TokenTables:
  """Per-vocabulary constants of the grammar (numpy; closed over by jitted code).

  Attributes:
    is_text: bool [V], ordinary text tokens (not control, pad, BOS, EOS, unk).
    length: int32 [V], promised length of a length token, -1 elsewhere.
    control: the control-token ids.
  """

  is_text: np.ndarray
  length: np.ndarray
  control: tokens_lib.ControlTokens

  @classmethod
  def build(cls, control: tokens_lib.ControlTokens, vocab_size: int,
            unk: int | None = None) -> 'TokenTables':
    is_text = np.ones(vocab_size, bool)
    special = list(control.tag_ids) + [control.eos, control.pad]
    special += [t for t in (control.bos, unk) if t is not None]
    for token in special:
      if not 0 <= token < vocab_size:
        raise ValueError(f'token id {token} outside the vocabulary of {vocab_size}')
      is_text[token] = False
    return cls(is_text, control.length_table(vocab_size), control)

  @property
  def vocab_size(self) -> int:
    return len(self.is_text)


def allowed_tokens(tables: TokenTables, *, is_main: jax.Array, in_topic: jax.Array,
                   topic_len: jax.Array, can_promise: jax.Array, body_len: jax.Array,
                   max_topic_tokens: int, max_thread_tokens: int | None,
                   sequential: bool) -> jax.Array:
  """bool [B, S, V]: the tokens each slot may sample next.

  Args:
    is_main: bool [B, S], the slot runs the main thread.
    in_topic: bool [B], the main thread is inside a promise tag.
    topic_len: int [B], topic tokens written so far.
    can_promise: bool [B], the request may open another promise.
    body_len: int [B, S], tokens the slot's async thread has sampled.
  """
  c = tables.control
  vocab = jnp.arange(tables.vocab_size)
  is_text = jnp.asarray(tables.is_text)
  is_length = jnp.asarray(tables.length) >= 0
  in_topic = in_topic[:, None]
  main_text = is_main & ~in_topic
  topic = is_main & in_topic
  topic_open = topic & (topic_len[:, None] < max_topic_tokens)
  body_open = ~is_main
  if max_thread_tokens is not None:
    body_open &= body_len < max_thread_tokens
  allow_text = main_text | topic_open | body_open
  if sequential:
    return (allow_text[..., None] & is_text) | (main_text[..., None] & (vocab == c.eos))
  per_token = (
      (allow_text[..., None] & is_text)
      | ((main_text & can_promise[:, None])[..., None] & (vocab == c.promise))
      | (main_text[..., None] & ((vocab == c.sync) | (vocab == c.eos)))
      | (topic[..., None] & is_length)
      | ((~is_main)[..., None] & (vocab == c.async_close)))
  return per_token


def check_prefix(tables: TokenTables, ids: Sequence[int], *, max_threads: int,
                 max_topic_tokens: int, sequential: bool) -> None:
  """Raises ValueError unless `ids` is a main thread's possible beginning under
  `allowed_tokens`: text, well-formed promise tags (at most `max_threads`, topics
  of at most `max_topic_tokens` tokens; the last tag may be left open) and
  `<sync/>` (text alone in sequential mode), EOS only last. A forced token
  replaces the sampled one without the grammar mask (`record.force`), so a
  forced prefix is checked here, on the host, before it reaches the device."""
  c = tables.control
  in_topic, topic_len, promises = False, 0, 0
  for i, token in enumerate(int(t) for t in ids):
    where = f'prefix token {i} (id {token})'
    if not 0 <= token < tables.vocab_size:
      raise ValueError(f'{where}: outside the vocabulary of {tables.vocab_size}')
    if token == c.eos and not in_topic:
      if i != len(ids) - 1:
        raise ValueError(f'{where}: EOS before the end of the prefix')
    elif in_topic:
      if tables.length[token] >= 0:
        in_topic, promises = False, promises + 1
      elif tables.is_text[token] and topic_len < max_topic_tokens:
        topic_len += 1
      else:
        raise ValueError(f'{where}: a promise topic continues with text (at most '
                         f'{max_topic_tokens} tokens) or ends with a length token')
    elif tables.is_text[token]:
      continue
    elif sequential:
      raise ValueError(f'{where}: sequential mode decodes text and EOS only')
    elif token == c.promise:
      if promises >= max_threads:
        raise ValueError(f'{where}: more than max_threads={max_threads} promises')
      in_topic, topic_len = True, 0
    elif token != c.sync:
      raise ValueError(f'{where}: the main thread writes text, <promise .../> tags, '
                       '<sync/> and EOS only')
