"""Replay equivalence: the interpreter's logits, forced through its real decode loop,
equal the training forward pass's logits for the same annotated document."""

import numpy as np
import pytest

from pasta_jax import lang
from pasta_jax import layout
from pasta_jax import masks
from pasta_jax import models
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.settings import PositionStrategy
from tests.interpreter.conftest import (DOCUMENTS, forced_threads, prompt_ids,
                                        synthetic_documents)


def training_logits(model_config, params, lay):
  meta = masks.AttentionMeta(*(a[None] for a in lay.meta()))
  logits, _ = models.Transformer(model_config).apply(
      {'params': params}, lay.tokens[None], lay.positions[None], (meta, meta))
  return np.asarray(logits[0])


@pytest.mark.parametrize('slots,widths', [(2, None), (8, None), (8, (8,))],
                         ids=['2-slots', '8-slots', '8-slots-every-round-full'])
def test_forced_decoding_reproduces_training_logits(tok, model, slots, widths):
  """Rounds at the narrowest width that fits (the CPU default) and rounds that
  always run every slot (the accelerator default) give the training logits."""
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=slots, max_threads=8, cache_size=448, max_steps=600, record_logits=True,
      round_widths=widths))
  assert interp.engine.widths == (widths or ((1, 2) if slots == 2 else (1, 2, 4, 8)))
  documents = DOCUMENTS + synthetic_documents(3)
  prompts, responses, forced = [], [], []
  for i, text in enumerate(documents):
    doc = lang.parse(text, quantum=1).quantized(10, 100)
    responses.append(tok.encode(doc))
    prompts.append(prompt_ids(tok, f'prompt number {i}'))
    forced.append(forced_threads(responses[-1], tok.control, 9))
  results = interp.generate_ids(prompts, forced=np.stack(forced))
  assert interp.compilations == 1
  for prompt, response, result in zip(prompts, responses, results):
    assert result.status == 'done'
    assert list(result.ids) == response.tolist()  # the training layout, exactly
    lay = layout.pasta_layout(prompt, response, tok.control)
    expected = training_logits(config, params, lay)
    threads = np.array([thread for _, thread, _ in result.timeline])
    for k in range(int(lay.thread.max()) + 1):
      # Thread k's sampled tokens are the targets of its positions, in order.
      where = np.flatnonzero((lay.thread == k) & (lay.loss_weights > 0))
      np.testing.assert_array_equal(
          [t for _, th, t in result.timeline if th == k], lay.targets[where])
      np.testing.assert_allclose(result.logits[threads == k], expected[where],
                                 rtol=1e-4, atol=1e-4)
    # The rounds are those of the ideal schedule of layout.decode_steps.
    assert result.steps == layout.decode_steps(response, tok.control, slots=slots)


def test_fixed_position_strategy_replays_too(tok, model):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=3, max_threads=8, cache_size=256, max_steps=200, record_logits=True,
      position_strategy=PositionStrategy('fixed', 5)))
  response = tok.encode(lang.parse(DOCUMENTS[0]))
  prompt = prompt_ids(tok, 'fixed')
  result = interp.generate_ids([prompt], forced=forced_threads(response, tok.control, 9)[None])[0]
  lay = layout.pasta_layout(prompt, response, tok.control,
                            position_strategy=PositionStrategy('fixed', 5))
  expected = training_logits(config, params, lay)
  threads = np.array([thread for _, thread, _ in result.timeline])
  for k in range(int(lay.thread.max()) + 1):
    where = np.flatnonzero((lay.thread == k) & (lay.loss_weights > 0))
    np.testing.assert_allclose(result.logits[threads == k], expected[where],
                               rtol=1e-4, atol=1e-4)
