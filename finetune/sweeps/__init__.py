"""Sweeps: per-job ``status.json`` (:mod:`.status`), our Hydra launchers with resume and fail_fast
(:mod:`.launchers`, declared to Hydra in :mod:`.hydra_plugin`)."""
