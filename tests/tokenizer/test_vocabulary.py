"""Reading the vocabulary: control pieces resolved to ids, Gemma's reserved pieces, errors."""

import pytest
import sentencepiece as spm

from pasta_jax import tokenizer as tk
from pasta_jax import tokens
from pasta_jax.tokenizer import vocabulary
from tests.tokenizer.helpers import D, P


# ----------------------------------------------------------------------------
# Control tokens.


def test_control_pieces_are_single_control_ids(pasta_tok):
  c = pasta_tok.control
  pieces = tk.ControlPieces.pasta(200, 10)
  assert pasta_tok.pieces == pieces
  assert (c.pad, c.eos, c.bos, pasta_tok.unk_id) == (0, 1, 2, 3)
  assert c.tag_ids == tuple(range(4, 4 + 4 + 21))  # right after the specials
  for piece, token in zip(pieces.all, c.tag_ids):
    assert pasta_tok.piece_to_id(piece) == token
    assert pasta_tok.id_to_piece(token) == piece
  assert pasta_tok.id_to_piece(c.length_id(30)) == '<pasta:len=30>'
  assert pasta_tok.max_promise_tokens == 200 and pasta_tok.lossless
  # sentencepiece never produces a control symbol from text.
  raw = spm.SentencePieceProcessor(model_proto=pasta_tok.model_proto)
  assert not set(raw.encode(''.join(pieces.all))) & set(c.tag_ids)


# ----------------------------------------------------------------------------
# Wrapping a Gemma-style model.


def test_gemma_default_mapping(gemma_tok, gemma_path):
  raw = spm.SentencePieceProcessor(model_file=gemma_path)
  c = gemma_tok.control
  assert c.promise == raw.piece_to_id('<unused0>')
  assert c.async_open == raw.piece_to_id('<unused1>')
  assert c.async_close == raw.piece_to_id('<unused2>')
  assert c.sync == raw.piece_to_id('<unused3>')
  assert c.lengths[0] == raw.piece_to_id('<unused4>')
  assert len(c.lengths) == tk.DEFAULT_MAX_PROMISE_TOKENS // 10 + 1
  assert c.lengths[-1] == raw.piece_to_id(f'<unused{4 + len(c.lengths) - 1}>')
  assert (c.pad, c.eos, c.bos) == (0, 1, 2)
  assert gemma_tok.lossless and gemma_tok.vocab_size == raw.get_piece_size()


def test_gemma_missing_pieces_error(gemma_path):
  with pytest.raises(ValueError) as err:
    tk.Tokenizer.from_pretrained(gemma_path, max_promise_tokens=600)
  message = str(err.value)
  assert "'<unused60>' (LEN_56 (560 tokens))" in message
  assert "'<unused64>' (LEN_60 (600 tokens))" in message and "'<unused59>'" not in message
  pieces = tk.ControlPieces('<start_of_turn>', '<nope>', '<end_of_turn>', '<unused3>',
                            ('<unused4>', '<also_missing>'))
  with pytest.raises(ValueError, match=r"'<nope>' \(ASYNC\).*'<also_missing>' \(LEN_1"):
    tk.Tokenizer.from_pretrained(gemma_path, pieces)


def test_gemma_unusable_pieces_error(gemma_path):
  for piece, kind in [('<eos>', 'eos piece'), ('<0x41>', 'BYTE piece'),
                      ('<unk>', 'unk piece')]:
    pieces = tk.ControlPieces(piece, '<unused1>', '<unused2>', '<unused3>', ('<unused4>',))
    with pytest.raises(ValueError, match=kind):
      tk.Tokenizer.from_pretrained(gemma_path, pieces)
  with pytest.raises(ValueError, match='used twice'):
    tk.ControlPieces('<unused0>', '<unused0>', '<unused2>', '<unused3>', ('<unused4>',))
  with pytest.raises(ValueError, match='max_promise_tokens=30'):
    tk.Tokenizer.from_pretrained(gemma_path, tk.ControlPieces.reserved(20),
                                 max_promise_tokens=30)


def test_custom_mapping_and_quantum(gemma_path):
  pieces = tk.ControlPieces.reserved(90, 5, first=10)  # <unused10>.. , LEN_0..LEN_18
  tok = tk.Tokenizer.from_pretrained(gemma_path, pieces, quantum=5)
  assert tok.id_to_piece(tok.control.promise) == '<unused10>'
  assert tok.max_promise_tokens == 90
  doc = D.of(P('<unused10>', 85, '<unused14>'))
  ids = tok.encode(doc)
  scan = tokens.scan(ids, tok.control)
  length_token = ids[scan.promise_end[1]]
  assert length_token == tok.control.length_id(85) == tok.piece_to_id('<unused31>')
  assert tok.decode(ids) == doc


# ----------------------------------------------------------------------------
# The vocabulary module on its own.


def test_read_vocabulary(pasta_tok, gemma_path):
  proto = vocabulary.parse_model_proto(pasta_tok.model_proto, '')
  vocab = vocabulary.read_vocabulary(proto, pasta_tok.pieces, 10, '')
  assert vocab.control == pasta_tok.control and vocab.size == pasta_tok.vocab_size
  assert vocab.tag_ids == frozenset(pasta_tok.control.tag_ids)
  assert vocab.surfaces[pasta_tok.control.sync] == '<pasta:sync/>'
  assert vocab.byte_ids[0x41] == pasta_tok.piece_to_id('<0x41>')
  # Control symbols never come from text; the model is lossless.
  assert vocab.producible == () and vocab.lossless_problems == ()
  with open(gemma_path, 'rb') as f:
    proto = vocabulary.parse_model_proto(f.read(), 'gemma')
  gemma = vocabulary.read_vocabulary(proto, tk.ControlPieces.reserved(20), 10, 'gemma')
  assert gemma.producible == tuple(f'<unused{i}>' for i in range(7))  # USER_DEFINED


def test_parse_model_proto_errors():
  with pytest.raises(ValueError, match='not a sentencepiece model x.model: no pieces'):
    vocabulary.parse_model_proto(b'', 'x.model')
  with pytest.raises(ValueError, match='not a sentencepiece model: '):
    vocabulary.parse_model_proto(b'\xff\xff garbage', '')
