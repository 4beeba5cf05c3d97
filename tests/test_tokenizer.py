"""Tokenizer: exact round trips, the token layout, Gemma-style wrapping, pickling, errors.

Three tokenizers are trained once per session (each in well under a second):
  * `pasta`: our own model (train_tokenizer), control tokens as control symbols.
  * `gemma`: a sentencepiece model trained like Gemma's (reserved `<unused0>`..
    `<unused59>` as USER_DEFINED pieces, byte fallback, identity normalization),
    wrapped with the default reserved-piece mapping.
  * `gemma_dummy_prefix`: the same, trained with add_dummy_prefix=True.
The property tests run against all three.
"""

import io
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import assume, given, settings, strategies as st

from pasta_jax import lang
from pasta_jax import tokenizer as tk
from pasta_jax import tokens

P, S, D = lang.Promise, lang.Sync, lang.Document

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# Corpus and models.


def _corpus(n=3000, seed=0):
  rng = random.Random(seed)
  words = ('the a of to and in is it you that for on with as are this be at or by '
           'list step first second answer because number value result python code '
           'return print def class import x y z total sum 1 2 3 10 42 2025').split()
  extras = ['<div class="note">', '</div>', '<p>', '</p>', 'a < b', 'if (x > 0) {',
            '}', '    return x\n', 'def f(x):\n', '😀', 'naïve café', '日本語', '\t',
            '<promise topic="steps" tokens="30"/>', '<async>', '</async>', '<sync/>']
  lines = []
  for _ in range(n):
    parts = [rng.choice(words) for _ in range(rng.randint(1, 12))]
    if rng.random() < 0.4:
      parts.insert(rng.randrange(len(parts) + 1), rng.choice(extras))
    lines.append(' '.join(parts) + ('\n' if rng.random() < 0.2 else ''))
  return lines


_GEMMA_SYMBOLS = [f'<unused{i}>' for i in range(60)] + ['<start_of_turn>', '<end_of_turn>']


def _train_gemma_style(path, *, add_dummy_prefix=False, normalization='identity'):
  """A small sentencepiece model with Gemma's conventions (reserved USER_DEFINED pieces)."""
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus(1500, seed=1)), model_writer=writer,
      vocab_size=600, model_type='bpe', user_defined_symbols=_GEMMA_SYMBOLS,
      byte_fallback=True, normalization_rule_name=normalization,
      remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix,
      split_digits=True, allow_whitespace_only_pieces=True, character_coverage=1.0,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece='<pad>', eos_piece='<eos>',
      bos_piece='<bos>', unk_piece='<unk>', num_threads=1, hard_vocab_limit=False,
      minloglevel=2)
  with open(path, 'wb') as f:
    f.write(writer.getvalue())
  return str(path)


@pytest.fixture(scope='session')
def models_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tokenizers')


@pytest.fixture(scope='session')
def pasta_path(models_dir):
  path = models_dir / 'pasta.model'
  tk.train_tokenizer(_corpus(), path, vocab_size=768, max_promise_tokens=200)
  return str(path)


@pytest.fixture(scope='session')
def pasta_tok(pasta_path):
  return tk.Tokenizer.load(pasta_path)


@pytest.fixture(scope='session')
def gemma_path(models_dir):
  return _train_gemma_style(models_dir / 'gemma_style.model')


@pytest.fixture(scope='session')
def gemma_tok(gemma_path):
  return tk.Tokenizer.from_pretrained(gemma_path)


@pytest.fixture(scope='session')
def dummy_prefix_path(models_dir):
  return _train_gemma_style(models_dir / 'dummy_prefix.model', add_dummy_prefix=True)


@pytest.fixture(scope='session', params=['pasta', 'gemma', 'gemma_dummy_prefix'])
def any_tok(request, pasta_path, gemma_path, dummy_prefix_path):
  if request.param == 'pasta':
    return tk.Tokenizer.load(pasta_path)
  path = gemma_path if request.param == 'gemma' else dummy_prefix_path
  return tk.Tokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------
# Strategies: text full of tag lookalikes, and well-formed documents.

