"""The on-device PASTA interpreter: fixed-shape thread slots, one interleaved KV
cache, all threads decoded in lockstep inside one `lax.while_loop`.

    from pasta_jax.interpreter import Interpreter, InterpreterConfig
    results = Interpreter(model_config, params, tokenizer,
                          InterpreterConfig(slots=8)).generate(prompts)

`engine` holds the jittable core (prefill, step, generate) over `state.State`, `round`
one decode round, `threads` the fork/sync state machine, `record` forcing and the log
of samples, `forcing` the forcing rows of whole answers (host side), `layouts` the
decode loop's weight layouts, `grammar` the per-slot logit masks, `sampling` the
samplers, `api` the host-level API and `results` what it returns.
"""

from pasta_jax.interpreter.api import (Batch, Interpreter, PromptTooLongError, Result,
                                      ThreadSpan, Timing)
from pasta_jax.interpreter.config import InterpreterConfig

__all__ = ['Batch', 'Interpreter', 'InterpreterConfig', 'PromptTooLongError', 'Result',
           'ThreadSpan', 'Timing']
