"""Training a sentencepiece model with the PASTA control symbols (`train_tokenizer`)."""

from __future__ import annotations

import io
import os
from typing import Any, Iterable, Iterator, Sequence

from pasta_jax import lang
from pasta_jax.tokenizer.pieces import DEFAULT_MAX_PROMISE_TOKENS, ControlPieces
from pasta_jax.tokenizer.tokenizer import PathLike, Tokenizer

# Gemma's special ids; the models trained here use the same.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

# Options that make encode -> decode exact and match Gemma's conventions.
_TRAINER_DEFAULTS = dict(
    normalization_rule_name='identity',
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    character_coverage=1.0,
    pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
    pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>', unk_piece='<unk>',
    num_threads=1,            # deterministic
    input_sentence_size=0,    # use every sentence: no sampling
    shuffle_input_sentence=False,
    minloglevel=2,
)
_RESERVED_OPTIONS = frozenset({'sentence_iterator', 'model_writer', 'input', 'model_prefix',
                               'control_symbols', 'vocab_size'})


def train_tokenizer(texts: Iterable[str], model_path: PathLike | None, *,
                    vocab_size: int = 1024,
                    max_promise_tokens: int = DEFAULT_MAX_PROMISE_TOKENS,
                    quantum: int = lang.DEFAULT_QUANTUM,
                    model_type: str = 'bpe',
                    user_defined_symbols: Sequence[str] = (),
                    hard_vocab_limit: bool = False,
                    max_sentence_length: int = 1 << 16,
                    seed: int = 0,
                    **trainer_options: Any) -> Tokenizer:
  """Trains a sentencepiece model with the PASTA control symbols.

  The control tokens are sentencepiece control symbols with readable pieces
  (`ControlPieces.pasta`): ids 4 .. 8 + max_promise_tokens / quantum, right after
  pad 0, eos 1, bos 2, unk 3. Training is in memory, single-threaded and
  deterministic for the same texts and options; the model is lossless (identity
  normalization, whitespace kept, no dummy prefix, byte fallback, digits split).

  Args:
    texts: the corpus, one sentence (any text, newlines included) per item; empty
      items are skipped. Items longer than max_sentence_length bytes are skipped
      by sentencepiece.
    model_path: where to `save` the tokenizer (model file plus JSON sidecar);
      None keeps it in memory only.
    vocab_size: the vocabulary size, including the 4 special pieces, the control
      pieces and the 256 byte pieces. With hard_vocab_limit=False (default) it is
      an upper bound: a small corpus may give fewer pieces.
    max_promise_tokens: the largest promised length (a multiple of quantum).
    quantum: the promised-length granularity.
    model_type: 'bpe' (like Gemma) or 'unigram'.
    user_defined_symbols: extra pieces matched literally in text (e.g. chat turn
      markers).
    seed: sentencepiece's random seed (a process-wide sentencepiece setting).
    **trainer_options: further SentencePieceTrainer options; they override the
      lossless defaults (check `Tokenizer.lossless` afterwards).
  """
  import sentencepiece  # pylint: disable=g-import-not-at-top
  pieces = ControlPieces.pasta(max_promise_tokens, quantum)
  reserved = _RESERVED_OPTIONS.intersection(trainer_options)
  if reserved:
    raise ValueError(f'train_tokenizer sets {sorted(reserved)} itself')
  clash = set(user_defined_symbols).intersection(pieces.all)
  if clash:
    raise ValueError(f'user_defined_symbols {sorted(clash)} clash with the PASTA '
                     'control pieces')
  minimum = 4 + len(pieces.all) + 256 + len(user_defined_symbols) + 1
  if vocab_size < minimum:
    raise ValueError(
        f'vocab_size={vocab_size} is too small: 4 special pieces, {len(pieces.all)} '
        f'PASTA control pieces (max_promise_tokens={max_promise_tokens}, '
        f'quantum={quantum}), 256 byte-fallback pieces and '
        f'{len(user_defined_symbols)} user-defined symbols already need {minimum - 1}')

  count = 0

  def sentences() -> Iterator[str]:
    nonlocal count
    for text in texts:
      if not isinstance(text, str):
        raise TypeError(f'train_tokenizer expects str texts, got {type(text).__name__}')
      if text:
        count += 1
        yield text

  options = dict(_TRAINER_DEFAULTS)
  options.update(model_type=model_type, hard_vocab_limit=hard_vocab_limit,
                 max_sentence_length=max_sentence_length)
  options.update(trainer_options)
  if user_defined_symbols:
    options['user_defined_symbols'] = list(user_defined_symbols)
  writer = io.BytesIO()
  sentencepiece.set_random_generator_seed(seed)
  iterator = sentences()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iterator, model_writer=writer, vocab_size=vocab_size,
        control_symbols=list(pieces.all), **options)
  except RuntimeError:
    if count == 0:
      raise ValueError('train_tokenizer got no non-empty texts') from None
    raise
  tokenizer = Tokenizer(writer.getvalue(), pieces, quantum=quantum,
                        name='' if model_path is None else os.fspath(model_path))
  if model_path is not None:
    tokenizer.save(model_path)
  return tokenizer
