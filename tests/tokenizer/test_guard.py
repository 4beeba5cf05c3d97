"""The text guard: ordinary text never encodes to a control id, and round-trips exactly."""

import numpy as np
import sentencepiece as spm
from hypothesis import given, settings

from pasta_jax import tokenizer as tk
from pasta_jax import tokens
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
