"""Training: optimizer and schedule, loss, train state, the train step and loop, metrics, evaluation."""
