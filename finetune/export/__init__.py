"""Export: freezing, optimising and converting the trained model, each format checked for parity."""
