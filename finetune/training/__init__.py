"""Training: the training graph, the loop and evaluation."""
