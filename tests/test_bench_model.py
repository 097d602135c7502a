"""`tools/bench_model.py` times the step `anygpt-train` runs: the shipped `Trainer.jit_train_step` on a
device mesh, not a step of its own. One device and a 100-piece text vocabulary keep the compile
small; the figures it prints are not checked (no timing is asserted)."""

import pytest

from tools import bench_model


# Slow: compiling the Trainer's step costs about 10 s of CPU, over the fast suite's budget.
@pytest.mark.slow
def test_bench_model_times_the_shipped_trainer_step(capsys):
  bench_model.main(["--config=tiny", "--batch=2", "--seq_len=32", "--steps=1", "--skip_torch", "--matmul_size=64",
                    "--devices=1", "--text_vocab=100"])
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if l.startswith("Trainer.train_step:"))
  # One warm-up call and one timed call advanced the Trainer's own state, on the mesh asked for.
  assert "(mesh {'data': 1, 'fsdp': 1, 'tensor': 1}, state at step 2)" in line, line
  assert float(line.split()[1]) > 0  # tokens/s
