"""The on-device PASTA interpreter: fixed-shape thread slots, one interleaved KV
cache, all threads decoded in lockstep inside one `lax.while_loop`.

    from pasta_jax.interpreter import Interpreter, InterpreterConfig
    results = Interpreter(model_config, params, tokenizer,
                          InterpreterConfig(slots=8)).generate(prompts)

`engine` holds the jittable core (State, prefill, step, generate), `grammar` the
per-slot logit masks, `sampling` the samplers, `api` the host-level API.
"""

from pasta_jax.interpreter.api import Interpreter, Result, ThreadSpan, Timing
from pasta_jax.interpreter.config import InterpreterConfig

__all__ = ['Interpreter', 'InterpreterConfig', 'Result', 'ThreadSpan', 'Timing']
