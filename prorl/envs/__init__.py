"""The prorl environment gym: registry, base classes and the built-in verifiable-reward environments."""

from prorl.envs.base import STATUSES, UNSCORED_STATUSES, Env, EnvNotReady, Score, Task, split_think
from prorl.envs.registry import EnvSpec, add_provider, list_envs, make, register, reload_plugins, spec

# Built-in environments, imported on first `make` (one file per domain).
register("math", "prorl.envs.math:MathEnv", description="Competition math; binary reward via math-verify on the last \\boxed{}")
register("stem", "prorl.envs.stem:StemEnv", description="STEM questions: multiple choice (A-J) or free-form via math-verify; binary")
register("logic", "prorl.envs.logic:LogicMixEnv", description="A weighted mixture of reasoning-gym tasks; continuous reward")
register("code", "prorl.envs.code:CodeEnv", description="Python programs run in the sandbox; reward = fraction of tests passed")
register("ifeval", "prorl.envs.ifeval:IFEvalEnv", description="IFEval verifiable instructions; reward = fraction followed")


def _register_logic_tasks() -> None:
    from prorl.envs.logic import register_reasoning_gym_tasks

    register_reasoning_gym_tasks()


add_provider(_register_logic_tasks)

__all__ = [
    "STATUSES", "UNSCORED_STATUSES", "Env", "EnvNotReady", "EnvSpec", "Score", "Task", "list_envs", "make", "register",
    "reload_plugins", "spec", "split_think", "add_provider",
]
