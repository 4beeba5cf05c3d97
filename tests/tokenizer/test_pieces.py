"""ControlPieces: the readable and the reserved layouts, JSON, and their checks."""

import json

import pytest

from pasta_jax import tokenizer as tk


def test_pasta_pieces():
  pieces = tk.ControlPieces.pasta(30, 10)
  assert pieces.all == ('<pasta:promise>', '<pasta:async>', '</pasta:async>',
                        '<pasta:sync/>', '<pasta:len=0>', '<pasta:len=10>',
                        '<pasta:len=20>', '<pasta:len=30>')
  assert len(tk.ControlPieces.pasta().lengths) == tk.DEFAULT_MAX_PROMISE_TOKENS // 10 + 1


def test_reserved_pieces_and_roles():
  pieces = tk.ControlPieces.reserved(10, 5, first=3)
  assert pieces.all == tuple(f'<unused{i}>' for i in range(3, 10))
  assert list(pieces.roles(5)) == [
      ('PROMISE', '<unused3>'), ('ASYNC', '<unused4>'), ('END_ASYNC', '<unused5>'),
      ('SYNC', '<unused6>'), ('LEN_0 (0 tokens)', '<unused7>'),
      ('LEN_1 (5 tokens)', '<unused8>'), ('LEN_2 (10 tokens)', '<unused9>')]
  assert [role for role, _ in pieces.roles()][4:] == ['LEN_0', 'LEN_1', 'LEN_2']


def test_json_round_trip():
  pieces = tk.ControlPieces('a', 'b', 'c', 'd', ['e', 'f'])
  assert pieces.lengths == ('e', 'f')
  assert tk.ControlPieces.from_json(json.loads(json.dumps(pieces.to_json()))) == pieces


def test_invalid_pieces():
  with pytest.raises(ValueError, match='non-empty strings'):
    tk.ControlPieces('', 'b', 'c', 'd', ('e',))
  with pytest.raises(ValueError, match='at least one length piece'):
    tk.ControlPieces('a', 'b', 'c', 'd', ())
  with pytest.raises(ValueError, match="'a' is used twice: for PROMISE and for LEN_0"):
    tk.ControlPieces('a', 'b', 'c', 'd', ('a',))
  with pytest.raises(ValueError, match='multiple of the quantum 10, got 25'):
    tk.ControlPieces.pasta(25)
  with pytest.raises(ValueError, match='quantum must be >= 1'):
    tk.ControlPieces.reserved(10, 0)