LOOKALIKES = [
    '<', '>', '/>', '</', '<promises>', '< sync/>', '<syncing/>', '<Sync/>', '<asyncio>',
    '</promise_x>', '<sync', '<async', '</async', '<promise', 'a < b > c', 'x<<y',
    '<div class="x">', '</div>', '<!-- c -->', 'if (a<b && c>d) {}',
    'def f(x):\n    return x < 1\n', '&quot;', '&amp;', '&', '"', "'",
    '<unused0>', '<unused1>', '<unused4>', '<unused10>', '<unused0', 'unused0>',
    '<unused<unused0>>', '<unused2><unused3>', '<start_of_turn>', '<end_of_turn>',
    '<pasta:promise>', '<pasta:async>', '</pasta:async>', '<pasta:sync/>',
    '<pasta:len=0>', '<pasta:len=20>', '<pasta:len=<pasta:len=10>>',
    '<pad>', '<eos>', '<bos>', '<unk>', '<s>', '</s>', '<0x41>',
    '\u2581', '\u2581\u2581', ' \u2581', '\u2581x', '😀', '👩\u200d💻', 'é', 'e\u0301', '日本',
    '\n', '\r\n', '\t', ' ', '   ', '\u3000', '\x00', '\ufeff', '1234567890', '3.14',
]

_chars = st.characters(exclude_categories=['Cs'])
raw_text = st.lists(st.one_of(st.sampled_from(LOOKALIKES), st.text(_chars, max_size=10)),
                    max_size=8).map(''.join)
any_text = st.one_of(raw_text, st.text(_chars, max_size=40))


def _is_plain(text):
  try:
    lang.Text(text)
  except lang.PastaLangError:
    return False
  return True


plain_text = raw_text.filter(_is_plain)


