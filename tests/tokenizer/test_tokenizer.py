"""Tokenizer: document round trips, the token layout, pickling, save/load, errors."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given

from pasta_jax import lang
from pasta_jax import tokenizer as tk
from pasta_jax import tokens
from tests.tokenizer.helpers import D, P, S, documents

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------
# Round trips (hypothesis).


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


# ----------------------------------------------------------------------------
# The token layout.


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


def test_dummy_prefix_is_switched_off(dummy_prefix_path):
  raw = spm.SentencePieceProcessor(model_file=dummy_prefix_path)
  # The raw processor is not segment-wise lossless: each segment gains a space.
  assert raw.decode(raw.encode('a') + raw.encode('b')) != 'ab'
  tok = tk.Tokenizer.from_pretrained(dummy_prefix_path)
  assert tok.decode_text(tok.encode_text('a') + tok.encode_text('b')) == 'ab'
  assert tok.lossless
  doc = D.of('x', P('y', 10, 'z'), ' w')
  assert tok.decode(tok.encode(doc)) == doc


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
# A frozen value: equal by model, pieces and quantum; the processor built lazily.


def test_equal_tokenizers_compare_and_hash_equal(pasta_path, gemma_path):
  a, b = tk.Tokenizer.load(pasta_path), tk.Tokenizer.load(pasta_path)
  assert a is not b and a == b and hash(a) == hash(b)
  a.encode_text('load the processor of one of them')
  assert a.is_loaded and not b.is_loaded and a == b and hash(a) == hash(b)
  renamed = tk.Tokenizer(a.model_proto, a.pieces, quantum=a.quantum, name='other')
  assert renamed == a and hash(renamed) == hash(a)  # the name is not part of equality
  gemma = tk.Tokenizer.from_pretrained(gemma_path)
  assert gemma != a and len({a, b, renamed, gemma}) == 2
  pieces = tk.ControlPieces.reserved(90, 5)
  assert (tk.Tokenizer(gemma.model_proto, pieces, quantum=5)
          != tk.Tokenizer(gemma.model_proto, pieces, quantum=10))
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.quantum = 5


def test_pickled_tokenizer_encodes_identically(any_tok):
  doc = D.of('a <unused0> \u2581 b ', P('<pasta:sync/>', 20, 'body <unused1>'), S(), 'end')
  texts = ['', '<unused0>x', 'x\u2581y', '😀 <pasta:len=10>', '<unused<unused2>>']
  ids = any_tok.encode(doc)  # the processor is loaded, and is not pickled
  clone = pickle.loads(pickle.dumps(any_tok))
  assert clone == any_tok and hash(clone) == hash(any_tok) and not clone.is_loaded
  np.testing.assert_array_equal(clone.encode(doc), ids)
  assert [clone.encode_text(t) for t in texts] == [any_tok.encode_text(t) for t in texts]
  assert clone.decode(ids) == doc


def test_processor_is_built_on_first_use(pasta_path, monkeypatch):
  built = []
  processor = spm.SentencePieceProcessor
  monkeypatch.setattr(spm, 'SentencePieceProcessor',
                      lambda **kw: built.append(kw) or processor(**kw))
  tok = tk.Tokenizer.load(pasta_path)
  assert tok.control.promise == 4 and tok.vocab_size > 300 and tok.lossless
  assert repr(tok) and hash(tok) and tok == tk.Tokenizer.load(pasta_path)
  assert not built and not tok.is_loaded
  ids = tok.encode_text('first use')
  assert tok.is_loaded and built == [{'model_proto': tok.model_proto}]
  assert tok.decode_text(ids) == 'first use' and len(built) == 1  # built once


def test_sidecar_format_is_unchanged(pasta_tok, tmp_path):
  path = tmp_path / 'pasta.model'
  pasta_tok.save(path)
  text = open(tk.sidecar_path(path), encoding='utf-8').read()
  settings_ = json.loads(text)
  assert list(settings_) == ['format', 'quantum', 'max_promise_tokens', 'pieces',
                             'model_sha256']
  assert settings_ == {'format': 'pasta_jax.tokenizer/1', 'quantum': 10,
                       'max_promise_tokens': 200, 'pieces': pasta_tok.pieces.to_json(),
                       'model_sha256': pasta_tok.sha256}
  assert text == json.dumps(settings_, indent=2, ensure_ascii=False) + '\n'
  assert path.read_bytes() == pasta_tok.model_proto


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
