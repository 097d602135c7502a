"""Benchmark: what asynchronous checkpointing costs the training loop.

Trains the same model on the same batches with checkpointing off, with asynchronous saves every
`--save_every` steps and (for reference) with synchronous saves, in alternating blocks in one
process, and prints the mean step time of each side by side with the overhead ratio. Each save
holds everything a run's checkpoint holds: train state, data iterator state (a real tf.data
iterator), gin config and layout. The time to wait for the last save of a block is charged to
that block. Target (issue 5): asynchronous saving costs <= 5 % of the step time.

  python tools/bench_checkpoint.py --model demo --batch 8 --length 512 --blocks 2 --block_steps 20
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

import jax

from anygpt_jax.cli.flags import ArgumentParser


def build(model_name: str, batch: int, length: int, text_vocab_size: int):
  from anygpt_jax import partitioning
  from anygpt_jax.model import Transformer, get_config
  from anygpt_jax.training.optimizer import learning_rate_schedule, make_optimizer
  from anygpt_jax.training.train_state import TrainState, train_state_shardings
  from anygpt_jax.training.trainer import Trainer
  from anygpt_jax.vocabulary.layout import VocabularyLayout

  layout = VocabularyLayout(text_vocab_size=text_vocab_size)
  config = get_config(model_name).with_vocabulary(layout)
  model = Transformer(config)
  mesh = partitioning.create_mesh({"data": -1})
  rules = partitioning.logical_axis_rules()
  params, param_shardings = partitioning.init_params(model, jax.random.key(0), mesh, rules, (1, 8))
  lr = learning_rate_schedule(peak_learning_rate=1e-4, total_steps=10_000, warmup_steps=10)
  tx = make_optimizer(learning_rate=lr)
  shardings = train_state_shardings(tx, jax.eval_shape(lambda: params), param_shardings, mesh)
  state = TrainState.create(params, jax.jit(tx.init, out_shardings=shardings.opt_state)(params))
  trainer = Trainer(model, tx, lr, layout, mesh, partitioning.data_sharding(mesh),
                    lambda: partitioning.use_mesh(mesh, rules))
  return trainer, state, shardings, layout, config


def random_batches(batch: int, length: int, vocab: int, seed: int = 0):
  """A real tf.data iterator (its state is saved like the pipeline's) of random token batches."""
  import tensorflow as tf

  from anygpt_jax.training.input import DatasetIterator

  def make(i):
    tokens = tf.random.stateless_uniform([batch, length + 1], [seed, tf.cast(i, tf.int32)], 1, vocab, tf.int32)
    ones = tf.ones([batch, length], tf.int32)
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": ones, "decoder_segment_ids": ones,
            "decoder_positions": tf.broadcast_to(tf.range(length, dtype=tf.int32), [batch, length])}

  return DatasetIterator(tf.data.Dataset.range(10**9).map(make).prefetch(2))


def run_block(mode, steps, state, step_fn, iterator, trainer, checkpoints, save_every, first_step, layout):
  from anygpt_jax.training.input import to_global_batch

  times, blocking = [], []
  start = time.perf_counter()
  for i in range(steps):
    t = time.perf_counter()
    batch = to_global_batch(next(iterator), trainer.batch_sharding)
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics["loss"])
    step = first_step + i + 1
    if mode != "off" and step % save_every == 0:
      s = time.perf_counter()
      checkpoints[mode].save(step, state, {0: iterator}, "bench", layout, force=True)
      blocking.append(time.perf_counter() - s)
    times.append(time.perf_counter() - t)
  if mode != "off":
    checkpoints[mode].wait_until_finished()
  total = time.perf_counter() - start
  return state, total / steps, blocking


def main(argv=None) -> int:
  parser = ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="demo")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--text_vocab_size", type=int, default=1000)
  parser.add_argument("--save_every", type=int, default=10)
  parser.add_argument("--block_steps", type=int, default=10, help="steps per block (one save per block at 10)")
  parser.add_argument("--blocks", type=int, default=4, help="rounds of (off, async[, sync]) blocks")
  parser.add_argument("--sync", action="store_true", help="also measure synchronous saves")
  args = parser.parse_args(argv)

  from anygpt_jax.checkpoints import CheckpointConfig, Checkpoints

  trainer, state, shardings, layout, config = build(args.model, args.batch, args.length, args.text_vocab_size)
  step_fn = trainer.jit_train_step(shardings)
  iterator = random_batches(args.batch, args.length, layout.vocab_size)
  workdir = tempfile.mkdtemp(prefix="bench_checkpoint_")
  checkpoints = {
      "async": Checkpoints(f"{workdir}/async", CheckpointConfig(save_every_steps=args.save_every, keep_last=2)),
      "sync": Checkpoints(f"{workdir}/sync", CheckpointConfig(save_every_steps=args.save_every, keep_last=2,
                                                               async_save=False)),
  }
  state_mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  print(f"model {args.model}: {config.num_params() / 1e6:.1f}M parameters, checkpointed state {state_mb:.0f} MiB; "
        f"batch {args.batch} x {args.length}; {jax.device_count()} {jax.devices()[0].platform} device(s)")

  state, _, _ = run_block("off", 3, state, step_fn, iterator, trainer, checkpoints, args.save_every, 0, layout)
  modes = ["off", "async"] + (["sync"] if args.sync else [])
  results = {m: [] for m in modes}
  blocking = {m: [] for m in modes}
  step = 3
  for _ in range(args.blocks):
    for mode in modes:
      state, mean, waits = run_block(mode, args.block_steps, state, step_fn, iterator, trainer, checkpoints,
                                     args.save_every, step, layout)
      step += args.block_steps
      results[mode].append(mean)
      blocking[mode].extend(waits)
  for c in checkpoints.values():
    c.close()
  shutil.rmtree(workdir, ignore_errors=True)

  # Blocks run in adjacent pairs, so the ratio of each pair cancels slow drifts of a shared
  # machine's load; the median over pairs is the headline figure.
  off = statistics.mean(results["off"])
  print(f"\n{'saving':>10s} {'mean step (s)':>14s} {'vs off':>8s} {'median pair ratio':>18s}   per block")
  for mode in modes:
    mean = statistics.mean(results[mode])
    ratio = statistics.median(m / o for m, o in zip(results[mode], results["off"]))
    blocks = " ".join(f"{t:.3f}" for t in results[mode])
    print(f"{mode:>10s} {mean:14.3f} {mean / off:8.3f} {ratio:18.3f}   {blocks}")
  for mode in modes[1:]:
    if blocking[mode]:
      print(f"{mode} save(): the training loop waits {statistics.mean(blocking[mode]):.3f} s per save on average "
            f"({len(blocking[mode])} saves) = {100 * statistics.mean(blocking[mode]) / (args.save_every * off):.1f} % "
            f"of {args.save_every} steps")
  overhead = statistics.median(a / o for a, o in zip(results["async"], results["off"])) - 1
  print(f"\nasync save every {args.save_every} steps: overhead {100 * overhead:+.1f} % of the step time "
        f"(median of {args.blocks} paired blocks; target <= 5 %): {'met' if overhead <= 0.05 else 'NOT met'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
