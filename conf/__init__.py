"""The shipped configs. Installed as the package ``finetune.conf`` (see pyproject.toml), where Hydra
finds them as ``pkg://finetune.conf`` whether the project is installed from a wheel or editable."""
