"""`tools/bench_model.py` times the step `anygpt-train` runs: the shipped `Trainer.jit_train_step` on a
device mesh (here the tests' 8 CPU devices), not a step of its own."""

from tools import bench_model


def test_bench_model_times_the_shipped_trainer_step(capsys):
  bench_model.main(["--config=tiny", "--batch=8", "--seq-len=32", "--steps=1", "--skip-torch", "--matmul-size=64"])
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if l.startswith("Trainer.train_step:"))
  # One warm-up call and one timed call advanced the Trainer's own state; the mesh spans every device.
  assert "(mesh {'data': 8, 'fsdp': 1, 'tensor': 1}, state at step 2)" in line, line
  assert float(line.split()[1]) > 0  # tokens/s
