"""Reading a sentencepiece vocabulary: the model proto, its piece types, its control pieces.

`read_vocabulary` resolves the configured `ControlPieces` to ids and derives what
the tokenizer needs from the model: the special ids, the byte pieces, the control
pieces sentencepiece can produce from text, and whether the model is lossless.

A model is lossless (`decode_text(encode_text(s)) == s` for every string) when it
has no normalization character map, keeps whitespace and has byte-fallback pieces;
Gemma's tokenizer and the models trained by `train_tokenizer` are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pasta_jax import tokens
from pasta_jax.tokenizer.pieces import ControlPieces

# sentencepiece writes a space as this character in its pieces.
SPACE_PIECE = '\u2581'
# sentencepiece ModelProto.SentencePiece.Type values.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_TYPE_NAMES = {_NORMAL: 'NORMAL', _UNKNOWN: 'UNKNOWN', _CONTROL: 'CONTROL',
               _USER_DEFINED: 'USER_DEFINED', _UNUSED: 'UNUSED', _BYTE: 'BYTE'}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """What a tokenizer needs to know about a sentencepiece model's pieces.

  Attributes:
    size: the number of pieces.
    control: the control-token ids (with the model's eos, pad and bos).
    unk_id: the unknown piece's id, or None.
    tag_ids: the control ids, as a set.
    byte_ids: byte_ids[b] is the id of piece `<0xBB>`; None unless all 256 are
      BYTE pieces.
    surfaces: for each control id, the text its piece stands for (space marks
      turned to spaces).
    producible: the surfaces of the control pieces that sentencepiece can produce
      from text (USER_DEFINED pieces match their literal string; NORMAL ones may be
      merged from it), shortest first.
    lossless_problems: why the model is not lossless (empty when it is).
  """

  size: int
  control: tokens.ControlTokens
  unk_id: int | None
  tag_ids: frozenset[int]
  byte_ids: tuple[int, ...] | None
  surfaces: Mapping[int, str]
  producible: tuple[str, ...]
  lossless_problems: tuple[str, ...]


def parse_model_proto(model: bytes, name: str) -> Any:
  """Parses a serialized sentencepiece ModelProto; ValueError when it is not one."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  try:
    proto.ParseFromString(model)
  except Exception as e:  # protobuf's DecodeError differs between implementations
    raise ValueError(f'not a sentencepiece model{" " + name if name else ""}: {e}') from e
  if not proto.pieces:
    raise ValueError(f'not a sentencepiece model{" " + name if name else ""}: no pieces')
  return proto


def read_vocabulary(proto: Any, pieces: ControlPieces, quantum: int,
                    name: str) -> Vocabulary:
  """Derives every id and flag the tokenizer needs from the model proto.

  Args:
    proto: the parsed ModelProto (`parse_model_proto`).
    pieces: the control-piece mapping; every piece must be in the model.
    quantum: promised-length granularity: LEN_i means i * quantum tokens.
    name: the model's name in error messages ('' for none).

  Raises:
    ValueError: the model has no eos or pad piece, a configured piece is missing
      from the model, or has a type that cannot be a control token (BYTE, UNKNOWN,
      or one of pad/eos/bos/unk).
  """
  where = f' {name}' if name else ''
  spec = proto.trainer_spec
  size = len(proto.pieces)
  index = {}
  for i, piece in enumerate(proto.pieces):
    index.setdefault(piece.piece, i)

  def special(attr: str) -> int | None:
    value = getattr(spec, attr)
    if value >= size:
      raise ValueError(f'sentencepiece model{where}: {attr}={value} is outside the '
                       f'vocabulary ({size} pieces)')
    return value if value >= 0 else None

  pad, eos, bos, unk = (special(a) for a in ('pad_id', 'eos_id', 'bos_id', 'unk_id'))
  if eos is None:
    raise ValueError(f'sentencepiece model{where} has no eos piece; PASTA responses '
                     'end with EOS')
  if pad is None:
    raise ValueError(f'sentencepiece model{where} has no pad piece (pad_id=-1); '
                     'batches of token ids need one')
  specials = {pad: 'pad', eos: 'eos', unk: 'unk'}
  if bos is not None:
    specials[bos] = 'bos'

  missing, wrong, ids = [], [], []
  for role, piece in pieces.roles(quantum):
    i = index.get(piece)
    if i is None:
      missing.append(f'{piece!r} ({role})')
      continue
    kind = proto.pieces[i].type
    if i in specials:
      wrong.append(f'{piece!r} ({role}) is the {specials[i]} piece')
    elif kind in (_BYTE, _UNKNOWN):
      wrong.append(f'{piece!r} ({role}) is a {_TYPE_NAMES[kind]} piece')
    ids.append(i)
  if missing:
    hint = (' This model has <pasta:...> control pieces: load it with Tokenizer.load '
            '(it reads the sidecar) or pass ControlPieces.pasta(...).'
            if ControlPieces.pasta(0).promise in index else '')
    raise ValueError(
        f'sentencepiece model{where} ({size} pieces) lacks '
        f'{len(missing)} configured PASTA control piece(s): {", ".join(missing)}. '
        'Map the control tokens onto pieces the model has (a smaller '
        f'max_promise_tokens needs fewer length pieces).{hint}')
  if wrong:
    raise ValueError(f'sentencepiece model{where}: these pieces cannot be PASTA control '
                     f'tokens: {"; ".join(wrong)}')
  control = tokens.ControlTokens(
      promise=ids[0], async_open=ids[1], async_close=ids[2], sync=ids[3],
      lengths=tuple(ids[4:]), eos=eos, pad=pad, bos=bos, quantum=quantum)

  # Byte pieces <0x00>..<0xFF>: spell characters the processor must not see.
  byte_ids = [index.get(f'<0x{b:02X}>') for b in range(256)]
  byte_ids = (tuple(byte_ids) if all(i is not None and proto.pieces[i].type == _BYTE
                                     for i in byte_ids) else None)
  producible = sorted({proto.pieces[i].piece.replace(SPACE_PIECE, ' ')
                       for i in ids if proto.pieces[i].type in (_NORMAL, _USER_DEFINED)},
                      key=lambda s: (len(s), s))
  return Vocabulary(
      size=size, control=control, unk_id=unk, tag_ids=frozenset(control.tag_ids),
      byte_ids=byte_ids,
      surfaces={i: proto.pieces[i].piece.replace(SPACE_PIECE, ' ') for i in ids},
      producible=tuple(producible),
      lossless_problems=_lossless_problems(proto, byte_ids is not None))


def _lossless_problems(proto: Any, has_byte_pieces: bool) -> tuple[str, ...]:
  """Why decode(encode(x)) == x may fail for the model (empty when it cannot)."""
  problems = []
  norm = proto.normalizer_spec
  if norm.precompiled_charsmap:
    problems.append(f'normalization {norm.name!r} rewrites characters')
  if norm.remove_extra_whitespaces:
    problems.append('remove_extra_whitespaces=True drops whitespace')
  if proto.HasField('denormalizer_spec') and proto.denormalizer_spec.precompiled_charsmap:
    problems.append('a denormalizer rewrites decoded text')
  if proto.trainer_spec.treat_whitespace_as_suffix:
    problems.append('treat_whitespace_as_suffix=True')
  if not has_byte_pieces or not proto.trainer_spec.byte_fallback:
    problems.append('no byte fallback: unknown characters become <unk>')
  return tuple(problems)