@st.composite
def documents(draw, max_tokens=200, quantum=10, annotated=True):
  length = st.integers(0, max_tokens // quantum).map(lambda n: n * quantum)
  body = plain_text if annotated else st.none()
  promise = st.builds(P, topic=any_text, tokens=length, body=body)
  nodes = draw(st.lists(st.one_of(plain_text.map(lang.Text), promise, st.just(S())),
                        max_size=7))
  try:  # merging adjacent texts can form a tag ('<sync' + '/>')
    return D(tuple(nodes))
  except lang.PastaLangError:
    assume(False)


def _no_control(tok, ids):
  return not set(ids) & set(tok.control.tag_ids)


# ----------------------------------------------------------------------------
# Round trips (hypothesis).


@settings(max_examples=300)
@given(text=any_text)
def test_text_round_trip_and_no_control_ids(any_tok, text):
  ids = any_tok.encode_text(text)
  assert _no_control(any_tok, ids)
  assert any_tok.decode_text(ids) == text


@given(doc=documents())
def test_document_round_trip(any_tok, doc):
  ids = any_tok.encode(doc)
  assert ids.dtype == np.int32 and ids[-1] == any_tok.eos_id
  assert any_tok.decode(ids) == doc
  assert any_tok.decode(ids[:-1]) == doc  # EOS is optional on decode


@given(doc=documents(annotated=False))
def test_main_thread_round_trip(any_tok, doc):
  ids = any_tok.encode(doc, annotated=False, add_eos=False)
  assert any_tok.decode(ids, annotated=False) == doc


@given(doc=documents())
def test_text_form_encodes_like_the_document(pasta_tok, doc):
  from_text = pasta_tok.encode(lang.serialize(doc))
  np.testing.assert_array_equal(from_text, pasta_tok.encode(doc))


@given(doc=documents())
def test_text_runs_never_hold_control_ids(gemma_tok, doc):
  ids = gemma_tok.encode(doc)
  scan = tokens.scan(ids, gemma_tok.control)
  text_like = np.isin(scan.kind, [tokens.Kind.TEXT, tokens.Kind.TOPIC, tokens.Kind.BODY])
  assert not np.isin(ids[text_like], gemma_tok.control.tag_ids).any()


# ----------------------------------------------------------------------------
# Control tokens and the token layout.


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


def test_encode_layout(any_tok):
  t, c = any_tok, any_tok.control
  doc = D.of('Intro:\n', P('first part', 20, 'body one'), P('', 0, ''), ' middle ', S(),
             'end.')
  expected = (t.encode_text('Intro:\n') + [c.promise] + t.encode_text('first part')
              + [c.lengths[2], c.async_open] + t.encode_text('body one') + [c.async_close]
              + [c.promise, c.lengths[0], c.async_open, c.async_close]
              + t.encode_text(' middle ') + [c.sync] + t.encode_text('end.') + [c.eos])
  ids = t.encode(doc)
  assert ids.tolist() == expected
  scan = tokens.scan(ids, c)
  assert scan.complete and scan.promised.tolist() == [0, 20, 0]
  # Without annotation the main thread writes promises only.
  main = D.of('Intro:\n', P('first part', 20), S())
  assert t.encode(main, annotated=False, add_eos=False).tolist() == (
      t.encode_text('Intro:\n') + [c.promise] + t.encode_text('first part')
      + [c.lengths[2], c.sync])


def test_encode_str_parses_tags_and_keeps_lookalikes(pasta_tok):
  t, c = pasta_tok, pasta_tok.control
  expected = t.encode_text('a') + [c.sync] + t.encode_text('b') + [c.eos]
  assert t.encode('a<sync/>b').tolist() == expected
  assert t.encode('a<sync />b').tolist() == t.encode('a<sync/>b').tolist()
  for text in ['x <promises> y', '< sync/>', 'ends with <sync', '<pasta:sync/>', 'a < b']:
    assert t.encode(text).tolist() == t.encode_text(text) + [c.eos]
  doc = t.decode(t.encode('<promise topic="say &quot;hi&quot; &amp; go" tokens="10"/>'
                          '<async topic="say &quot;hi&quot; &amp; go">hi</async>'))
  assert doc == D.of(P('say "hi" & go', 10, 'hi'))  # the async topic is not in token form


def test_empty_and_whitespace_texts(any_tok):
  assert any_tok.encode_text('') == [] and any_tok.decode_text([]) == ''
  assert any_tok.encode(D()).tolist() == [any_tok.eos_id]
  assert any_tok.decode([any_tok.eos_id]) == D()
  for text in [' ', '  lead', 'trail  ', ' \n ', '\u2581']:
    assert any_tok.decode_text(any_tok.encode_text(text)) == text


def test_decode_accepts_arrays_and_lists(pasta_tok):
  doc = D.of('hi ', P('t', 10, 'b'), S())
  ids = pasta_tok.encode(doc)
  assert pasta_tok.decode(ids.tolist()) == pasta_tok.decode(ids.astype(np.int64)) == doc


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


def test_gemma_literal_reserved_text_is_not_a_control_token(gemma_tok, gemma_path):
  raw = spm.SentencePieceProcessor(model_file=gemma_path)
  promise = gemma_tok.control.promise
  assert raw.encode('<unused0>') == [promise]  # the raw model would produce it
  for text in ['<unused0>', 'see <unused0><unused1>!', '<unused<unused0>>', '<unused3>' * 3,
               '<unused0>\u2581<unused54>']:
    ids = gemma_tok.encode_text(text)
    assert _no_control(gemma_tok, ids), text
    assert gemma_tok.decode_text(ids) == text
  # The literal is cut before its last character and spelled with ordinary pieces.
  assert gemma_tok.encode_text('a<unused0>b') == raw.encode('a<unused0') + raw.encode('>b')
  # Reserved pieces outside the mapping are ordinary user-defined text.
  assert gemma_tok.encode_text('<unused59>') == [raw.piece_to_id('<unused59>')]
  doc = D.of('<unused0> is text ', P('<unused1>', 10, '<unused2>'), S())
  assert gemma_tok.decode(gemma_tok.encode(doc)) == doc


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


def test_ordinary_pieces_as_control_tokens(gemma_path):
  """Even NORMAL pieces (one character, or holding a space) never come from text."""
  raw = spm.SentencePieceProcessor(model_file=gemma_path)
  assert raw.unk_id() not in (raw.piece_to_id('\u2581the'), raw.piece_to_id('x'))
  pieces = tk.ControlPieces('\u2581the', 'x', '<unused2>', '<unused3>', ('<unused4>',))
  tok = tk.Tokenizer.from_pretrained(gemma_path, pieces, max_promise_tokens=0)
  assert raw.piece_to_id('\u2581the') in raw.encode('of the text')
  for text in ['of the text', ' the', 'the', 'xx', 'x\u2581the x', 'the  the']:
    ids = tok.encode_text(text)
    assert _no_control(tok, ids) and tok.decode_text(ids) == text, text


def test_dummy_prefix_is_switched_off(dummy_prefix_path):
  raw = spm.SentencePieceProcessor(model_file=dummy_prefix_path)
  # The raw processor is not segment-wise lossless: each segment gains a space.
  assert raw.decode(raw.encode('a') + raw.encode('b')) != 'ab'
  tok = tk.Tokenizer.from_pretrained(dummy_prefix_path)
  assert tok.decode_text(tok.encode_text('a') + tok.encode_text('b')) == 'ab'
  assert tok.lossless
  doc = D.of('x', P('y', 10, 'z'), ' w')
  assert tok.decode(tok.encode(doc)) == doc


def test_normalizing_model_still_never_yields_control_ids(models_dir):
  path = _train_gemma_style(models_dir / 'nfkc.model', normalization='nmt_nfkc')
  raw = spm.SentencePieceProcessor(model_file=path)
  tok = tk.Tokenizer.from_pretrained(path)
  assert not tok.lossless and 'rewrites characters' in tok.lossless_problems[0]
  fullwidth = '\uff1cunused0\uff1e'  # NFKC turns it into '<unused0>'
  assert tok.control.promise in raw.encode(fullwidth)
  ids = tok.encode_text(fullwidth)
  assert _no_control(tok, ids) and tok.decode_text(ids) == '<unused0>'


# ----------------------------------------------------------------------------
# Pickling, laziness, save/load.


def test_lazy_and_picklable(pasta_path):
  tok = tk.Tokenizer.load(pasta_path)
  assert not tok.is_loaded
  assert tok.control.promise == 4 and tok.vocab_size > 300  # no processor needed
  clone = pickle.loads(pickle.dumps(tok))
  assert not tok.is_loaded and not clone.is_loaded and clone == tok
  doc = D.of('text ', P('topic', 30, 'body'), S(), 'more')
  ids = tok.encode(doc)
  assert tok.is_loaded
  clone = pickle.loads(pickle.dumps(tok))
  assert not clone.is_loaded
  np.testing.assert_array_equal(clone.encode(doc), ids)
  assert clone.decode(ids) == doc and hash(clone) == hash(tok)


def test_unpickling_in_a_fresh_process_does_not_import_sentencepiece(pasta_tok, tmp_path):
  doc = D.of('text ', P('topic', 30, 'body'), S(), 'more <unused0>')
  pickled = tmp_path / 'tok.pkl'
  pickled.write_bytes(pickle.dumps(pasta_tok))
  script = f"""
import pickle, sys
tok = pickle.loads(open({str(pickled)!r}, 'rb').read())
assert 'sentencepiece' not in sys.modules, 'unpickling imported sentencepiece'
assert not tok.is_loaded and tok.control.promise == 4
from pasta_jax import lang
doc = lang.Document.of('text ', lang.Promise('topic', 30, 'body'), lang.Sync(),
                       'more <unused0>')
print(tok.encode(doc).tolist())
"""
  result = subprocess.run([sys.executable, '-c', script], cwd=_REPO, capture_output=True,
                          text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == pasta_tok.encode(doc).tolist()


def test_save_and_load(pasta_tok, gemma_tok, tmp_path):
  for tok in (pasta_tok, gemma_tok):
    path = tmp_path / 'saved.model'
    tok.save(path)
    settings_ = json.loads(open(tk.sidecar_path(path)).read())
    assert settings_['quantum'] == tok.quantum
    assert settings_['pieces']['promise'] == tok.pieces.promise
    loaded = tk.Tokenizer.load(path)
    assert loaded == tok and not loaded.is_loaded
    assert loaded.encode_text('<unused0> x') == tok.encode_text('<unused0> x')
  assert tk.Tokenizer.load(path) != pasta_tok  # the last one saved was gemma_tok
  assert 'vocab_size=' in repr(pasta_tok) and 'lossless=True' in repr(pasta_tok)


def test_load_errors(pasta_tok, gemma_path, tmp_path):
  with pytest.raises(FileNotFoundError, match='from_pretrained'):
    tk.Tokenizer.load(gemma_path)
  path = tmp_path / 'x.model'
  pasta_tok.save(path)
  path.write_bytes(open(gemma_path, 'rb').read())
  with pytest.raises(ValueError, match='does not match its sidecar'):
    tk.Tokenizer.load(path)
  with pytest.raises(ValueError, match='not a sentencepiece model'):
    tk.Tokenizer(b'\xff\xff garbage', tk.ControlPieces.pasta())


# ----------------------------------------------------------------------------
# Training.


def test_training_is_deterministic_and_fast(pasta_path):
  a = tk.train_tokenizer(_corpus(500, seed=3), None, vocab_size=400, max_promise_tokens=100)
  b = tk.train_tokenizer(_corpus(500, seed=3), None, vocab_size=400, max_promise_tokens=100)
  assert a == b and a.model_proto == b.model_proto
  assert a.vocab_size <= 400 and a.lossless
  unigram = tk.train_tokenizer(_corpus(500), None, vocab_size=400, model_type='unigram')
  assert unigram.decode_text(unigram.encode_text('def f(x):\n  return 42')) == (
      'def f(x):\n  return 42')


def test_training_errors():
  with pytest.raises(ValueError, match='vocab_size=256 is too small'):
    tk.train_tokenizer(_corpus(10), None, vocab_size=256)
  with pytest.raises(ValueError, match='no non-empty texts'):
    tk.train_tokenizer(['', ''], None, vocab_size=512)
  with pytest.raises(ValueError, match='multiple of the quantum'):
    tk.train_tokenizer(_corpus(10), None, max_promise_tokens=25)
  with pytest.raises(ValueError, match='sets'):
    tk.train_tokenizer(_corpus(10), None, control_symbols=['x'])


# ----------------------------------------------------------------------------
# Errors.


def test_unrepresentable_lengths(pasta_tok):
  with pytest.raises(ValueError, match=r"promise 2 \(topic 'b', tokens=35\).*quantized"):
    pasta_tok.encode(D.of(P('a', 10, 'x'), P('b', 35, 'y')))
  with pytest.raises(ValueError, match=r"promise 1 \(topic 'a', tokens=210\).*up to 200"):
    pasta_tok.encode(D.of(P('a', 210, 'x')))
  # Quantizing the document makes it representable.
  doc = D.of(P('a', 213, 'x')).quantized(10, max_tokens=pasta_tok.max_promise_tokens)
  assert pasta_tok.decode(pasta_tok.encode(doc)).promises[0].tokens == 200
  with pytest.raises(lang.PastaLangError, match=r'line 1:4 .*not a multiple'):
    pasta_tok.encode('ab <promise topic="t" tokens="35"/><async>x</async>')
  with pytest.raises(lang.PastaLangError, match='exceeds the maximum'):
    pasta_tok.encode('<promise topic="t" tokens="300"/><async>x</async>')


def test_body_presence_errors(pasta_tok):
  with pytest.raises(ValueError, match="promise 1 \\(topic 't'.*has no body"):
    pasta_tok.encode(D.of(P('t', 10)))
  with pytest.raises(ValueError, match='carries a body'):
    pasta_tok.encode(D.of(P('t', 10, 'b')), annotated=False)
  with pytest.raises(lang.PastaLangError, match='has no body'):
    pasta_tok.encode('<promise topic="t" tokens="10"/>')


@pytest.mark.parametrize('build, index, problem', [
    (lambda t, c: t('hi') + [c.promise] + t('x') + [c.sync], 3, 'inside a promise tag'),
    (lambda t, c: t('hi') + [c.async_open], 1, 'main thread'),
    (lambda t, c: [c.promise, c.lengths[1], c.async_open] + t('b') + [c.sync], 4,
     'inside an async body'),
    (lambda t, c: [c.promise, c.lengths[1]] + t('x'), 2, 'has no body'),
    (lambda t, c: [c.promise, c.lengths[1], c.async_open] + t('b'), 4, 'unclosed'),
    (lambda t, c: t('a') + [c.eos] + t('b'), 2, 'after EOS'),
    (lambda t, c: t('a') + [c.pad] + t('b'), 1, 'padding'),
    (lambda t, c: [c.bos] + t('a'), 0, 'bos'),
    (lambda t, c: t('x') + [c.lengths[0]], 1, 'length token'),
])
def test_decode_malformed_names_the_token(pasta_tok, build, index, problem):
  ids = build(pasta_tok.encode_text, pasta_tok.control)
  with pytest.raises(lang.PastaLangError, match=problem) as err:
    pasta_tok.decode(ids)
  assert err.value.offset == index and f'token {index}:' in str(err.value)


def test_decode_text_tokens_spelling_a_tag(pasta_tok):
  t = pasta_tok
  ids = t.encode_text('ok ') + t.encode_text('<sync/>') + t.encode_text(' done')
  with pytest.raises(lang.PastaLangError, match='spell a PASTA-LANG element') as err:
    t.decode(ids)
  assert err.value.offset == len(t.encode_text('ok '))  # the token holding '<'
  c = t.control
  body = [c.promise] + t.encode_text('t') + [c.lengths[1], c.async_open]
  with pytest.raises(lang.PastaLangError, match='spell'):
    t.decode(body + t.encode_text('a</async>b') + [c.async_close])


def test_decode_text_rejects_control_and_foreign_ids(pasta_tok):
  with pytest.raises(ValueError, match="PASTA control token '<pasta:sync/>'"):
    pasta_tok.decode_text(pasta_tok.encode_text('a') + [pasta_tok.control.sync])
  assert pasta_tok.decode_text([pasta_tok.pad_id, pasta_tok.bos_id, pasta_tok.eos_id]) == ''
  with pytest.raises(ValueError, match='outside the vocabulary'):
    pasta_tok.decode_text([pasta_tok.vocab_size])
  with pytest.raises(ValueError, match='outside the vocabulary'):
    pasta_tok.decode([-1])
  with pytest.raises(KeyError, match='no piece'):
    pasta_tok.piece_to_id('<definitely not a piece>')
  with pytest.raises(TypeError):
    pasta_tok.encode_text(b'bytes')
