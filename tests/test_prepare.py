"""The README's main command on the tiny preset: data, tokenizer and layouts end to end."""

import io
import json
import subprocess
import sys

from pasta_jax import lang
from pasta_jax import prepare
from pasta_jax import tokenizer as tokenizer_lib
from configs import synth


def test_prepare_tiny(tmp_path):
  config = synth.get_config('tiny')
  config.data.data_dir = str(tmp_path / 'tfds')
  out = io.StringIO()
  summary = prepare.prepare(config, str(tmp_path / 'work'), out=out)
  text = out.getvalue()
  assert 'Every document survived encode -> decode' in text
  assert 'pasta_synth/tiny/1.2.0 (train 400, validation 40, test 40, preference 40)' in text
  assert '| test | reverse_join |' in text and 'thread 1' in text
  assert 'A packed training batch:' in text
  assert summary['train/sequential']['speedup_geomean'] == 1.0
  assert summary['train/reverse_join']['speedup_max'] > 1.5
  assert summary['train/list_ops']['promises'] > 1
  assert summary['test/mixed']['examples'] == 10
  tok = tokenizer_lib.Tokenizer.load(summary['_tokenizer'])
  doc = lang.parse('a) x <promise topic="a" tokens="10"/><async>a) y</async><sync/>z')
  assert tok.decode(tok.encode(doc)) == doc
  with open(tmp_path / 'work' / 'summary.json') as f:
    assert json.load(f) == summary


def test_a_document_the_tokenizer_changes_is_a_data_error(tmp_path, monkeypatch):
  import pytest
  from pasta_jax import errors
  train = tokenizer_lib.train_tokenizer

  def normalising(*args, **kwargs):  # a tokenizer whose decoding adds a space at the end
    tok = train(*args, **kwargs)
    decode = type(tok).decode
    monkeypatch.setattr(type(tok), 'decode', lambda self, ids: lang.parse(
        lang.serialize(decode(self, ids)) + ' '))
    return tok

  monkeypatch.setattr(tokenizer_lib, 'train_tokenizer', normalising)
  config = synth.get_config('tiny')
  config.data.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(errors.DataError, match=r"^train example \d+ does not survive encode -> "
                     r"decode \(the tokenizer normalises or cannot spell some of its text\): "
                     "prompt '"):
    prepare.prepare(config, str(tmp_path / 'work'), out=io.StringIO())


def test_prepare_cli_errors_without_flags():
  result = subprocess.run([sys.executable, '-m', 'pasta_jax.prepare'],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert '--config and --workdir are required' in result.stderr


def test_unknown_preset():
  import pytest
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    synth.get_config('huge')
