"""The guard that keeps ordinary text from encoding to a PASTA control id.

Control pieces lent by a pretrained model may be USER_DEFINED pieces, which
sentencepiece produces when text contains their literal string (`<unused0>`), or
NORMAL pieces it may merge from text. `TextGuard.split` cuts text so that no
segment holds such a string, and spells with byte pieces the characters the
processor must not see: one-character control surfaces (which cannot be cut) and
the literal space mark U+2581 (which it would decode as a space).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from pasta_jax.tokenizer.vocabulary import SPACE_PIECE, Vocabulary


@dataclasses.dataclass(frozen=True)
class TextGuard:
  """Cuts text around the control surfaces of one vocabulary (`for_vocabulary`).

  Attributes:
    cut: matches (by lookahead, group 1) every multi-character control surface;
      None when there is none.
    byte_chars: matches the characters to spell with byte pieces; None for none.
    byte_ids: byte_ids[b] is the id of byte piece b (None: the model has none).
    tag_ids: the control ids.
    surfaces: the text each control id stands for.
  """

  cut: re.Pattern[str] | None
  byte_chars: re.Pattern[str] | None
  byte_ids: tuple[int, ...] | None
  tag_ids: frozenset[int]
  surfaces: Mapping[int, str]

  @classmethod
  def for_vocabulary(cls, vocab: Vocabulary, name: str) -> TextGuard:
    """The guard of a vocabulary; `name` is the model's name in error messages.

    Raises:
      ValueError: a control piece is a single character the model can produce from
        text, and the model has no byte pieces to spell it otherwise.
    """
    # Characters spelled with byte pieces: the literal space mark (the processor
    # would decode it as a space) and one-character surfaces (they cannot be cut).
    byte_chars = [s for s in vocab.producible if len(s) == 1]
    if byte_chars and vocab.byte_ids is None:
      raise ValueError(f'sentencepiece model{f" {name}" if name else ""}: control '
                       f'piece(s) {byte_chars} are single characters the model can '
                       'produce from text, and it has no byte pieces to spell them '
                       'otherwise; choose other pieces')
    if vocab.byte_ids is not None:
      byte_chars.append(SPACE_PIECE)
    # Shortest first: at one start position the shortest occurrence is the one to cut.
    multi = [s for s in vocab.producible if len(s) > 1]
    return cls(
        cut=(re.compile('(?=(' + '|'.join(map(re.escape, multi)) + '))')
             if multi else None),
        byte_chars=(re.compile('[' + ''.join(map(re.escape, sorted(byte_chars))) + ']')
                    if byte_chars else None),
        byte_ids=vocab.byte_ids, tag_ids=vocab.tag_ids, surfaces=vocab.surfaces)

  def split(self, text: str) -> list[str | tuple[int, ...]]:
    """Cuts text into segments none of which can encode to a control id.

    Returns strings to encode and tuples of byte-piece ids (for characters spelled
    in bytes). Every occurrence of a (multi-character) control surface gets a cut
    strictly inside it, so no segment contains one. Greedy interval stabbing: take
    occurrences by end, cut just before the last character of the first one not yet
    cut; this also cuts every overlapping occurrence that ends later.
    """
    cuts: list[int] = []
    if self.cut is not None:
      spans = sorted((m.end(1), m.start()) for m in self.cut.finditer(text))
      for end, start in spans:
        if not cuts or cuts[-1] <= start:
          cuts.append(end - 1)
    cuts.append(len(text))
    parts: list[str | tuple[int, ...]] = []
    prev = 0
    for cut in cuts:
      chunk, prev = text[prev:cut], cut
      if self.byte_chars is None:
        if chunk:
          parts.append(chunk)
        continue
      last = 0
      for m in self.byte_chars.finditer(chunk):
        if m.start() > last:
          parts.append(chunk[last:m.start()])
        parts.append(self.spell_bytes(m.group()))
        last = m.end()
      if last < len(chunk):
        parts.append(chunk[last:])
    return parts

  def spell_bytes(self, text: str) -> tuple[int, ...]:
    """The byte-piece ids of text's UTF-8 bytes."""
    return tuple(self.byte_ids[b] for b in text.encode('utf-8'))

  def respell_tags(self, ids: list[int]) -> list[int]:
    """Replaces each control id in encoded text by its surface spelled in bytes."""
    # Reached only when normalization turns text into a control piece's string
    # (e.g. NFKC maps fullwidth '＜' to '<'); such a model is not lossless anyway.
    out = []
    for token in ids:
      if token not in self.tag_ids:
        out.append(token)
      elif self.byte_ids is not None:
        out.extend(self.spell_bytes(self.surfaces[token]))
      else:
        raise ValueError(
            f'text normalizes to the control piece {self.surfaces[token]!r} and the '
            'model has no byte pieces to spell it as ordinary text')
    return out
