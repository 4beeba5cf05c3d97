"""Sentencepiece tokenizer with the PASTA-LANG control tokens (docs/pasta_lang.md).

A response in token form (tokens.py has the grammar):

    <promise topic="T" tokens="N"/>  ->  PROMISE, encode_text(T), LEN_{N / quantum}
    <async>BODY</async>              ->  ASYNC, encode_text(BODY), END_ASYNC
    <sync/>                          ->  SYNC
    end of response                  ->  EOS

Every control token is one id of the sentencepiece vocabulary:

* Models trained here (`train_tokenizer`) hold them as sentencepiece *control
  symbols* with readable pieces (`<pasta:promise>`, `<pasta:len=30>`, ...), which
  sentencepiece never produces from text.
* A pretrained Gemma-style model (`Tokenizer.from_pretrained`) lends its reserved
  pieces (`<unused0>`, ...). Those may be USER_DEFINED pieces, which sentencepiece
  *does* produce when text contains their literal string; `encode_text` cuts such
  literals so they are spelled with ordinary pieces. Ordinary text never encodes to
  a control id, whatever the model.

Exact round trips (`decode_text(encode_text(s)) == s`, `decode(encode(doc)) == doc`)
hold for every string when the model is `lossless`: no normalization character map,
no whitespace removal, byte-fallback pieces (Gemma's tokenizer and the models
trained here are lossless). The processor never adds a dummy prefix (it is switched off in
the model proto), so text segments encode independently and concatenate exactly.

A `Tokenizer` is a small picklable value: the serialized model, the control-piece
mapping and the quantum. The sentencepiece processor is created on first use and
is never pickled; this module imports sentencepiece only when it needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pasta_jax import lang
from pasta_jax import tokens

PathLike = str | os.PathLike

# Largest promised length of the default length tokens: LEN_0 .. LEN_50 at quantum
# 10. With the four tags that is 55 pieces, within Gemma 1/2's <unused0>..<unused98>.
DEFAULT_MAX_PROMISE_TOKENS = 500

# Gemma's special ids; the models trained here use the same.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

# sentencepiece writes a space as this character in its pieces.
_SPACE_PIECE = '\u2581'
# sentencepiece ModelProto.SentencePiece.Type values.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_TYPE_NAMES = {_NORMAL: 'NORMAL', _UNKNOWN: 'UNKNOWN', _CONTROL: 'CONTROL',
               _USER_DEFINED: 'USER_DEFINED', _UNUSED: 'UNUSED', _BYTE: 'BYTE'}

_SIDECAR_FORMAT = 'pasta_jax.tokenizer/1'


def sidecar_path(model_path: PathLike) -> str:
  """Where `Tokenizer.save` writes the JSON settings next to the model file."""
  return os.fspath(model_path) + '.pasta.json'


# ----------------------------------------------------------------------------
# Control pieces.


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

  def __post_init__(self):
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


# ----------------------------------------------------------------------------
# The tokenizer.


class Tokenizer:
  """A sentencepiece model plus the PASTA control tokens.

  Build one with `train_tokenizer`, `Tokenizer.from_pretrained` (a Gemma-style
  model) or `Tokenizer.load` (a model saved with `save`). The constructor takes a
  serialized sentencepiece ModelProto and checks the control pieces eagerly;
  the sentencepiece processor itself is created on first use.
  """

  def __init__(self, model_proto: bytes, pieces: ControlPieces, *,
               quantum: int = lang.DEFAULT_QUANTUM, name: str = ''):
    """Reads the model proto and resolves the control pieces to ids.

    Args:
      model_proto: a serialized sentencepiece ModelProto (a `.model` file's bytes).
      pieces: the control-piece mapping; every piece must be in the model.
      quantum: promised-length granularity: LEN_i means i * quantum tokens.
      name: shown in repr (e.g. the file the model came from); not part of equality.

    Raises:
      ValueError: a configured piece is missing from the model, or has a type that
        cannot be a control token (BYTE, UNKNOWN, or one of pad/eos/bos/unk).
    """
    if not isinstance(model_proto, (bytes, bytearray)):
      raise TypeError(f'model_proto must be bytes, got {type(model_proto).__name__}')
    if not isinstance(pieces, ControlPieces):
      raise TypeError(f'pieces must be ControlPieces, got {type(pieces).__name__}')
    if quantum < 1:
      raise ValueError(f'quantum must be >= 1, got {quantum}')
    proto = _parse_model_proto(bytes(model_proto), name)
    # Segment-wise encoding (text, topic, body, text ...) concatenates exactly only
    # when the processor does not prepend a space to every segment.
    if proto.normalizer_spec.add_dummy_prefix:
      proto.normalizer_spec.add_dummy_prefix = False
      model_proto = proto.SerializeToString()
    self._model = bytes(model_proto)
    self._pieces = pieces
    self._quantum = int(quantum)
    self._name = name
    self._sp = None  # the SentencePieceProcessor, created by _processor()
    self._sha256: str | None = None
    self._analyze(proto)

  def _analyze(self, proto) -> None:
    """Derives every id and flag the tokenizer needs from the model proto."""
    where = f' {self._name}' if self._name else ''
    spec = proto.trainer_spec
    self._vocab_size = len(proto.pieces)
    index = {}
    for i, piece in enumerate(proto.pieces):
      index.setdefault(piece.piece, i)

    def special(attr):
      value = getattr(spec, attr)
      if value >= self._vocab_size:
        raise ValueError(f'sentencepiece model{where}: {attr}={value} is outside the '
                         f'vocabulary ({self._vocab_size} pieces)')
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
    for role, piece in self._pieces.roles(self._quantum):
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
          f'sentencepiece model{where} ({self._vocab_size} pieces) lacks '
          f'{len(missing)} configured PASTA control piece(s): {", ".join(missing)}. '
          'Map the control tokens onto pieces the model has (a smaller '
          f'max_promise_tokens needs fewer length pieces).{hint}')
    if wrong:
      raise ValueError(f'sentencepiece model{where}: these pieces cannot be PASTA control '
                       f'tokens: {"; ".join(wrong)}')
    self._control = tokens.ControlTokens(
        promise=ids[0], async_open=ids[1], async_close=ids[2], sync=ids[3],
        lengths=tuple(ids[4:]), eos=eos, pad=pad, bos=bos, quantum=self._quantum)
    self._unk_id = unk
    self._tag_ids = frozenset(self._control.tag_ids)

    # Byte pieces <0x00>..<0xFF>: spell characters the processor must not see.
    byte_ids = [index.get(f'<0x{b:02X}>') for b in range(256)]
    self._byte_ids = (tuple(byte_ids) if all(i is not None and proto.pieces[i].type == _BYTE
                                             for i in byte_ids) else None)

    # Control pieces that sentencepiece can produce from text (USER_DEFINED ones
    # match their literal string; NORMAL ones may be merged from it). Their surface
    # is the text they stand for: the piece with its space marks turned to spaces.
    surfaces = sorted({proto.pieces[i].piece.replace(_SPACE_PIECE, ' ')
                       for i in ids if proto.pieces[i].type in (_NORMAL, _USER_DEFINED)},
                      key=lambda s: (len(s), s))
    # Characters spelled with byte pieces: the literal space mark (the processor
    # would decode it as a space) and one-character surfaces (they cannot be cut).
    byte_chars = [s for s in surfaces if len(s) == 1]
    if byte_chars and self._byte_ids is None:
      raise ValueError(f'sentencepiece model{where}: control piece(s) {byte_chars} are '
                       'single characters the model can produce from text, and it has '
                       'no byte pieces to spell them otherwise; choose other pieces')
    if self._byte_ids is not None:
      byte_chars.append(_SPACE_PIECE)
    # Shortest first: at one start position the shortest occurrence is the one to cut.
    multi = [s for s in surfaces if len(s) > 1]
    self._guard = (re.compile('(?=(' + '|'.join(map(re.escape, multi)) + '))')
                   if multi else None)
    self._byte_chars = (re.compile('[' + ''.join(map(re.escape, sorted(byte_chars))) + ']')
                        if byte_chars else None)
    # Fallback if normalization still makes a control piece out of text (possible
    # only when the model is not lossless): spell its surface in bytes.
    self._surface_of = {i: proto.pieces[i].piece.replace(_SPACE_PIECE, ' ') for i in ids}

    problems = []
    norm = proto.normalizer_spec
    if norm.precompiled_charsmap:
      problems.append(f'normalization {norm.name!r} rewrites characters')
    if norm.remove_extra_whitespaces:
      problems.append('remove_extra_whitespaces=True drops whitespace')
    if proto.HasField('denormalizer_spec') and proto.denormalizer_spec.precompiled_charsmap:
      problems.append('a denormalizer rewrites decoded text')
    if spec.treat_whitespace_as_suffix:
      problems.append('treat_whitespace_as_suffix=True')
    if self._byte_ids is None or not spec.byte_fallback:
      problems.append('no byte fallback: unknown characters become <unk>')
    self._lossless_problems = tuple(problems)

  # --------------------------------------------------------------------------
  # Construction, persistence, pickling.

  @classmethod
  def from_pretrained(cls, model_path: PathLike, pieces: ControlPieces | None = None, *,
                      max_promise_tokens: int | None = None,
                      quantum: int = lang.DEFAULT_QUANTUM) -> 'Tokenizer':
    """Wraps an existing sentencepiece model file (e.g. Gemma's tokenizer.model).

    Args:
      model_path: the `.model` file.
      pieces: the control-piece mapping; default `ControlPieces.reserved(...)`:
        `<unused0>` PROMISE, `<unused1>` ASYNC, `<unused2>` END_ASYNC, `<unused3>`
        SYNC, `<unused4>`... LEN_0, LEN_1, ... (Gemma 1/2 have <unused0>..<unused98>).
      max_promise_tokens: largest promised length (default
        DEFAULT_MAX_PROMISE_TOKENS); with explicit `pieces` it must agree with them.
      quantum: the promised-length granularity.
    """
    with open(model_path, 'rb') as f:
      model = f.read()
    if pieces is None:
      pieces = ControlPieces.reserved(
          DEFAULT_MAX_PROMISE_TOKENS if max_promise_tokens is None else max_promise_tokens,
          quantum)
    elif (max_promise_tokens is not None
          and (len(pieces.lengths) - 1) * quantum != max_promise_tokens):
      raise ValueError(f'{len(pieces.lengths)} length pieces at quantum {quantum} promise '
                       f'up to {(len(pieces.lengths) - 1) * quantum} tokens, not '
                       f'max_promise_tokens={max_promise_tokens}')
    return cls(model, pieces, quantum=quantum, name=os.fspath(model_path))

  def save(self, model_path: PathLike) -> None:
    """Writes the model file and its JSON sidecar (`sidecar_path(model_path)`)."""
    model_path = os.fspath(model_path)
    settings = {'format': _SIDECAR_FORMAT, 'quantum': self._quantum,
                'max_promise_tokens': self.max_promise_tokens,
                'pieces': self._pieces.to_json(), 'model_sha256': self.sha256}
    _write_atomic(model_path, self._model)
    _write_atomic(sidecar_path(model_path),
                  (json.dumps(settings, indent=2, ensure_ascii=False) + '\n').encode())

  @classmethod
  def load(cls, model_path: PathLike) -> 'Tokenizer':
    """Reads a tokenizer written by `save` (or `train_tokenizer`)."""
    model_path = os.fspath(model_path)
    side = sidecar_path(model_path)
    if not os.path.exists(side):
      raise FileNotFoundError(
          f'{side} not found: Tokenizer.load reads a model saved with Tokenizer.save; '
          'wrap a plain sentencepiece model with Tokenizer.from_pretrained')
    with open(side, encoding='utf-8') as f:
      settings = json.load(f)
    if settings.get('format') != _SIDECAR_FORMAT:
      raise ValueError(f'{side}: unknown format {settings.get("format")!r} '
                       f'(expected {_SIDECAR_FORMAT!r})')
    with open(model_path, 'rb') as f:
      model = f.read()
    digest = hashlib.sha256(model).hexdigest()
    if digest != settings['model_sha256']:
      raise ValueError(f'{model_path} does not match its sidecar {side}: sha256 {digest} '
                       f'!= {settings["model_sha256"]}')
    return cls(model, ControlPieces.from_json(settings['pieces']),
               quantum=settings['quantum'], name=model_path)

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    state['_sp'] = None  # the processor is rebuilt from the model bytes on first use
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Tokenizer):
      return NotImplemented
    return (self._quantum == other._quantum and self._pieces == other._pieces
            and self._model == other._model)

  def __hash__(self) -> int:
    return hash((self.sha256, self._pieces, self._quantum))

  def __repr__(self) -> str:
    name = f'{self._name!r}, ' if self._name else ''
    return (f'Tokenizer({name}vocab_size={self._vocab_size}, quantum={self._quantum}, '
            f'max_promise_tokens={self.max_promise_tokens}, '
            f'promise={self._pieces.promise!r}, lossless={self.lossless}, '
            f'sha256={self.sha256[:12]})')

  # --------------------------------------------------------------------------
  # Properties.

  @property
  def control(self) -> tokens.ControlTokens:
    """The control-token ids (with this model's eos, pad and bos)."""
    return self._control

  @property
  def pieces(self) -> ControlPieces:
    return self._pieces

  @property
  def quantum(self) -> int:
    return self._quantum

  @property
  def max_promise_tokens(self) -> int:
    return self._control.max_promise_tokens

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._control.pad

  @property
  def eos_id(self) -> int:
    return self._control.eos

  @property
  def bos_id(self) -> int | None:
    return self._control.bos

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def lossless(self) -> bool:
    """Whether decode(encode(x)) == x is guaranteed for every string and document."""
    return not self._lossless_problems

  @property
  def lossless_problems(self) -> tuple[str, ...]:
    """Why the model is not lossless (empty when it is)."""
    return self._lossless_problems

  @property
  def model_proto(self) -> bytes:
    """The serialized model the processor loads (add_dummy_prefix switched off)."""
    return self._model

  @property
  def sha256(self) -> str:
    if self._sha256 is None:
      self._sha256 = hashlib.sha256(self._model).hexdigest()
    return self._sha256

  @property
  def is_loaded(self) -> bool:
    """Whether the sentencepiece processor has been created."""
    return self._sp is not None

  def _processor(self):
    # Two threads racing here each build a processor; either one is correct.
    if self._sp is None:
      import sentencepiece  # pylint: disable=g-import-not-at-top
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=self._model)
    return self._sp

  def id_to_piece(self, token: int) -> str:
    self._check_id(token)
    return self._processor().id_to_piece(int(token))

  def piece_to_id(self, piece: str) -> int:
    """The id of a piece; KeyError when the vocabulary has no such piece."""
    sp = self._processor()
    token = sp.piece_to_id(piece)
    if token == self._unk_id and piece != sp.id_to_piece(token):
      raise KeyError(f'no piece {piece!r} in the vocabulary')
    return token

  def _check_id(self, token: int) -> None:
    if not 0 <= token < self._vocab_size:
      raise ValueError(f'token id {token} is outside the vocabulary '
                       f'[0, {self._vocab_size})')

  def _check_ids(self, ids: list[int]) -> None:
    if ids and not 0 <= min(ids) <= max(ids) < self._vocab_size:
      self._check_id(next(t for t in ids if not 0 <= t < self._vocab_size))

  # --------------------------------------------------------------------------
  # Ordinary text.

  def encode_text(self, text: str) -> list[int]:
    """Encodes ordinary text; the result never holds a PASTA control id.

    Literal occurrences of control pieces' strings (e.g. "<unused0>" for a Gemma
    model) are cut so that ordinary pieces spell them, and a literal U+2581 (which
    sentencepiece would decode as a space) is spelled with byte pieces.
    """
    return self._encode_texts([text])[0]

  def decode_text(self, ids: Sequence[int] | np.ndarray) -> str:
    """Decodes ordinary text ids (the inverse of `encode_text`).

    Raises ValueError on a PASTA control id (use `decode` for token-form
    PASTA-LANG) or an id outside the vocabulary. pad/bos/eos decode to ''.
    """
    ids = _as_id_list(ids)
    self._check_ids(ids)
    if not self._tag_ids.isdisjoint(ids):
      pos = next(i for i, t in enumerate(ids) if t in self._tag_ids)
      token = ids[pos]
      raise ValueError(f'decode_text: id {token} at index {pos} is the PASTA control '
                       f'token {self._surface_of[token]!r}; decode token-form '
                       'PASTA-LANG with decode()')
    return self._decode_ids(ids)

  def _decode_ids(self, ids: list[int]) -> str:
    return self._processor().decode(ids) if ids else ''

  def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
    """encode_text for each of several strings (one processor lookup)."""
    sp = self._processor()
    out = []
    for text in texts:
      if not isinstance(text, str):
        raise TypeError(f'expected text as str, got {type(text).__name__}')
      ids: list[int] = []
      for part in self._split(text):
        # One call per segment: faster than sentencepiece's threaded batch encode
        # for the handful of short segments a document has.
        ids.extend(sp.encode(part, out_type=int) if isinstance(part, str) else part)
      if not self._tag_ids.isdisjoint(ids):
        ids = self._respell_tags(ids)
      out.append(ids)
    return out

  def _split(self, text: str) -> list[str | tuple[int, ...]]:
    """Cuts text into segments none of which can encode to a control id.

    Returns strings to encode and tuples of byte-piece ids (for characters spelled
    in bytes). Every occurrence of a (multi-character) control surface gets a cut
    strictly inside it, so no segment contains one. Greedy interval stabbing: take
    occurrences by end, cut just before the last character of the first one not yet
    cut; this also cuts every overlapping occurrence that ends later.
    """
    cuts: list[int] = []
    if self._guard is not None:
      spans = sorted((m.end(1), m.start()) for m in self._guard.finditer(text))
      for end, start in spans:
        if not cuts or cuts[-1] <= start:
          cuts.append(end - 1)
    cuts.append(len(text))
    parts: list[str | tuple[int, ...]] = []
    prev = 0
    for cut in cuts:
      chunk, prev = text[prev:cut], cut
      if self._byte_chars is None:
        if chunk:
          parts.append(chunk)
        continue
      last = 0
      for m in self._byte_chars.finditer(chunk):
        if m.start() > last:
          parts.append(chunk[last:m.start()])
        parts.append(self._spell_bytes(m.group()))
        last = m.end()
      if last < len(chunk):
        parts.append(chunk[last:])
    return parts

  def _spell_bytes(self, text: str) -> tuple[int, ...]:
    return tuple(self._byte_ids[b] for b in text.encode('utf-8'))

  def _respell_tags(self, ids: list[int]) -> list[int]:
    # Reached only when normalization turns text into a control piece's string
    # (e.g. NFKC maps fullwidth '＜' to '<'); such a model is not lossless anyway.
    out = []
    for token in ids:
      if token not in self._tag_ids:
        out.append(token)
      elif self._byte_ids is not None:
        out.extend(self._spell_bytes(self._surface_of[token]))
      else:
        raise ValueError(
            f'text normalizes to the control piece {self._surface_of[token]!r} and the '
            'model has no byte pieces to spell it as ordinary text')
    return out

  # --------------------------------------------------------------------------
  # PASTA-LANG documents.

  def encode(self, doc: lang.Document | str, *, add_eos: bool = True,
             annotated: bool = True) -> np.ndarray:
    """Encodes a PASTA-LANG response into token form: int32 [T].

    Args:
      doc: a Document, or its text form (parsed with `lang.parse`, so a string that
        parses as a tag is a tag and other tag-like text is text).
      add_eos: end with EOS.
      annotated: every promise is followed by its ASYNC body END_ASYNC (training
        data). When False the ids are what the main thread writes: promises without
        bodies (a promise that carries a body is an error).

    Raises:
      lang.PastaLangError: a malformed text form (with its location).
      ValueError: a promised length that is not a multiple of the quantum or exceeds
        max_promise_tokens (quantize with `doc.quantized(...)`), a promise missing its
        body (annotated) or carrying one (not annotated).
    """
    if isinstance(doc, str):
      doc = lang.parse(doc, annotated=annotated, quantum=self._quantum,
                       max_tokens=self.max_promise_tokens)
    elif not isinstance(doc, lang.Document):
      raise TypeError(f'encode expects a lang.Document or str, got {type(doc).__name__}')
    texts = []
    for k, node in enumerate(doc.promises, 1):
      self._check_promise(k, node, annotated)
    for node in doc.nodes:
      if isinstance(node, lang.Text):
        texts.append(node.text)
      elif isinstance(node, lang.Promise):
        texts.append(node.topic)
        if annotated:
          texts.append(node.body)
    encoded = iter(self._encode_texts(texts))
    c = self._control
    out: list[int] = []
    for node in doc.nodes:
      if isinstance(node, lang.Text):
        out.extend(next(encoded))
      elif isinstance(node, lang.Promise):
        out.append(c.promise)
        out.extend(next(encoded))
        out.append(c.lengths[node.tokens // self._quantum])
        if annotated:
          out.append(c.async_open)
          out.extend(next(encoded))
          out.append(c.async_close)
      else:
        out.append(c.sync)
    if add_eos:
      out.append(c.eos)
    return np.asarray(out, np.int32)

  def _check_promise(self, k: int, promise: lang.Promise, annotated: bool) -> None:
    what = f'promise {k} (topic {promise.topic!r}, tokens={promise.tokens})'
    if promise.tokens % self._quantum or promise.tokens > self.max_promise_tokens:
      raise ValueError(
          f'{what}: the promised length has no length token; token form represents '
          f'multiples of {self._quantum} up to {self.max_promise_tokens}. Quantize with '
          f'doc.quantized({self._quantum}, max_tokens={self.max_promise_tokens}).')
    if annotated and promise.body is None:
      raise ValueError(f'{what} has no body; an annotated encoding needs every body '
                       '(pass annotated=False to encode the main thread only)')
    if not annotated and promise.body is not None:
      raise ValueError(f'{what} carries a body; annotated=False encodes what the main '
                       'thread writes (promises without bodies); drop the bodies or '
                       'pass annotated=True')

  def decode(self, ids: Sequence[int] | np.ndarray, *,
             annotated: bool = True) -> lang.Document:
    """Decodes one token-form response (optionally ending in EOS) into a Document.

    The structure comes from `tokens.scan`; each text run (text, topic, body) is
    decoded on its own, so ordinary text never becomes a tag.

    Raises:
      lang.PastaLangError: naming the token index: a grammar error, anything after
        EOS, a pad or bos id inside the response, or text tokens that spell a
        PASTA-LANG element (in token form a tag is only ever its control token).
      ValueError: an id outside the vocabulary.
    """
    ids = _as_id_list(ids)
    self._check_ids(ids)
    scan = tokens.scan(ids, self._control, annotated=annotated)
    kind = scan.kind.tolist()
    nodes: list[lang.Node] = []
    n, pos, promise = len(ids), 0, 0

    def run_end(start: int, what: int) -> int:
      end = start
      while end < n and kind[end] == what:
        end += 1
      return end

    while pos < n:
      k = kind[pos]
      if k == tokens.Kind.TEXT:
        end = run_end(pos, tokens.Kind.TEXT)
        text = self._decode_ids(ids[pos:end])
        nodes.append(self._checked(lambda: lang.Text(text), ids, pos, end))
        pos = end
      elif k == tokens.Kind.PROMISE:
        promise += 1
        end = run_end(pos + 1, tokens.Kind.TOPIC)  # ids[end] is the length token
        topic = self._decode_ids(ids[pos + 1:end])
        promised = int(scan.promised[promise])
        pos = end + 1
        if not annotated:
          nodes.append(lang.Promise(topic, promised))
          continue
        end = run_end(pos + 1, tokens.Kind.BODY)  # ids[pos] is ASYNC, ids[end] END_ASYNC
        body = self._decode_ids(ids[pos + 1:end])
        nodes.append(self._checked(lambda: lang.Promise(topic, promised, body),
                                   ids, pos + 1, end))
        pos = end + 1
      elif k == tokens.Kind.SYNC:
        nodes.append(lang.Sync())
        pos += 1
      else:  # EOS: the last token (scan rejects anything after it)
        pos += 1
    return lang.Document(tuple(nodes))

  def _checked(self, make, ids: list[int], start: int, end: int):
    """Returns make(); a text-form PastaLangError is re-raised at its token index."""
    try:
      return make()
    except lang.PastaLangError as e:
      token = start + self._token_at(ids[start:end], e.offset)
      raise lang.PastaLangError(
          f'text tokens {start}..{end - 1} spell a PASTA-LANG element as ordinary text '
          f'({e.problem}); in token form a tag is only ever its control token',
          token) from None

  def _token_at(self, ids: list[int], char_offset: int) -> int:
    """Index of the token that produces character `char_offset` of the decoded ids."""
    sp = self._processor()
    target = len(sp.decode(ids)[:char_offset].encode('utf-8'))
    total = 0
    for k, token in enumerate(ids):
      total += 1 if sp.is_byte(token) else len(sp.decode([token]).encode('utf-8'))
      if total > target:
        return k
    return len(ids) - 1


def _as_id_list(ids: Sequence[int] | np.ndarray) -> list[int]:
  array = np.asarray(ids)
  if array.size == 0:
    return []
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'expected a 1-D sequence of integer ids, got shape {array.shape} '
                     f'dtype {array.dtype}')
  return array.tolist()


def _parse_model_proto(model: bytes, name: str):
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  try:
    proto.ParseFromString(model)
  except Exception as e:  # protobuf's DecodeError differs between implementations
    raise ValueError(f'not a sentencepiece model{" " + name if name else ""}: {e}') from e
  if not proto.pieces:
    raise ValueError(f'not a sentencepiece model{" " + name if name else ""}: no pieces')
  return proto


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Training.

# Options that make encode -> decode exact and match Gemma's conventions.
_TRAINER_DEFAULTS = dict(
    normalization_rule_name='identity',
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    character_coverage=1.0,
    pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
    pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>', unk_piece='<unk>',
    num_threads=1,            # deterministic
    input_sentence_size=0,    # use every sentence: no sampling
    shuffle_input_sentence=False,
    minloglevel=2,
)
_RESERVED_OPTIONS = frozenset({'sentence_iterator', 'model_writer', 'input', 'model_prefix',
                               'control_symbols', 'vocab_size'})


def train_tokenizer(texts: Iterable[str], model_path: PathLike | None, *,
                    vocab_size: int = 1024,
                    max_promise_tokens: int = DEFAULT_MAX_PROMISE_TOKENS,
                    quantum: int = lang.DEFAULT_QUANTUM,
                    model_type: str = 'bpe',
                    user_defined_symbols: Sequence[str] = (),
                    hard_vocab_limit: bool = False,
                    max_sentence_length: int = 1 << 16,
                    seed: int = 0,
                    **trainer_options: Any) -> Tokenizer:
  """Trains a sentencepiece model with the PASTA control symbols.

  The control tokens are sentencepiece control symbols with readable pieces
  (`ControlPieces.pasta`): ids 4 .. 8 + max_promise_tokens / quantum, right after
  pad 0, eos 1, bos 2, unk 3. Training is in memory, single-threaded and
  deterministic for the same texts and options; the model is lossless (identity
  normalization, whitespace kept, no dummy prefix, byte fallback, digits split).

  Args:
    texts: the corpus, one sentence (any text, newlines included) per item; empty
      items are skipped. Items longer than max_sentence_length bytes are skipped
      by sentencepiece.
    model_path: where to `save` the tokenizer (model file plus JSON sidecar);
      None keeps it in memory only.
    vocab_size: the vocabulary size, including the 4 special pieces, the control
      pieces and the 256 byte pieces. With hard_vocab_limit=False (default) it is
      an upper bound: a small corpus may give fewer pieces.
    max_promise_tokens: the largest promised length (a multiple of quantum).
    quantum: the promised-length granularity.
    model_type: 'bpe' (like Gemma) or 'unigram'.
    user_defined_symbols: extra pieces matched literally in text (e.g. chat turn
      markers).
    seed: sentencepiece's random seed (a process-wide sentencepiece setting).
    **trainer_options: further SentencePieceTrainer options; they override the
      lossless defaults (check `Tokenizer.lossless` afterwards).
  """
  import sentencepiece  # pylint: disable=g-import-not-at-top
  pieces = ControlPieces.pasta(max_promise_tokens, quantum)
  reserved = _RESERVED_OPTIONS.intersection(trainer_options)
  if reserved:
    raise ValueError(f'train_tokenizer sets {sorted(reserved)} itself')
  clash = set(user_defined_symbols).intersection(pieces.all)
  if clash:
    raise ValueError(f'user_defined_symbols {sorted(clash)} clash with the PASTA '
                     'control pieces')
  minimum = 4 + len(pieces.all) + 256 + len(user_defined_symbols) + 1
  if vocab_size < minimum:
    raise ValueError(
        f'vocab_size={vocab_size} is too small: 4 special pieces, {len(pieces.all)} '
        f'PASTA control pieces (max_promise_tokens={max_promise_tokens}, '
        f'quantum={quantum}), 256 byte-fallback pieces and '
        f'{len(user_defined_symbols)} user-defined symbols already need {minimum - 1}')

  count = 0

  def sentences() -> Iterator[str]:
    nonlocal count
    for text in texts:
      if not isinstance(text, str):
        raise TypeError(f'train_tokenizer expects str texts, got {type(text).__name__}')
      if text:
        count += 1
        yield text

  options = dict(_TRAINER_DEFAULTS)
  options.update(model_type=model_type, hard_vocab_limit=hard_vocab_limit,
                 max_sentence_length=max_sentence_length)
  options.update(trainer_options)
  if user_defined_symbols:
    options['user_defined_symbols'] = list(user_defined_symbols)
  writer = io.BytesIO()
  sentencepiece.set_random_generator_seed(seed)
  iterator = sentences()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iterator, model_writer=writer, vocab_size=vocab_size,
        control_symbols=list(pieces.all), **options)
  except RuntimeError:
    if count == 0:
      raise ValueError('train_tokenizer got no non-empty texts') from None
    raise
  tokenizer = Tokenizer(writer.getvalue(), pieces, quantum=quantum,
                        name='' if model_path is None else os.fspath(model_path))
  if model_path is not None:
    tokenizer.save(model_path)
  return tokenizer
