"""Our launchers, where Hydra accepts launcher classes: the ``hydra_plugins`` namespace. pyproject.toml
installs this folder as ``hydra_plugins.finetune_sweeps``; conf/hydra/launcher/*.yaml name the classes
(``_target_``). What they do is :class:`finetune.sweeps.launchers.SweepLauncher`. Hydra imports this
module at every start, so it stays light: the plugins import joblib and submitit only when launching,
and a plugin that is not installed gets a stand-in that says how to install it.
"""
from hydra._internal.core_plugins.basic_launcher import BasicLauncher

from finetune.sweeps.launchers import SequentialSweepLauncher, SubmititSweepLauncher, SweepLauncher, missing_plugin

try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
except ImportError:
    JoblibLauncher = missing_plugin("local_parallel", "hydra-joblib-launcher")
try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit

    SubmititLocal, SubmititSlurm = _submitit.LocalLauncher, _submitit.SlurmLauncher
except ImportError:
    SubmititLocal = missing_plugin("local_submitit", "hydra-submitit-launcher")
    SubmititSlurm = missing_plugin("slurm", "hydra-submitit-launcher")


class LocalLauncher(SequentialSweepLauncher, BasicLauncher):
    """hydra/launcher=local: the jobs one after another in this process (Hydra's basic launcher)."""


class LocalParallelLauncher(SweepLauncher, JoblibLauncher):
    """hydra/launcher=local_parallel: n_jobs at a time in worker processes (joblib)."""


class SubmititLocalLauncher(SubmititSweepLauncher, SubmititLocal):
    """hydra/launcher=local_submitit: submitit on this machine, each job a process (tries the cluster path)."""


class SlurmLauncher(SubmititSweepLauncher, SubmititSlurm):
    """hydra/launcher=slurm: a SLURM job array through submitit."""


LAUNCHERS = (LocalLauncher, LocalParallelLauncher, SubmititLocalLauncher, SlurmLauncher)
