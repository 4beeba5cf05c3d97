"""Which sentencepiece pieces are the PASTA control tokens (`ControlPieces`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

from pasta_jax import lang

# Largest promised length of the default length tokens: LEN_0 .. LEN_50 at quantum
# 10. With the four tags that is 55 pieces, within Gemma 1/2's <unused0>..<unused98>.
DEFAULT_MAX_PROMISE_TOKENS = 500


@dataclasses.dataclass(frozen=True)
class ControlPieces:
  """Which sentencepiece pieces are the PASTA control tokens.

  Attributes:
    promise, async_open, async_close, sync: pieces of the four tags.
    lengths: lengths[i] is the piece of LEN_i (i * quantum promised tokens).
  """

  promise: str
  async_open: str
  async_close: str
  sync: str
  lengths: tuple[str, ...]

  def __post_init__(self) -> None:
    object.__setattr__(self, 'lengths', tuple(self.lengths))
    for piece in self.all:
      if not isinstance(piece, str) or not piece:
        raise ValueError(f'control pieces must be non-empty strings, got {piece!r}')
    if not self.lengths:
      raise ValueError('ControlPieces needs at least one length piece (LEN_0)')
    seen: dict[str, str] = {}
    for role, piece in self.roles():
      if piece in seen:
        raise ValueError(f'control piece {piece!r} is used twice: for {seen[piece]} '
                         f'and for {role}')
      seen[piece] = role

  @property
  def all(self) -> tuple[str, ...]:
    """Every piece, in the order promise, async_open, async_close, sync, lengths."""
    return (self.promise, self.async_open, self.async_close, self.sync) + self.lengths

  def roles(self, quantum: int | None = None) -> Iterator[tuple[str, str]]:
    """(role, piece) pairs; a role reads e.g. 'PROMISE' or 'LEN_3 (30 tokens)'."""
    yield 'PROMISE', self.promise
    yield 'ASYNC', self.async_open
    yield 'END_ASYNC', self.async_close
    yield 'SYNC', self.sync
    for i, piece in enumerate(self.lengths):
      yield (f'LEN_{i}' if quantum is None else f'LEN_{i} ({i * quantum} tokens)'), piece

  @classmethod
  def pasta(cls, max_promise_tokens: int = DEFAULT_MAX_PROMISE_TOKENS,
            quantum: int = lang.DEFAULT_QUANTUM) -> 'ControlPieces':
    """The readable pieces of the models trained by `train_tokenizer`."""
    count = _num_lengths(max_promise_tokens, quantum)
    return cls('<pasta:promise>', '<pasta:async>', '</pasta:async>', '<pasta:sync/>',
               tuple(f'<pasta:len={i * quantum}>' for i in range(count)))

  @classmethod
  def reserved(cls, max_promise_tokens: int = DEFAULT_MAX_PROMISE_TOKENS,
               quantum: int = lang.DEFAULT_QUANTUM, *, template: str = '<unused{}>',
               first: int = 0) -> 'ControlPieces':
    """Consecutive reserved pieces, by default Gemma's `<unused0>`, `<unused1>`, ...

    `<unused{first}>` is PROMISE, then ASYNC, END_ASYNC, SYNC, then LEN_0, LEN_1, ...
    """
    count = _num_lengths(max_promise_tokens, quantum)
    names = [template.format(first + i) for i in range(4 + count)]
    return cls(*names[:4], tuple(names[4:]))

  def to_json(self) -> dict[str, Any]:
    return {'promise': self.promise, 'async_open': self.async_open,
            'async_close': self.async_close, 'sync': self.sync,
            'lengths': list(self.lengths)}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> 'ControlPieces':
    return cls(data['promise'], data['async_open'], data['async_close'], data['sync'],
               tuple(data['lengths']))


def _num_lengths(max_promise_tokens: int, quantum: int) -> int:
  if quantum < 1:
    raise ValueError(f'quantum must be >= 1, got {quantum}')
  if max_promise_tokens < 0 or max_promise_tokens % quantum:
    raise ValueError(f'max_promise_tokens must be a non-negative multiple of the '
                     f'quantum {quantum}, got {max_promise_tokens}')
  return max_promise_tokens // quantum + 1
