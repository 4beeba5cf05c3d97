"""PASTA-LANG in token form: the control-token vocabulary and its grammar.

A tokenized annotated response (docs/pasta_lang.md has the full scheme):

    TEXT...  PROMISE TOPIC... LEN_n  ASYNC BODY... END_ASYNC  TEXT...  SYNC  TEXT...  EOS

* `PROMISE` opens a promise tag; the topic follows as ordinary text tokens; one
  length token `LEN_n` (n = promised tokens / quantum) both carries the length and
  closes the tag. The promise's *last token* is `LEN_n`.
* `ASYNC ... END_ASYNC` is the async body (in training data right after its promise;
  at inference the interpreter seeds the async thread with `ASYNC`).
* `SYNC` is `<sync/>`; `EOS` ends the response (an implicit sync).

A decoder parses this one token at a time with O(1) state: a mode (main, topic,
await-body, body, done) and the number of promises so far (an interpreter that
caps topic length also counts the topic's tokens). `scan` below is the host-side
reference of that state machine.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Sequence

import numpy as np

from pasta_jax import lang


class Kind(enum.IntEnum):
  """What each token of a tokenized response is."""

  TEXT = 0          # ordinary main-thread text
  PROMISE = 1       # the PROMISE control token
  TOPIC = 2         # a text token inside a promise tag
  LENGTH = 3        # the length token that closes a promise tag
  ASYNC = 4         # ASYNC: first token of an async thread
  BODY = 5          # a text token of an async body
  END_ASYNC = 6     # END_ASYNC: last token of an async thread
  SYNC = 7
  EOS = 8


@dataclasses.dataclass(frozen=True)
class ControlTokens:
  """Ids of the PASTA control tokens in one vocabulary.

  Attributes:
    promise, async_open, async_close, sync: single ids of the four tags.
    lengths: lengths[i] is the id of the length token for i * quantum tokens.
    eos: end of response. pad: padding id. bos: beginning of sequence (or None).
    quantum: the promised-length granularity (docs/design.md section 1: 10).
  """

  promise: int
  async_open: int
  async_close: int
  sync: int
  lengths: tuple[int, ...]
  eos: int
  pad: int = 0
  bos: int | None = None
  quantum: int = lang.DEFAULT_QUANTUM

  def __post_init__(self):
    object.__setattr__(self, 'lengths', tuple(int(i) for i in self.lengths))
    if not self.lengths:
      raise ValueError('ControlTokens needs at least one length token')
    if self.quantum < 1:
      raise ValueError(f'quantum must be >= 1, got {self.quantum}')
    tags = self.tag_ids
    if len(set(tags)) != len(tags):
      raise ValueError(f'PASTA control token ids must be distinct, got {tags}')
    if self.eos in tags or self.pad in tags or (self.bos is not None and self.bos in tags):
      raise ValueError(f'PASTA control ids {tags} overlap eos/pad/bos '
                       f'({self.eos}, {self.pad}, {self.bos})')

  @property
  def tag_ids(self) -> tuple[int, ...]:
    """Every id that only PASTA-LANG structure may produce."""
    return (self.promise, self.async_open, self.async_close, self.sync) + self.lengths

  @property
  def max_promise_tokens(self) -> int:
    return (len(self.lengths) - 1) * self.quantum

  def length_id(self, tokens: int) -> int:
    """The id of the length token for a promised length (a multiple of quantum)."""
    if tokens < 0 or tokens % self.quantum:
      raise ValueError(f'promised length {tokens} is not a non-negative multiple of '
                       f'the quantum {self.quantum}')
    index = tokens // self.quantum
    if index >= len(self.lengths):
      raise ValueError(f'promised length {tokens} exceeds the largest length token '
                       f'({self.max_promise_tokens}); quantize the document with '
                       f'Document.quantized(max_tokens={self.max_promise_tokens})')
    return self.lengths[index]

  def length_table(self, vocab_size: int) -> np.ndarray:
    """int32 [vocab_size]: promised length of each length id, -1 elsewhere.

    A jitted state machine reads a token's length with one gather.
    """
    table = np.full(vocab_size, -1, np.int32)
    for i, token in enumerate(self.lengths):
      if token >= vocab_size:
        raise ValueError(f'length token id {token} >= vocab size {vocab_size}')
      table[token] = i * self.quantum
    return table


@dataclasses.dataclass(frozen=True)
class Scan:
  """Per-token structure of a tokenized response (host-side reference parse).

  Attributes:
    kind: [T] `Kind` of every token.
    thread: [T] 0 for main-thread tokens (text, promise tags, sync, eos), k for the
      tokens `ASYNC BODY... END_ASYNC` of the k-th promise.
    promised: [P + 1] promised length of thread k at index k (index 0 unused).
    promise_end: [P + 1] index of promise k's last token (its LENGTH token).
    complete: whether the response ended with EOS.
  """

  kind: np.ndarray
  thread: np.ndarray
  promised: np.ndarray
  promise_end: np.ndarray
  complete: bool

  @property
  def num_threads(self) -> int:
    return len(self.promised) - 1


def scan(ids: Sequence[int] | np.ndarray, control: ControlTokens, *,
         annotated: bool = True) -> Scan:
  """Parses a tokenized response token by token; raises lang.PastaLangError.

  Args:
    ids: the response token ids (no prompt), optionally ending in EOS.
    control: the control-token vocabulary.
    annotated: every promise is followed by its ASYNC ... END_ASYNC body.
  """
  ids = np.asarray(ids, np.int64).reshape(-1)
  lengths = {tok: i * control.quantum for i, tok in enumerate(control.lengths)}
  kind = np.zeros(len(ids), np.int32)
  thread = np.zeros(len(ids), np.int32)
  promised, promise_end = [0], [-1]
  mode = 'main'
  names = {control.pad: 'padding'}
  if control.bos is not None:
    names[control.bos] = 'bos'
  names |= {control.promise: '<promise>', control.async_open: '<async>',
           control.async_close: '</async>', control.sync: '<sync/>', control.eos: 'EOS'}

  def error(i, problem):
    return lang.PastaLangError(problem, int(i))

  for i, tok in enumerate(ids.tolist()):
    name = names.get(tok, 'a length token' if tok in lengths else None)
    if mode == 'done':
      raise error(i, 'token after EOS')
    if tok != control.eos and (tok == control.pad or tok == control.bos):
      raise error(i, f'{name} id {tok} inside the response (a response holds no '
                  'padding or BOS)')
    if mode == 'main':
      if tok == control.promise:
        kind[i], mode = Kind.PROMISE, 'topic'
      elif tok == control.sync:
        kind[i] = Kind.SYNC
      elif tok == control.eos:
        kind[i], mode = Kind.EOS, 'done'
      elif name is not None:
        raise error(i, f'{name} in the main thread outside a promise tag')
      else:
        kind[i] = Kind.TEXT
    elif mode == 'topic':
      if tok in lengths:
        kind[i] = Kind.LENGTH
        promised.append(lengths[tok])
        promise_end.append(i)
        mode = 'await_body' if annotated else 'main'
      elif name is not None:
        raise error(i, f'{name} inside a promise tag (a promise is closed by its '
                    'length token)')
      else:
        kind[i] = Kind.TOPIC
    elif mode == 'await_body':
      if tok != control.async_open:
        raise error(i, f'promise {len(promised) - 1} has no body: its length token is '
                    'not followed by <async>')
      kind[i], thread[i], mode = Kind.ASYNC, len(promised) - 1, 'body'
    else:  # body
      thread[i] = len(promised) - 1
      if tok == control.async_close:
        kind[i], mode = Kind.END_ASYNC, 'main'
      elif name is not None:
        raise error(i, f'{name} inside an async body (bodies hold text only)')
      else:
        kind[i] = Kind.BODY
  if mode in ('topic', 'await_body', 'body'):
    problem = {'topic': 'unfinished promise tag (no length token)',
               'await_body': f'promise {len(promised) - 1} has no body',
               'body': 'unclosed <async> (no </async>)'}[mode]
    raise error(len(ids), f'response ends inside a PASTA element: {problem}')
  return Scan(kind, thread, np.asarray(promised, np.int32),
              np.asarray(promise_end, np.int32), mode == 'done')
