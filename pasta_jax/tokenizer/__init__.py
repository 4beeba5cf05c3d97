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
  literals so they are spelled with ordinary pieces (`guard`). Ordinary text never
  encodes to a control id, whatever the model.

Exact round trips (`decode_text(encode_text(s)) == s`, `decode(encode(doc)) == doc`)
hold for every string when the model is `lossless`: no normalization character map,
no whitespace removal, byte-fallback pieces (Gemma's tokenizer and the models
trained here are lossless). The processor never adds a dummy prefix (it is switched
off in the model proto), so text segments encode independently and concatenate
exactly.

`tokenizer` holds `Tokenizer`, `pieces` the `ControlPieces`, `vocabulary` what is
read from the sentencepiece model, `guard` the text guard, `training` the trainer.
The package imports sentencepiece only when it needs it.
"""

from pasta_jax.tokenizer.pieces import DEFAULT_MAX_PROMISE_TOKENS, ControlPieces
from pasta_jax.tokenizer.tokenizer import PathLike, Tokenizer, sidecar_path
from pasta_jax.tokenizer.training import (BOS_ID, EOS_ID, PAD_ID, UNK_ID,
                                          train_tokenizer)

__all__ = [
    'BOS_ID', 'ControlPieces', 'DEFAULT_MAX_PROMISE_TOKENS', 'EOS_ID', 'PAD_ID',
    'PathLike', 'Tokenizer', 'UNK_ID', 'sidecar_path', 'train_tokenizer',
]
