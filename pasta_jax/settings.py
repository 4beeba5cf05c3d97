"""Typed values for the concepts that training, decoding and evaluation share.

Each concept has one frozen, validated value and one name:

  Mode              what a run learns and decodes: PASTA-annotated answers, or the
                    sequential baseline (the same answers with the tags stripped).
  PositionStrategy  how many positions a promise reserves for its async chunk
                    (docs/design.md section 3).

Run configs spell them as plain strings and ints (`config.data.mode`,
`config.data.position_strategy`, `config.data.fixed_reserve`); `pasta_jax.config`
turns those into these values, once.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar


class Mode(str, enum.Enum):
  """What a run trains on and how it decodes."""

  PASTA = 'pasta'
  SEQUENTIAL = 'sequential'

  @classmethod
  def parse(cls, value: Any) -> 'Mode':
    """`value` as a Mode ('pasta' or 'sequential', or a Mode already).

    Raises:
      ValueError: any other value, naming the ones allowed.
    """
    try:
      return cls(value)
    except ValueError:
      raise ValueError(f'mode must be one of {[m.value for m in cls]}, got {value!r}') from None

  def __str__(self) -> str:
    return self.value


@dataclasses.dataclass(frozen=True)
class PositionStrategy:
  """Positions R reserved for an async chunk (docs/design.md section 3).

  The main thread's next token after a promise whose last token sits at
  position p gets p + 1 + R:

    'predicted'  R = the promise's `tokens` value + 2 (the default),
    'oracle'     R = the true body length + 2 (training only: the interpreter
                 cannot know a body's length before it is written),
    'fixed'      R = `fixed_reserve`.

  The 2 counts `<async>` and `</async>`.
  """

  kind: str = 'predicted'
  fixed_reserve: int = 32

  KINDS: ClassVar[tuple[str, ...]] = ('predicted', 'oracle', 'fixed')

  def __post_init__(self):
    if self.kind not in self.KINDS:
      raise ValueError(f'unknown position strategy {self.kind!r}; expected one of '
                       f'{list(self.KINDS)}')
    if (not isinstance(self.fixed_reserve, int) or isinstance(self.fixed_reserve, bool)
        or self.fixed_reserve < 0):
      raise ValueError(f'fixed_reserve must be an int >= 0, got {self.fixed_reserve!r}')

  @classmethod
  def parse(cls, value: 'PositionStrategy | str') -> 'PositionStrategy':
    """`value` as a PositionStrategy (a kind alone takes the default reserve)."""
    return value if isinstance(value, cls) else cls(value)

  @property
  def decodable(self) -> bool:
    """Whether the interpreter can apply the strategy while decoding."""
    return self.kind != 'oracle'

  def for_decoding(self) -> 'PositionStrategy':
    """The strategy to decode a model trained with this one.

    'oracle' becomes 'predicted': while decoding, the promised length is the
    best estimate of the body's length there is (the model learned to predict
    it). The others decode as they trained.
    """
    return dataclasses.replace(self, kind='predicted') if self.kind == 'oracle' else self

  def reserved(self, promised, body_tokens):
    """R for a promise of `promised` tokens whose body has `body_tokens` tokens.

    Works on ints and on numpy or jax arrays alike, so training layouts and the
    interpreter apply the same rule.
    """
    if self.kind == 'predicted':
      return promised + 2
    if self.kind == 'oracle':
      return body_tokens + 2
    return self.fixed_reserve

  def __str__(self) -> str:
    return f'fixed ({self.fixed_reserve})' if self.kind == 'fixed' else self.kind
