"""The text guard: ordinary text never encodes to a control id, and round-trips exactly."""

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings

from pasta_jax import tokenizer as tk
from pasta_jax import tokens
from pasta_jax.tokenizer import guard, vocabulary
from tests.tokenizer.helpers import (D, P, S, any_text, documents, no_control,
                                     train_gemma_style)


# ----------------------------------------------------------------------------
# Ordinary text (hypothesis).


@settings(max_examples=300)
@given(text=any_text)
def test_text_round_trip_and_no_control_ids(any_tok, text):
  ids = any_tok.encode_text(text)
  assert no_control(any_tok, ids)
  assert any_tok.decode_text(ids) == text


@given(doc=documents())
def test_text_runs_never_hold_control_ids(gemma_tok, doc):
  ids = gemma_tok.encode(doc)
  scan = tokens.scan(ids, gemma_tok.control)
  text_like = np.isin(scan.kind, [tokens.Kind.TEXT, tokens.Kind.TOPIC, tokens.Kind.BODY])
  assert not np.isin(ids[text_like], gemma_tok.control.tag_ids).any()


# ----------------------------------------------------------------------------
# Control pieces that sentencepiece produces from text.


def test_gemma_literal_reserved_text_is_not_a_control_token(gemma_tok, gemma_path):
  raw = spm.SentencePieceProcessor(model_file=gemma_path)
  promise = gemma_tok.control.promise
  assert raw.encode('<unused0>') == [promise]  # the raw model would produce it
  for text in ['<unused0>', 'see <unused0><unused1>!', '<unused<unused0>>', '<unused3>' * 3,
               '<unused0>\u2581<unused54>']:
    ids = gemma_tok.encode_text(text)
    assert no_control(gemma_tok, ids), text
    assert gemma_tok.decode_text(ids) == text
  # The literal is cut before its last character and spelled with ordinary pieces.
  assert gemma_tok.encode_text('a<unused0>b') == raw.encode('a<unused0') + raw.encode('>b')
  # Reserved pieces outside the mapping are ordinary user-defined text.
  assert gemma_tok.encode_text('<unused59>') == [raw.piece_to_id('<unused59>')]
  doc = D.of('<unused0> is text ', P('<unused1>', 10, '<unused2>'), S())
  assert gemma_tok.decode(gemma_tok.encode(doc)) == doc


def test_ordinary_pieces_as_control_tokens(gemma_path):
  """Even NORMAL pieces (one character, or holding a space) never come from text."""
  raw = spm.SentencePieceProcessor(model_file=gemma_path)
  assert raw.unk_id() not in (raw.piece_to_id('\u2581the'), raw.piece_to_id('x'))
  pieces = tk.ControlPieces('\u2581the', 'x', '<unused2>', '<unused3>', ('<unused4>',))
  tok = tk.Tokenizer.from_pretrained(gemma_path, pieces, max_promise_tokens=0)
  assert raw.piece_to_id('\u2581the') in raw.encode('of the text')
  for text in ['of the text', ' the', 'the', 'xx', 'x\u2581the x', 'the  the']:
    ids = tok.encode_text(text)
    assert no_control(tok, ids) and tok.decode_text(ids) == text, text


def test_normalizing_model_still_never_yields_control_ids(models_dir):
  path = train_gemma_style(models_dir / 'nfkc.model', normalization='nmt_nfkc')
  raw = spm.SentencePieceProcessor(model_file=path)
  tok = tk.Tokenizer.from_pretrained(path)
  assert not tok.lossless and 'rewrites characters' in tok.lossless_problems[0]
  fullwidth = '\uff1cunused0\uff1e'  # NFKC turns it into '<unused0>'
  assert tok.control.promise in raw.encode(fullwidth)
  ids = tok.encode_text(fullwidth)
  assert no_control(tok, ids) and tok.decode_text(ids) == '<unused0>'


# ----------------------------------------------------------------------------
# The guard on its own.


def _guard(path, pieces):
  with open(path, 'rb') as f:
    proto = vocabulary.parse_model_proto(f.read(), '')
  return guard.TextGuard.for_vocabulary(
      vocabulary.read_vocabulary(proto, pieces, 10, ''), '')


def test_split_cuts_inside_control_surfaces_and_spells_the_space_mark(gemma_path):
  g = _guard(gemma_path, tk.ControlPieces.reserved(0))  # <unused0> .. <unused4>
  space_mark = g.spell_bytes('\u2581')
  assert len(space_mark) == 3  # its UTF-8 bytes
  assert g.split('') == []
  assert g.split('plain text') == ['plain text']
  assert g.split('a<unused0>b\u2581c') == ['a<unused0', '>b', space_mark, 'c']
  assert g.split('<unused<unused1>>') == ['<unused<unused1', '>>']
  assert g.split('<unused5>') == ['<unused5>']  # not a control piece here
  promise = min(g.tag_ids)  # <unused0>
  other = max(g.tag_ids) + 1
  assert g.respell_tags([other, promise]) == [other, *g.spell_bytes('<unused0>')]


def test_models_without_byte_pieces(models_dir):
  path = train_gemma_style(models_dir / 'no_bytes.model', normalization='nmt_nfkc',
                           byte_fallback=False)
  pieces = tk.ControlPieces('x', '<unused1>', '<unused2>', '<unused3>', ('<unused4>',))
  with pytest.raises(ValueError, match=r"control piece\(s\) \['x'\] are single characters"):
    tk.Tokenizer.from_pretrained(path, pieces)
  tok = tk.Tokenizer.from_pretrained(path)
  assert 'no byte fallback: unknown characters become <unk>' in tok.lossless_problems
  with pytest.raises(ValueError, match="text normalizes to the control piece '<unused0>'"):
    tok.encode_text('\uff1cunused0\uff1e')
