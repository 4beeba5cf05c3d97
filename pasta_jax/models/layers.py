"""Base layers: parameterised einsum, RMSNorm, RoPE and soft-capping."""

from __future__ import annotations

import string
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = nn.initializers.Initializer

NORM_EPS = 1e-6


def fan_in_init(in_axis, out_axis, batch_axis=()) -> Initializer:
  """Truncated-normal init with variance 1 / fan_in (fan_in over `in_axis`)."""
  return nn.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal', in_axis=in_axis, out_axis=out_axis,
      batch_axis=batch_axis)


# Weights stored with their axes permuted: ((param name, permutation), ...), the
# permutation as jnp.transpose takes it (stored = transpose(canonical, perm)).
# A model given these reads those weights in that layout (`Einsum.perm`,
# `Embedder`); the decode loop uses it to read weights in the layout its
# products want instead of transposing them every step (interpreter/layouts.py).
Layouts = tuple[tuple[str, tuple[int, ...]], ...]


def layout_of(layouts: Layouts, name: str) -> tuple[int, ...] | None:
  """The permutation `layouts` gives param `name`, or None."""
  return dict(layouts).get(name)


def permuted_init(init: Initializer, perm: tuple[int, ...] | None) -> Initializer:
  """`init`, its result transposed by `perm` (shape given in the stored order)."""
  if perm is None:
    return init
  inverse = tuple(int(i) for i in np.argsort(perm))
  return lambda key, shape, dtype=jnp.float32: jnp.transpose(
      init(key, tuple(shape[i] for i in inverse), dtype), perm)


def permute_weight_letters(eqn: str, perm: tuple[int, ...] | None) -> str:
  """'xs,ws->out' with the weight's letters `ws` in the stored order of `perm`."""
  if perm is None:
    return eqn
  inputs, out = eqn.split('->')
  xs, ws = inputs.split(',')
  return f'{xs},{"".join(ws[i] for i in perm)}->{out}'


def _merge_contracted(eqn: str, x: jax.Array, w: jax.Array) -> tuple[str, jax.Array, jax.Array]:
  """An equation 'xs,ws->out' whose contracted letters end x's subscripts and
  begin w's in the same order (e.g. 'BTNH,NHD->BTD'), rewritten to contract one
  merged axis (reshapes, free in row-major layouts). jnp.einsum would contract
  the letters in an order of its own, and XLA then transposes the weight."""
  inputs, out = eqn.split('->')
  xs, ws = inputs.split(',')
  shared = ''.join(c for c in ws if c in xs and c not in out)
  n = len(shared)
  if n < 2 or not xs.endswith(shared) or not ws.startswith(shared):
    return eqn, x, w
  size = int(np.prod(w.shape[:n]))
  x = x.reshape(*x.shape[:len(xs) - n], size)
  w = w.reshape(size, *w.shape[n:])
  merged = next(c for c in string.ascii_letters if c not in eqn)
  return f'{xs[:-n]}{merged},{merged}{ws[n:]}->{out}', x, w


class Einsum(nn.Module):
  """A weight `w` of a fixed shape, contracted with the input by an equation.

  The weight carries logical axis names (`axes`, one per dimension) and is
  cast to `dtype` (the activation dtype) before the product. `shape`, `axes`,
  `init` and the equation name the weight's axes in their canonical order (the
  checkpoints'); with `perm` the weight is stored permuted (`Layouts`), and the
  product reads it so, with the same result.
  """

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: Initializer
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  perm: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
    perm = self.perm or tuple(range(len(self.shape)))
    w = self.param('w', nn.with_logical_partitioning(
        permuted_init(self.init, self.perm), tuple(self.axes[i] for i in perm)),
                   tuple(self.shape[i] for i in perm), jnp.dtype(self.param_dtype))
    eqn = permute_weight_letters(eqn, self.perm)
    eqn, x, w = _merge_contracted(eqn, x, w.astype(self.dtype))
    return jnp.einsum(eqn, x, w)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + 1e-6) * (1 + scale) over the last axis.

  Computed in float32 and returned in the input dtype; `scale` is stored as
  the offset from 1 (zeros at init), as in the Gemma checkpoints.
  """

  axis_name: str = 'embed'
  param_dtype: str = 'float32'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        'scale',
        nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                     (self.axis_name,)),
        (x.shape[-1],), jnp.dtype(self.param_dtype))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * jax.lax.rsqrt(var + NORM_EPS)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, *,
               base_frequency: float, scale_factor: float = 1.0) -> jax.Array:
  """Rotary embedding, rotate-half form: dims i and i + H/2 form a pair.

  The angle of pair i at position p is (p / scale_factor) * base^(-2i/H).
  Computed in float32, returned in the input dtype.
  """
  head_dim = x_BTNH.shape[-1]
  fraction = 2 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim
  timescale = jnp.asarray(base_frequency, jnp.float32) ** fraction
  positions = positions_BT.astype(jnp.float32) / scale_factor
  angles_BTh = positions[..., None] / timescale
  angles_BT1h = angles_BTh[..., None, :]
  sin, cos = jnp.sin(angles_BT1h), jnp.cos(angles_BT1h)
  first, second = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([first * cos - second * sin,
                         second * cos + first * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
  """cap * tanh(x / cap); identity when cap is None."""
  if cap is None:
    return x
  return cap * jnp.tanh(x / cap)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Logical sharding constraint (a no-op outside a mesh with axis rules)."""
  return nn.with_logical_constraint(x, tuple(axes))
