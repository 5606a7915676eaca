"""Independent references shared by several test files (not tests themselves)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite.models import build_model, eager_rngs


def jaxpr_matmul_flops(jaxpr) -> int:
  """2·(batch)·(contracted)·(lhs free)·(rhs free) summed over every dot_general, recursively."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      assert len(lb) == len(rb), eqn  # batch dims pair up, or the count below is wrong
      total += 2 * (math.prod(lhs[i] for i in lb) * math.prod(lhs[i] for i in lc)
                    * math.prod(d for i, d in enumerate(lhs) if i not in (*lc, *lb))
                    * math.prod(d for i, d in enumerate(rhs) if i not in (*rc, *rb)))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += jaxpr_matmul_flops(sub)
  return total


def random_model(config, seed=0):
  """build_model(config) with numpy N(0, 1/prod(shape[:-1])) weights (no per-op XLA compiles)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(config, eager_rngs(0))))
  rng = np.random.default_rng(seed)
  fill = lambda x: jnp.asarray(rng.normal(size=x.shape) / math.sqrt(math.prod(x.shape[:-1])),
                               x.dtype)
  return nnx.merge(graphdef, jax.tree.map(fill, state))
