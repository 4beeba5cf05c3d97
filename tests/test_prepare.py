"""The README's main command on the tiny preset: data, tokenizer and layouts end to end."""

import io
import json
import os
import subprocess
import sys

from pasta_jax import lang
from pasta_jax import prepare
from pasta_jax import tokenizer as tokenizer_lib
from configs import synth


def test_prepare_tiny(tmp_path):
  config = synth.get_config('tiny')
  out = io.StringIO()
  summary = prepare.prepare(config, str(tmp_path), out=out)
  text = out.getvalue()
  assert 'Every document survived encode -> decode' in text
  assert '| test | reverse_join |' in text and 'thread 1' in text
  assert summary['train/sequential']['speedup_geomean'] == 1.0
  assert summary['train/reverse_join']['speedup_max'] > 1.5
  assert summary['train/list_ops']['promises'] > 1
  tok = tokenizer_lib.Tokenizer.load(os.path.join(tmp_path, 'tokenizer.model'))
  with open(os.path.join(tmp_path, 'data', 'test.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == config.data.num_test
  for row in rows:
    doc = lang.parse(row['annotated_response'])
    assert lang.strip(doc) == row['plain_response']
    assert tok.decode(tok.encode(doc)) == doc
  assert json.load(open(os.path.join(tmp_path, 'summary.json'))) == summary


def test_prepare_cli_errors_without_flags():
  result = subprocess.run([sys.executable, '-m', 'pasta_jax.prepare'],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert '--config and --workdir are required' in result.stderr


def test_unknown_preset():
  import pytest
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    synth.get_config('huge')
