"""Training: optimizer and schedule, loss, train state, the train step, its assembly on a mesh, the loop,
metrics, evaluation, samples and ahead-of-time compilation."""
