"""Weights: where pretrained values come from (checkpoints, frozen graphs, .npz, the zoo, the demo) and the
restore plan."""
