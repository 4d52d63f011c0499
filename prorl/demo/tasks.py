"""Small generated tasks for the embedded default, one generator per domain, scored by the gym.

Three domains, each scored by a registered gym environment (never by code here):
  - `math`: how many numbers a list has, a MATH-style row (`problem`, `answer`), the answer in `\\boxed{}`; binary;
  - `logic/aiw`: reasoning-gym's "Alice in Wonderland" questions ("Sarah has 5 sisters and she also has 3 brothers.
    How many sisters does Sarah's brother have?"), entries (`question`, `answer`, `metadata`), the answer
    inside `<answer></answer>`; binary (reasoning-gym's scorer);
  - `ifeval`: IFEval rows (`key`, `prompt`, `instruction_id_list`, `kwargs`) with two verifiable instructions each
    (bullet count or closing phrase, and a title or no commas); reward = fraction of the instructions followed.

`make_rows` turns them into the schema rows the trainer, `prorl.eval` and the SFT step read: `id`, `env`, `prompt`
(chat messages), `reference`, `metadata` (from the environment's own `task_from_dict`), `demo`, a correct answer,
and `flawed_demo`, the answer of a weak teacher (see prorl.demo.sft). Held-out rows are disjoint from training rows
by content (the prompt's text), decided by a hash, so every seed evaluates on prompts no training run has seen.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

DOMAINS = ("math", "logic/aiw", "ifeval")
# reasoning-gym's default system prompt is ~75 tokens; a one-line instruction keeps the tiny model's CPU cost down.
LOGIC_INSTRUCTION = "Answer inside <answer></answer>."
HELDOUT_BUCKETS = 5  # one content key in 5 is held out

_WORDS = (
    "apple river stone cloud green light music paper table water window garden silver orange yellow purple "
    "summer winter spring forest ocean planet rocket castle dragon little happy quiet brave tiger eagle horse "
    "bread honey lemon candle pencil basket mirror ladder bridge island valley desert thunder shadow"
).split()
_END_PHRASES = ("The end.", "Thank you.", "That is all.")


@dataclass
class TaskConfig:
    """Sizes of the generated tasks (the `tasks:` section of datasets/tiny.yaml)."""

    count_length: tuple[int, int] = field(
        default=(3, 9), metadata={"help": "math: length of the list of digits to count"})
    aiw_types: tuple[str, ...] = field(
        default=("siblings",), metadata={"help": "logic/aiw: reasoning-gym task types (siblings, friends, "
                                                            "colleagues; a single name is a list of one)"})
    list_words: tuple[int, int] = field(default=(2, 5), metadata={"help": "ifeval: how many words to write"})

    def __post_init__(self):
        names = self.aiw_types
        if isinstance(names, str):  # `--set tasks.aiw_types=friends`: that one type, not its letters
            names = (names,)
        if not isinstance(names, (list, tuple)) or not names \
                or not all(isinstance(n, str) and n in ("siblings", "friends", "colleagues") for n in names):
            raise ValueError("tasks.aiw_types must be some of siblings, friends, colleagues; got "
                             f"{list(names) if isinstance(names, tuple) else names!r}")
        self.aiw_types = tuple(names)
        for name in ("count_length", "list_words"):
            pair = getattr(self, name)
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 \
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair) \
                    or not 1 <= pair[0] <= pair[1]:
                raise ValueError(f"tasks.{name} must be [low, high] with 1 <= low <= high, got "
                                 f"{list(pair) if isinstance(pair, tuple) else pair!r}")
            setattr(self, name, tuple(pair))


def is_heldout(key: str) -> bool:
    """Whether a content key (e.g. "7+12", a word, a prompt) belongs to the held-out split."""
    return zlib.crc32(key.encode()) % HELDOUT_BUCKETS == 0


# -- one generator per domain: (public row, demonstration, content key) --------------------------------------------
def gen_math(rng: random.Random, cfg: TaskConfig) -> tuple[dict, str, str, str]:
    numbers = [rng.randrange(10) for _ in range(rng.randint(*cfg.count_length))]
    n = len(numbers)
    problem = f"How many numbers are in this list: {', '.join(map(str, numbers))}?"
    slip = n + rng.choice([-1, 1])  # off by one
    return {"problem": problem, "answer": str(n)}, f"\\boxed{{{n}}}", f"\\boxed{{{slip}}}", problem


_AIW_POOL_SIZE = 50_000


def gen_aiw(rng: random.Random, cfg: TaskConfig) -> tuple[dict, str, str, str]:
    entry = _aiw_dataset(cfg.aiw_types)[rng.randrange(_AIW_POOL_SIZE)]
    meta = {k: v for k, v in entry["metadata"].items() if k != "difficulty"}
    row = {"question": entry["question"], "answer": entry["answer"], "metadata": meta}
    # the error the AIW paper found in large models: the asker forgets to count Alice herself
    slip = int(entry["answer"]) - 1
    return row, f"<answer>{entry['answer']}</answer>", f"<answer>{slip}</answer>", entry["question"]


_AIW_CACHE: dict[tuple[str, ...], Any] = {}


def _aiw_dataset(types: tuple[str, ...]):
    """reasoning-gym's "Alice in Wonderland" generator (entries are built lazily, on indexing)."""
    if types not in _AIW_CACHE:
        import reasoning_gym as rg
        from reasoning_gym.logic.aiw import TaskType

        _AIW_CACHE[types] = rg.create_dataset("aiw", seed=0, size=_AIW_POOL_SIZE,
                                              task_types=[TaskType(t) for t in types],
                                              task_type_weights=[1 / len(types)] * len(types))
    return _AIW_CACHE[types]


