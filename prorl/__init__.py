"""prorl: the ProRL recipe (prolonged RL with DAPO, KL and hard resets) as a verifiable-reward gym plus a thin
trainer on Hugging Face TRL."""

from prorl.envs import Env, Score, Task, list_envs, make, register, spec

__version__ = "0.1.0"

__all__ = ["Env", "Score", "Task", "list_envs", "make", "register", "spec", "__version__"]
