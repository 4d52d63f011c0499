"""IFEval (Zhou et al. 2023) as a prorl environment: the 25 verifiable instruction types of the official checker,
offline and deterministic (NLTK Punkt English model from a PyPI package, seeded langdetect).

    env = prorl.make("ifeval")                     # strict; make("ifeval", mode="loose", all_or_nothing=True)
    env.score(completion, {"key": 1, "prompt": ..., "instruction_id_list": [...], "kwargs": [...]})

`prorl eval-ifeval RESPONSES.jsonl --input-data input_data.jsonl` prints the four official figures.
"""

from prorl.envs.ifeval import checks_format, checks_length, checks_words  # noqa: F401  (register the checkers)
from prorl.envs.ifeval.checker import INSTRUCTIONS, Checker, InstructionError, build_checkers
from prorl.envs.ifeval.env import MODES, IFEvalEnv, check_all, loose_variants

__all__ = ["INSTRUCTIONS", "MODES", "Checker", "IFEvalEnv", "InstructionError", "build_checkers", "check_all",
           "loose_variants"]