def gen_ifeval(rng: random.Random, cfg: TaskConfig) -> tuple[dict, str, str, str]:
    # No letter-case instructions: IFEval's case checks also run language detection, which calls short word lists
    # non-English at random; a reward the model cannot control teaches nothing.
    n = rng.randint(*cfg.list_words)
    words = rng.sample(_WORDS, n + 2)
    ids, kwargs = [], []
    if rng.random() < 0.5:
        text = f"List {n} of these words as markdown bullet points: {', '.join(words)}."
        ids.append("detectable_format:number_bullet_lists"), kwargs.append({"num_bullets": n})
        body = "\n".join(f"* {w}" for w in words[:n])
        slip = "\n".join(f"* {w}" for w in words[:n - 1])  # one bullet short
    else:
        end = rng.choice(_END_PHRASES)
        text = f"Write {n} of these words: {', '.join(words)}. End your response with \"{end}\""
        ids.append("startend:end_checker"), kwargs.append({"end_phrase": end})
        body = " ".join(words[:n]) + " " + end
        slip = " ".join(words[:n])  # the closing phrase forgotten
    if rng.random() < 0.5:  # a second instruction in every prompt: the reward is a fraction, not all-or-nothing
        text += " Start with a title in double angular brackets, like <<title>>."
        ids.append("detectable_format:title"), kwargs.append({})
        demo, slip = f"<<{words[0].capitalize()}>>\n{body}", f"<<{words[0].capitalize()}>>\n{slip}"
    else:
        text += " Do not use any commas."
        ids.append("punctuation:no_comma"), kwargs.append({})
        demo = body
    return {"key": 0, "prompt": text, "instruction_id_list": ids, "kwargs": kwargs}, demo, slip, text


# A generator returns (public row, correct demonstration, flawed demonstration, content key). The flawed one makes
# the mistake a weak teacher makes on that task; the SFT step can imitate such a teacher (sft.teacher_error).
GENERATORS: dict[str, Callable[[random.Random, TaskConfig], tuple[dict, str, str, str]]] = {
    "math": gen_math, "logic/aiw": gen_aiw, "ifeval": gen_ifeval,
}


def make_rows(env_id: str, n: int, seed: int, split: str, cfg: TaskConfig | None = None) -> list[dict[str, Any]]:
    """`n` schema rows of one domain from the `split` ("train" or "heldout") side of the content hash."""
    from prorl.envs import make

    if env_id not in GENERATORS:
        raise KeyError(f"no demo task generator for env {env_id!r} (have {sorted(GENERATORS)})")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    cfg = cfg or TaskConfig()
    env, gen = make(env_id), GENERATORS[env_id]
    rng = random.Random(f"{env_id}/{split}/{seed}")
    rows, tries = [], 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError(f"{env_id}: could not draw {n} {split} tasks (is the task space too small?)")
        public, demo, flawed, key = gen(rng, cfg)
        if is_heldout(key) != (split == "heldout"):
            continue
        if env_id == "ifeval":
            public["key"] = len(rows)
        task = env.task_from_dict(public)
        prompt = task.prompt
        if env_id.startswith("logic/"):
            prompt = [{"role": "user", "content": f"{public['question']}\n{LOGIC_INSTRUCTION}"}]
        rows.append({"id": f"{env_id}/{split}/{seed}/{len(rows)}", "env": env_id, "prompt": prompt,
                     "reference": task.reference, "metadata": task.metadata, "demo": demo,
                     "flawed_demo": flawed})
    return rows


def make_mixture(n_per_env: int, seed: int, split: str, cfg: TaskConfig | None = None,
                 envs: tuple[str, ...] = DOMAINS) -> list[dict[str, Any]]:
    """`n_per_env` rows of every domain, shuffled together."""
    rows = [r for env_id in envs for r in make_rows(env_id, n_per_env, seed, split, cfg)]
    random.Random(seed).shuffle(rows)
    return rows


def tokenizer_corpus(seed: int = 0, n: int = 300) -> list[str]:
    """Text the tiny tokenizer is trained on: generated tasks with their demonstrations, as chat turns."""
    from prorl.envs.math import PROMPT_SUFFIX
    from reasoning_gym.utils import SYSTEM_PROMPTS

    rng, cfg = random.Random(seed), TaskConfig()
    texts = [SYSTEM_PROMPTS["default"], PROMPT_SUFFIX, LOGIC_INSTRUCTION]
    for _ in range(n):
        for env_id, gen in GENERATORS.items():
            public, demo, _, _ = gen(rng, cfg)
            question = public.get("problem") or public.get("question") or public.get("prompt")
            texts.append(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{demo}<|im_end|>")
    return texts
