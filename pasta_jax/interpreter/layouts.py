"""The decode loop's weight layouts: weights a round reads transposed, hoisted out
of the loop as transposed copies (`InterpreterConfig.hoist_layouts`).

Each is a product that contracts the weight's minor axis (x @ W^T). XLA then
either copies the transposed weight every round or runs a transposed product;
both cost a visible share of a small model's decode step on CPU. `hoist`
transposes these once, before the loop, behind an optimization barrier; inside
the loop `unhoist` transposes them back, which XLA folds into the products (now
x @ W with W's contracted axis major).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Permutations = dict[str, tuple[int, ...]]


def permutations(width: int, *, hoist_layouts: bool,
                 transpose_gating_einsum: bool) -> Permutations:
  """Weights a model call at `width` tokens per request reads transposed:
  parameter name -> axis permutation (none unless `hoist_layouts`;
  `InterpreterConfig.for_backend` resolves its default).

  Gemma 2/3's MLP gating (`transpose_gating_einsum`) is hoisted for wide calls
  only: a one-token call reads it as stored (a matrix-vector product is as fast
  either way, and the transposed copy makes XLA:CPU copy it back).
  """
  if not hoist_layouts:
    return {}
  perms = {'input_embedding': (1, 0), 'q_einsum': (1, 0, 2), 'kv_einsum': (2, 0, 1, 3),
           'qkv_einsum': (2, 0, 1, 3)}
  if width > 1 and transpose_gating_einsum:  # (2, F, D) -> (2, D, F)
    perms['gating_einsum'] = (0, 2, 1)
  return perms


def hoist(params: Any, perms: Permutations,
          transpose: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None) -> Any:
  """`params` with the leaves named in `perms` transposed by their permutation;
  the other leaves are `params`' own arrays.

  `transpose(x, perm)` makes the copies; the default, for use inside a program,
  keeps XLA from folding the transpose back into the loop (`Interpreter`
  passes a jitted transpose and keeps the result between generations).
  """
  if transpose is None:
    transpose = lambda x, perm: jax.lax.optimization_barrier(jnp.transpose(x, perm))

  def transposed(path: tuple[Any, ...], x: jax.Array) -> jax.Array:
    perm = perms.get(getattr(path[-1], 'key', None))
    return x if perm is None else transpose(x, perm)
  return jax.tree_util.tree_map_with_path(transposed, params)


def unhoist(hoisted: Any, params: Any, perms: Permutations) -> Any:
  """The weights of a model call that reads the leaves named in `perms`
  transposed: those transposed back from `hoisted`, the rest `params`' own."""

  def unhoisted(path: tuple[Any, ...], x: jax.Array, original: jax.Array) -> jax.Array:
    perm = perms.get(getattr(path[-1], 'key', None))
    return original if perm is None else jnp.transpose(x, np.argsort(perm))
  return jax.tree_util.tree_map_with_path(unhoisted, hoisted, params)
