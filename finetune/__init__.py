"""finetune: configuration-driven finetuning of TensorFlow / TF-Slim models.

Importing the package imports nothing heavy: TensorFlow is loaded by the modules that build graphs,
so ``python -m finetune --help`` and configuration errors answer at once.
"""
