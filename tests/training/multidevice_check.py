"""Training on 8 faked CPU devices (run by test_multidevice.py in a fresh process).

  python tests/training/multidevice_check.py step TFDS_DIR
      One train step on mesh (data, fsdp, tensor) = (2, 2, 2) equals the same step
      on one device (params, optimizer state and metrics); the sharded init equals
      the single-device init; optimizer moments are sharded like their params.
  python tests/training/multidevice_check.py resume TFDS_DIR WORKDIR
      Resumes the 1-device run in WORKDIR on the 8-device mesh and finishes it.
  python tests/training/multidevice_check.py load WORKDIR OUT.npz
      load_run onto the 8-device mesh; writes the params for the parent to compare.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pasta_jax import config as config_lib  # noqa: E402
from pasta_jax import runs  # noqa: E402
from pasta_jax.data import sources as sources_lib  # noqa: E402
from pasta_jax.models import checkpoint as model_checkpoint  # noqa: E402
from pasta_jax.training import inputs  # noqa: E402
from pasta_jax.training import loop  # noqa: E402
from pasta_jax.training import partitioning  # noqa: E402
from pasta_jax.training import state as state_lib  # noqa: E402
from pasta_jax.training import step as step_lib  # noqa: E402

from tests.training.conftest import RESUMABLE  # noqa: E402
from tests.training.conftest import tiny_config  # noqa: E402

jax.config.update('jax_disable_most_optimizations', True)


def _one_step(config, tok, batch, devices):
  model_config = config_lib.model_config(config, tok.vocab_size)
  mesh = partitioning.make_mesh(config.mesh.shape, devices=devices)
  rules = config_lib.rules_for(model_config, mesh, config.mesh.rules)
  optimizer, schedule = state_lib.make_optimizer(config.optimizer, config.train.num_steps)
  shardings = state_lib.state_shardings(model_config, optimizer, mesh, rules)
  state = state_lib.init_state(model_config, optimizer, jax.random.key(0), shardings)
  init = jax.device_get(state)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  train, _ = step_lib.jit_steps(model_config=model_config, optimizer=optimizer,
                                schedule=schedule, grad_accum_steps=1,
                                state_shardings=shardings, batch_sharding=batch_sharding)
  with step_lib.sharded(mesh, rules):
    # Two steps: the second runs Adam on non-zero moments.
    state, _ = train(state, partitioning.global_batch(batch, batch_sharding))
    state, metrics = train(state, partitioning.global_batch(batch, batch_sharding))
  return init, state, metrics


def check_step(tfds_dir):
  assert jax.device_count() == 8
  config = config_lib.resolve(tiny_config(tfds_dir))
  # A large eps keeps Adam's update proportional to the gradient (with 1e-8 it is
  # about lr * sign(g), which float noise flips where g is ~0).
  config.optimizer.eps = 1e-3
  # One tensor-axis split of everything in the tiny model: 4 heads, 2 kv heads.
  source = sources_lib.data_sources(config.data, ['train'])['train']
  tok = sources_lib.make_tokenizer(config, source)
  batch = next(inputs.batches(config, source, tok, rows=8, train=True, process_index=0,
                              process_count=1))
  one_init, one, one_metrics = _one_step(config, tok, batch, jax.devices()[:1])
  with config.unlocked():
    config.mesh.shape = (2, 2, 2)
  init, state, metrics = _one_step(config, tok, batch, jax.devices())

  q = state.params['layer_0']['attn']['q_einsum']['w']
  assert q.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp', None), q.sharding
  adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw = (adam, decay, lr)
  mu_q = adam.mu['layer_0']['attn']['q_einsum']['w']
  assert mu_q.sharding.is_equivalent_to(q.sharding, 3), mu_q.sharding
  assert state.step.sharding.is_fully_replicated
  # The same random bits, but two programs (one device, and 8 devices with sharded
  # outputs) turn them into floats: equal to float rounding.
  for x, y in zip(jax.tree.leaves(init), jax.tree.leaves(one_init)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0],
                          jax.tree.leaves(jax.device_get(one))):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6, err_msg=str(path))
  metrics, one_metrics = jax.device_get((metrics, one_metrics))
  for key in one_metrics:
    np.testing.assert_allclose(metrics[key], one_metrics[key], rtol=2e-5, err_msg=key)
  moved = np.abs(jax.device_get(one.params['final_norm']['scale']) -
                 one_init.params['final_norm']['scale']).max()
  assert moved > 1e-4, moved  # the step did change the params
  print('sharded step == single-device step')


def resume(tfds_dir, workdir):
  assert jax.device_count() == 8
  config = tiny_config(tfds_dir, **RESUMABLE)
  with config.ignore_type():
    config.mesh.shape = (2, 2, 2)
  result = loop.train_and_evaluate(config, workdir)
  assert result.step == 10
  assert result.state.params['embedder']['input_embedding'].sharding.spec == \
      jax.sharding.PartitionSpec('tensor', 'fsdp')
  print('resumed on 8 devices')


def load(workdir, out):
  mesh = partitioning.make_mesh((2, 2, 2))
  run = runs.load_run(workdir, mesh=mesh)
  embedding = run.params['embedder']['input_embedding']
  assert embedding.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp'), \
      embedding.sharding
  flat = model_checkpoint.flatten(jax.device_get(run.params))
  np.savez(out, **flat)
  print('loaded onto 8 devices')


if __name__ == '__main__':
  mode, *args = sys.argv[1:]
  {'step': check_step, 'resume': resume, 'load': load}[mode](*args)
