"""The compiled decode loop: no copy of a whole cache array in any round.

A round reads the cache (attention) and writes its new entries into it. Unless the
writes are ordered after the reads, XLA keeps the old entries readable by copying
every layer's K and V before updating them in place, twice per layer, every round
(docs/interpreter.md "Width", `cache.write_entries(after=...)`). Nothing in the
tokens shows it, so these tests read the optimized program: the rounds of each
decoder path (sequential; PASTA at the one width S, alone and with a GPU's rounds
per check; PASTA with the CPU's width branches) must hold no `copy` whose result has a cache
array's shape.
"""

import re

import pytest

from pasta_jax.interpreter import Interpreter, InterpreterConfig
from pasta_jax.models import cache as cache_lib
from tests.interpreter.conftest import prompt_ids

CACHE = 96


def _cache_copies(text: str, shapes) -> list[str]:
  """The copies in `text` (optimized HLO) whose result is f32 of one of `shapes`:
  `copy` instructions, and fusions XLA named for the copy they hold."""
  wanted = {'f32[' + ','.join(map(str, s)) + ']' for s in shapes}
  copies = []
  for line in text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%(\S+) = (f32\[[\d,]*\])\S* ([\w-]+)\(', line)
    if not match or match.group(2) not in wanted:
      continue
    name, opcode = match.group(1), match.group(3)
    if opcode == 'copy' or (opcode == 'fusion' and 'copy' in name):
      copies.append(line.strip()[:160])
  return copies


@pytest.mark.parametrize('mode,slots,widths,chunk', [
    ('sequential', 1, None, 1),
    ('pasta', 4, (4,), 1),
    ('pasta', 4, (4,), 4),  # a GPU's defaults: one width, 4 rounds per check
    ('pasta', 4, (1, 2, 4), 1),
])
def test_decode_rounds_copy_no_cache_array(tok, model, mode, slots, widths, chunk):
  config, params = model
  interp = Interpreter(config, params, tok, InterpreterConfig(
      mode=mode, slots=slots, cache_size=CACHE, max_steps=20, round_widths=widths,
      rounds_per_check=chunk))
  batch = interp.prepare([prompt_ids(tok, 'count from 3 to 9')])
  state = interp.prefill(batch, first_stage=True)
  text = interp._decode.lower(interp.params, state, batch.requests,
                              interp.hoisted_params()).compile().as_text()
  k_shape, v_shape, _ = cache_lib.layer_shapes(config, 1, CACHE)
  # The check can see a cache array: the loop carries them.
  assert f"f32[{','.join(map(str, k_shape))}]" in text
  assert _cache_copies(text, [k_shape, v_shape]) == []
