r"""Interpreter benchmarks; prints Markdown tables (numbers go to docs/benchmarks.md).

  python scripts/bench_interpreter.py                      # small and base100m
  python scripts/bench_interpreter.py --presets tiny --tokens 64   # quick
  python scripts/bench_interpreter.py --presets small,base100m --slots 8 --runs 5

1. Round time against the number of active thread slots (1..S), random weights:
   the main thread plus k - 1 async threads that never finish (their `</async>`,
   EOS and new promises are banned with logit biases), 16 rounds per jitted call.
2. Sequential mode (S = 1) per-token time against a minimal hand-written greedy
   KV-cache loop of the same model (target <= 1.05x), and the PASTA interpreter
   (S = 8) with one active thread against sequential mode (target <= 1.10x).
   Each generates the same number of tokens after the same prefill, batch 1,
   compile time excluded, the minimum over interleaved runs, all in one process.
3. KV-cache entries of the interleaved shared cache against a design that copies
   the visible prefix into each branch, over the synthetic benchmark's reference
   annotations.
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from pasta_jax import benchmarking
from pasta_jax import cli
from pasta_jax import errors
from pasta_jax import layout
from pasta_jax import models
from pasta_jax.data import encoding
from pasta_jax.data import synthetic
from pasta_jax.interpreter import Interpreter, InterpreterConfig

_PRESETS = flags.DEFINE_list('presets', ['small', 'base100m'], 'Model presets to measure.')
_SLOTS = flags.DEFINE_integer('slots', 8, 'Thread slots of the active-slot table.')
_TOKENS = flags.DEFINE_integer('tokens', 128, 'Tokens per sequential-mode generation.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Interleaved timing runs (the minimum is kept).')


def bench_active_slots(config, params, tok, slots, runs, rounds=16):
  """Round time with k slots active, k = 1..slots."""
  icfg = InterpreterConfig(slots=slots, max_threads=slots, cache_size=64 + rounds * slots + 8,
                           max_steps=10_000)
  interp = Interpreter(config, params, tok, icfg, buckets=(64,))
  c = tok.control
  batch = interp.prepare([np.arange(3, 3 + 40, dtype=np.int32) % 300 + 30],
                         logit_bias=benchmarking.ban(c.async_close, c.eos, c.promise, c.sync))
  requests = batch.requests
  state0 = interp.prefill(batch)
  engine = interp.engine

  @jax.jit
  def run(params, hoisted, state):
    # As in Interpreter.generate: the loop reads the hoisted weight layouts,
    # made once outside it.
    return jax.lax.fori_loop(
        0, rounds, lambda _, st: engine.step(params, st, requests, hoisted=hoisted), state)

  states = {}
  for k in range(1, slots + 1):
    # k - 1 async threads forked at the end of the prompt.
    threads = np.arange(slots)
    active = (threads >= 1) & (threads < k)
    state = state0.replace(
        slot_thread=jnp.where(active, threads, state0.slot_thread)[None][0],
        slot_ready=(state0.slot_ready | active[None]).at[:, 0].set(True),
        slot_token=jnp.where(active, c.async_open, state0.slot_token),
        slot_pos=jnp.where(active, 41, state0.slot_pos),
        fork=state0.fork.at[:, 1:k].set(state0.clock[:, None]),
        n_threads=state0.n_threads + (k - 1), n_started=state0.n_started + (k - 1),
        in_topic=jnp.zeros_like(state0.in_topic))
    states[k] = state
  hoisted = interp.hoisted_params()

  def rounds_of(state):
    return lambda: jax.block_until_ready(run(interp.params, hoisted, state).out_len)

  # Every k in each pass (the first timing of a process runs slow on this VM).
  best = benchmarking.interleaved({k: rounds_of(state) for k, state in states.items()}, runs)
  return [(k, best[k] / rounds * 1e3, k * rounds / best[k]) for k in states]


def hand_written_greedy(config, params, prompt, tokens, cache_size):
  """The minimal KV-cache greedy decoder: prefill, then one token per step."""
  model = models.Transformer(config)
  p = len(prompt)

  @jax.jit
  def run(params):
    cache = models.init_cache(config, 1, cache_size)
    entries = jnp.arange(cache_size)
    mask = (entries[None, None, :] <= jnp.arange(p)[None, :, None])
    logits, cache = model.apply({'params': params}, prompt[None], jnp.arange(p)[None], mask,
                                cache=cache, cache_index=jnp.arange(p)[None],
                                logits_index=jnp.array([[p - 1]]))
    token = jnp.argmax(logits[0, -1])

    def body(i, carry):
      cache, token, out = carry
      pos = p + i
      logits, cache = model.apply(
          {'params': params}, token[None, None], pos[None, None],
          (entries <= pos)[None, None, :], cache=cache, cache_index=pos[None, None])
      out = out.at[i].set(token)
      return cache, jnp.argmax(logits[0, 0]), out

    _, _, out = jax.lax.fori_loop(0, tokens, body, (cache, token, jnp.zeros(tokens, jnp.int32)))
    return out

  return run


def bench_sequential(config, params, tok, tokens, runs):
  c = tok.control
  prompt = np.concatenate([[tok.bos_id], tok.encode_text('count from 3 to 9\n')]).astype(np.int32)
  cache_size = 32 + tokens + 8
  ban = benchmarking.ban(c.eos)
  seq = Interpreter(config, params, tok, InterpreterConfig(
      slots=1, mode='sequential', cache_size=cache_size, max_steps=tokens + 1), buckets=(32,))
  pasta = Interpreter(config, params, tok, InterpreterConfig(
      slots=8, max_threads=8, cache_size=cache_size, max_steps=tokens + 1), buckets=(32,))
  hand = hand_written_greedy(config, params, jnp.asarray(prompt), tokens, cache_size)

  def interp_fn(interp, bias):
    batch = interp.prepare([prompt], logit_bias=bias)
    return lambda: jax.block_until_ready(interp.generate_batch(batch).out_len)

  fns = {'hand': lambda: jax.block_until_ready(hand(params)),
         'seq': interp_fn(seq, ban),
         'pasta': interp_fn(pasta, {**ban, **benchmarking.ban(c.promise)})}
  t = benchmarking.interleaved(fns, runs)
  t_hand, t_seq, t_pasta = t['hand'], t['seq'], t['pasta']
  # The same tokens: the interpreter's sequential mode and the hand loop agree.
  hand_tokens = np.asarray(hand(params))
  seq_tokens = [t for _, _, t in seq.generate_ids([prompt], logit_bias=ban)[0].timeline]
  agree = bool(np.array_equal(hand_tokens, seq_tokens[:tokens]))
  return t_hand, t_seq, t_pasta, agree


def cache_entries(tok, count=500):
  """Cache entries (summed over the test split) of the shared interleaved cache
  and of a design where each thread holds a private copy of what it sees."""
  ours = copied = 0
  for example in synthetic.generate('test', count):
    enc = encoding.encode_example(example.prompt, example.annotated, tok)
    lay = layout.pasta_layout(enc.prompt, enc.response, tok.control)
    mask = lay.mask()
    ours += len(lay)
    for k in range(int(lay.thread.max()) + 1):
      last = np.flatnonzero(lay.thread == k)[-1]
      copied += int(mask[last].sum())  # everything the thread's last token sees
  return ours, copied


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = sorted(set(_PRESETS.value) - set(models.PRESETS))
  if unknown:
    raise errors.UsageError(f'--presets: unknown presets {unknown}; presets: '
                            f'{sorted(models.PRESETS)}')
  cli.check_positive(_TOKENS, _RUNS)
  cli.check_flag(_SLOTS, _SLOTS.value >= 2, 'an int >= 2')
  tok = benchmarking.synthetic_tokenizer()
  print(f'jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s)\n')
  for preset in _PRESETS.value:
    config = models.get_config(preset, vocab_size=max(tok.vocab_size, 512))
    params = models.init_params(config, jax.random.key(0))
    print(f'## {preset} ({models.count_params(config) / 1e6:.1f}M params)\n')
    print('| active slots | round (ms) | tokens/s | round / 1-slot round |')
    print('|---|---|---|---|')
    rows = bench_active_slots(config, params, tok, _SLOTS.value, _RUNS.value)
    for k, ms, tps in rows:
      print(f'| {k} | {ms:.2f} | {tps:.0f} | {ms / rows[0][1]:.2f} |')
    t_hand, t_seq, t_pasta, agree = bench_sequential(config, params, tok, _TOKENS.value,
                                                     _RUNS.value)
    n = _TOKENS.value
    print(f'\n| decoder ({n} tokens, batch 1, greedy) | ms / token | ratio |')
    print('|---|---|---|')
    print(f'| hand-written greedy KV-cache loop | {1e3 * t_hand / n:.3f} | 1.00 |')
    print(f'| interpreter, sequential mode (S=1) | {1e3 * t_seq / n:.3f} | '
          f'{t_seq / t_hand:.3f} vs hand loop (target <= 1.05) |')
    print(f'| interpreter, PASTA mode (S=8), one active thread | {1e3 * t_pasta / n:.3f} | '
          f'{t_pasta / t_seq:.3f} vs sequential mode (target <= 1.10) |')
    print(f'\nsequential mode and the hand loop wrote the same tokens: {agree}\n')
  ours, copied = cache_entries(tok)
  print('| KV-cache entries, synthetic test split (500 answers) | entries | ratio |')
  print('|---|---|---|')
  print(f'| one interleaved cache per request (pasta_jax) | {ours} | 1.00 |')
  print(f'| a private copy of the visible prefix per thread | {copied} | {copied / ours:.2f} |')


if __name__ == '__main__':
  cli.run(main)
