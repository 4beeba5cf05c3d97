"""The PASTA tokenizer: a sentencepiece model plus the PASTA control tokens.

A `Tokenizer` is a small picklable value: the serialized model, the control-piece
mapping and the quantum. The sentencepiece processor is created on first use and
is never pickled; this module imports sentencepiece only when it needs it.

(Over 400 lines on purpose: it is the one `Tokenizer` class, and its document
encode/decode and its files are read against the same private vocabulary state.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from pasta_jax import lang
from pasta_jax import tokens
from pasta_jax.tokenizer.guard import TextGuard
from pasta_jax.tokenizer.pieces import DEFAULT_MAX_PROMISE_TOKENS, ControlPieces
from pasta_jax.tokenizer.vocabulary import (Vocabulary, parse_model_proto,
                                            read_vocabulary)

PathLike = str | os.PathLike

_SIDECAR_FORMAT = 'pasta_jax.tokenizer/1'


def sidecar_path(model_path: PathLike) -> str:
  """Where `Tokenizer.save` writes the JSON settings next to the model file."""
  return os.fspath(model_path) + '.pasta.json'


class _Processor:
  """Holds a tokenizer's processor once created; pickles (and deep-copies) empty.

  A sentencepiece processor pickles its whole model again, and unpickling it
  imports sentencepiece: an unpickled tokenizer creates its own on first use.
  """

  sp: Any = None

  def __reduce__(self) -> tuple[type, tuple[()]]:
    return _Processor, ()


@dataclasses.dataclass(frozen=True, repr=False)
class Tokenizer:
  """A sentencepiece model plus the PASTA control tokens.

  Build one with `train_tokenizer`, `Tokenizer.from_pretrained` (a Gemma-style
  model) or `Tokenizer.load` (a model saved with `save`). The constructor reads the
  model proto and checks the control pieces eagerly; the sentencepiece processor
  itself is created on first use. Tokenizers are equal (and hash equal) when their
  model, pieces and quantum are.

  Attributes:
    model_proto: the serialized sentencepiece ModelProto the processor loads
      (a `.model` file's bytes, with add_dummy_prefix switched off).
    pieces: the control-piece mapping; every piece must be in the model.
    quantum: promised-length granularity: LEN_i means i * quantum tokens.
    name: shown in repr (e.g. the file the model came from); not part of equality.
  """

  model_proto: bytes
  pieces: ControlPieces
  _: dataclasses.KW_ONLY
  quantum: int = lang.DEFAULT_QUANTUM
  name: str = dataclasses.field(default='', compare=False)
  # Derived from the fields in __post_init__.
  _vocab: Vocabulary = dataclasses.field(init=False, compare=False)
  _guard: TextGuard = dataclasses.field(init=False, compare=False)
  _sp: _Processor = dataclasses.field(init=False, compare=False)

  def __post_init__(self) -> None:
    """Reads the model proto and resolves the control pieces to ids.

    Raises:
      ValueError: a configured piece is missing from the model, or has a type that
        cannot be a control token (BYTE, UNKNOWN, or one of pad/eos/bos/unk).
    """
    model_proto, pieces, quantum = self.model_proto, self.pieces, self.quantum
    if not isinstance(model_proto, (bytes, bytearray)):
      raise TypeError(f'model_proto must be bytes, got {type(model_proto).__name__}')
    if not isinstance(pieces, ControlPieces):
      raise TypeError(f'pieces must be ControlPieces, got {type(pieces).__name__}')
    if quantum < 1:
      raise ValueError(f'quantum must be >= 1, got {quantum}')
    proto = parse_model_proto(bytes(model_proto), self.name)
    # Segment-wise encoding (text, topic, body, text ...) concatenates exactly only
    # when the processor does not prepend a space to every segment.
    if proto.normalizer_spec.add_dummy_prefix:
      proto.normalizer_spec.add_dummy_prefix = False
      model_proto = proto.SerializeToString()
    vocab = read_vocabulary(proto, pieces, int(quantum), self.name)
    derived = dict(model_proto=bytes(model_proto), quantum=int(quantum), _vocab=vocab,
                   _guard=TextGuard.for_vocabulary(vocab, self.name), _sp=_Processor())
    for field, value in derived.items():
      object.__setattr__(self, field, value)

  # --------------------------------------------------------------------------
  # Construction and persistence.

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
    settings = {'format': _SIDECAR_FORMAT, 'quantum': self.quantum,
                'max_promise_tokens': self.max_promise_tokens,
                'pieces': self.pieces.to_json(), 'model_sha256': self.sha256}
    _write_atomic(model_path, self.model_proto)
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

  def __repr__(self) -> str:
    name = f'{self.name!r}, ' if self.name else ''
    return (f'Tokenizer({name}vocab_size={self._vocab.size}, quantum={self.quantum}, '
            f'max_promise_tokens={self.max_promise_tokens}, '
            f'promise={self.pieces.promise!r}, lossless={self.lossless}, '
            f'sha256={self.sha256[:12]})')

  # --------------------------------------------------------------------------
  # Properties.

  @property
  def control(self) -> tokens.ControlTokens:
    """The control-token ids (with this model's eos, pad and bos)."""
    return self._vocab.control

  @property
  def max_promise_tokens(self) -> int:
    return self._vocab.control.max_promise_tokens

  @property
  def vocab_size(self) -> int:
    return self._vocab.size

  @property
  def pad_id(self) -> int:
    return self._vocab.control.pad

  @property
  def eos_id(self) -> int:
    return self._vocab.control.eos

  @property
  def bos_id(self) -> int | None:
    return self._vocab.control.bos

  @property
  def unk_id(self) -> int | None:
    return self._vocab.unk_id

  @property
  def lossless(self) -> bool:
    """Whether decode(encode(x)) == x is guaranteed for every string and document."""
    return not self._vocab.lossless_problems

  @property
  def lossless_problems(self) -> tuple[str, ...]:
    """Why the model is not lossless (empty when it is)."""
    return self._vocab.lossless_problems

  @functools.cached_property
  def sha256(self) -> str:
    return hashlib.sha256(self.model_proto).hexdigest()

  @property
  def is_loaded(self) -> bool:
    """Whether the sentencepiece processor has been created."""
    return self._sp.sp is not None

  def _processor(self) -> Any:
    # Two threads racing here each build a processor; either one is correct.
    holder = self._sp
    if holder.sp is None:
      import sentencepiece  # pylint: disable=g-import-not-at-top
      holder.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
    return holder.sp

  def id_to_piece(self, token: int) -> str:
    self._check_id(token)
    return self._processor().id_to_piece(int(token))

  def piece_to_id(self, piece: str) -> int:
    """The id of a piece; KeyError when the vocabulary has no such piece."""
    sp = self._processor()
    token = sp.piece_to_id(piece)
    if token == self._vocab.unk_id and piece != sp.id_to_piece(token):
      raise KeyError(f'no piece {piece!r} in the vocabulary')
    return token

  def _check_id(self, token: int) -> None:
    if not 0 <= token < self._vocab.size:
      raise ValueError(f'token id {token} is outside the vocabulary '
                       f'[0, {self._vocab.size})')

  def _check_ids(self, ids: list[int]) -> None:
    if ids and not 0 <= min(ids) <= max(ids) < self._vocab.size:
      self._check_id(next(t for t in ids if not 0 <= t < self._vocab.size))

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
    if not self._vocab.tag_ids.isdisjoint(ids):
      pos = next(i for i, t in enumerate(ids) if t in self._vocab.tag_ids)
      token = ids[pos]
      raise ValueError(f'decode_text: id {token} at index {pos} is the PASTA control '
                       f'token {self._vocab.surfaces[token]!r}; decode token-form '
                       'PASTA-LANG with decode()')
    return self._decode_ids(ids)

  def _decode_ids(self, ids: list[int]) -> str:
    return self._processor().decode(ids) if ids else ''

  def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
    """encode_text for each of several strings (one processor lookup)."""
    sp = self._processor()
    split, tag_ids = self._guard.split, self._vocab.tag_ids
    out = []
    for text in texts:
      if not isinstance(text, str):
        raise TypeError(f'expected text as str, got {type(text).__name__}')
      ids: list[int] = []
      for part in split(text):
        # One call per segment: faster than sentencepiece's threaded batch encode
        # for the handful of short segments a document has.
        ids.extend(sp.encode(part, out_type=int) if isinstance(part, str) else part)
      if not tag_ids.isdisjoint(ids):
        ids = self._guard.respell_tags(ids)
      out.append(ids)
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
      doc = lang.parse(doc, annotated=annotated, quantum=self.quantum,
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
    c = self._vocab.control
    out: list[int] = []
    for node in doc.nodes:
      if isinstance(node, lang.Text):
        out.extend(next(encoded))
      elif isinstance(node, lang.Promise):
        out.append(c.promise)
        out.extend(next(encoded))
        out.append(c.lengths[node.tokens // self.quantum])
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
    if promise.tokens % self.quantum or promise.tokens > self.max_promise_tokens:
      raise ValueError(
          f'{what}: the promised length has no length token; token form represents '
          f'multiples of {self.quantum} up to {self.max_promise_tokens}. Quantize with '
          f'doc.quantized({self.quantum}, max_tokens={self.max_promise_tokens}).')
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
    scan = tokens.scan(ids, self._vocab.control, annotated=annotated)
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

  def _checked(self, make: Callable[[], lang.Node], ids: list[int], start: int,
               end: int) -> lang.Node:
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


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)
