"""logp of annotated responses: the training forward's target log-probs, summed per
example whatever the packing, and what the interpreter computes replaying them."""

import jax
import numpy as np
import pytest

from pasta_jax import models
from pasta_jax.data import pipeline
from pasta_jax.data import synthetic
from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.preference import logprobs
from pasta_jax.training import step as step_lib

from tests import fixtures
from tests.interpreter.conftest import forced_threads

# Long (training, subprocesses, compilation): CI runs it on the newest Python only.
pytestmark = pytest.mark.slow

_fast_compiles = pytest.fixture(scope='module', autouse=True)(fixtures.fast_compiles)

# (prompt, y+, y-): several threads, bodies of different lengths, sync points, an
# empty body, a response without promises.
HANDMADE = [
    ('spell owl and cat',
     ('two: <promise topic="a" tokens="10"/><async>a) o-w-l</async>'
      '<promise topic="b" tokens="10"/><async>b) c-a-t</async><sync/> done'),
     'a) o-w-l b) c-a-t done'),
    ('count 3 from 7',
     ('<promise topic="x" tokens="20"/><async>8 9</async><sync/>then '
      '<promise topic="y" tokens="0"/><async></async>10'),
     'answer: <promise topic="q" tokens="10"/><async>8 9 10</async>'),
]


@pytest.fixture(scope='module')
def tok():
  return fixtures.synthetic_tokenizer(300)


@pytest.fixture(scope='module')
def model(tok):
  config = models.get_config('tiny', vocab_size=tok.vocab_size)
  return config, models.init_params(config, jax.random.key(0))


@pytest.fixture(scope='module')
def pairs(tok):
  """Laid-out pairs: the handmade ones and synthetic (answer, another answer)."""
  examples = list(synthetic.generate('test', 2))
  triples = HANDMADE + [(e.prompt, e.annotated, examples[i - 1].annotated)
                        for i, e in enumerate(examples)]
  return [logprobs.layout_pair(*t, tok) for t in triples]


@pytest.fixture(scope='module')
def training_forward(tok, model, pairs):
  """Per response (y+ then y- of each pair): the sum of `step.target_log_probs`
  over the layout's targets, one response per row; and the rows' batch."""
  config, params = model
  lays = [lay for p in pairs for lay in (p.chosen, p.rejected)]
  batch = pipeline.pack([[lay] for lay in lays], max(map(len, lays)), tok.pad_id)
  net = models.Transformer(config)
  logp_BT, _ = jax.jit(lambda p, b: step_lib.target_log_probs(p, b, net))(params, batch)
  logp_BT = np.asarray(logp_BT, np.float64)
  sums = (logp_BT * batch['loss_weights']).sum(axis=1)
  counts = batch['loss_weights'].sum(axis=1)
  return sums.reshape(-1, 2), counts.reshape(-1, 2), batch


def test_training_forward_is_loss_sums(tok, model, pairs, training_forward):
  """target_log_probs is the stage-1 loss's own computation: -sum(logp) = loss."""
  config, params = model
  sums, counts, batch = training_forward
  net = models.Transformer(config)
  total, metrics = jax.jit(lambda p, b: step_lib.loss_sums(p, b, net))(params, batch)
  assert float(total) == pytest.approx(-sums.sum(), rel=1e-5)
  assert float(metrics['weight']) == counts.sum()
  assert float(metrics['async_weight']) > 0  # the documents have async targets
  # The layouts' target counts: every token of a response but END_ASYNC and EOS,
  # plus the last prompt token; nothing for the rest of the prompt.
  for pair, count in zip(pairs, counts):
    for lay, n in zip((pair.chosen, pair.rejected), count):
      response = lay.tokens[lay.prompt_length:]
      threads = len(np.unique(lay.thread[lay.prompt_length:]))
      assert n == len(response) - threads + 1  # each thread's last token: no target
      assert not lay.loss_weights[:lay.prompt_length - 1].any()


@pytest.mark.parametrize('batch_size,pairs_per_row', [(6, 1), (2, 3)])
def test_pair_logprobs_equal_the_training_forward_in_any_packing(
    tok, model, pairs, training_forward, batch_size, pairs_per_row):
  config, params = model
  sums, counts, _ = training_forward
  longest = max(map(len, pairs))
  packed = logprobs.pack_pairs(pairs, batch_size=batch_size, seq_len=pairs_per_row * longest,
                               pairs_per_row=pairs_per_row, pad_id=tok.pad_id)
  assert not packed.too_long
  held = np.concatenate([b['pair_index'][b['pair_index'] >= 0] for b in packed.batches])
  assert sorted(held) == list(range(len(pairs)))  # every pair exactly once
  if pairs_per_row > 1:
    assert max(((b['pair_index'] >= 0).sum(axis=1)).max() for b in packed.batches) > 1
  got = logprobs.reference_logprobs(params, packed.batches, packed.num_pairs,
                                    model_config=config)
  np.testing.assert_allclose(got['chosen'], sums[:, 0], rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(got['rejected'], sums[:, 1], rtol=1e-5, atol=1e-3)
  np.testing.assert_array_equal(got['chosen_targets'], counts[:, 0])
  np.testing.assert_array_equal(got['rejected_targets'], counts[:, 1])


def test_interpreter_replay_gives_the_same_logp(tok, model, pairs, training_forward):
  """Forcing each response through the interpreter's decode loop: the log-probs of
  the tokens it wrote, from the logits it recorded, add up to the same logp."""
  config, params = model
  sums, _, _ = training_forward
  interp = Interpreter(config, params, tok, InterpreterConfig(
      slots=2, max_threads=8, cache_size=512, max_steps=400, record_logits=True,
      round_widths=(2,)))
  lays = [lay for p in pairs for lay in (p.chosen, p.rejected)]
  prompts = [lay.tokens[:lay.prompt_length] for lay in lays]
  responses = [lay.tokens[lay.prompt_length:] for lay in lays]
  forced = np.stack([forced_threads(r, tok.control, interp.engine.num_thread_ids, width=400)
                     for r in responses])
  results = interp.generate_ids(prompts, forced=forced, batch_size=len(lays))
  replayed = []
  for response, result in zip(responses, results):
    assert result.status == 'done'
    assert list(result.ids) == response.tolist()
    written = np.array([token for _, _, token in result.timeline])
    logits = result.logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    replayed.append(np.take_along_axis(log_softmax, written[:, None], axis=1).sum())
  np.testing.assert_allclose(np.reshape(replayed, (-1, 2)), sums, rtol=1e-4, atol=1e-2)


def test_pack_pairs_fills_rows_in_order_and_leaves_out_long_pairs(pairs):
  sizes = [len(p) for p in pairs]
  seq_len = sorted(sizes)[-2]  # the longest pair cannot fit
  packed = logprobs.pack_pairs(pairs, batch_size=2, seq_len=seq_len, pairs_per_row=4,
                               pad_id=0)
  assert packed.too_long == (int(np.argmax(sizes)),)
  placed = []
  for batch in packed.batches:
    assert batch['tokens'].shape == (2, seq_len)
    for row, index in zip(batch['segment'], batch['pair_index']):
      index = index[index >= 0]
      placed += index.tolist()
      assert row.max(initial=0) == 2 * len(index)  # y+, y- of each pair
      assert (row > 0).sum() == sum(sizes[i] for i in index)
  assert sorted(placed) == [i for i in range(len(pairs)) if i not in packed.too_long]
  with pytest.raises(ValueError, match='pairs_per_row'):
    logprobs.pack_pairs(pairs, batch_size=2, seq_len=8, pairs_per_row=0, pad_id=0)
