"""Small generated tasks for the embedded default, one generator per domain, scored by the gym.

Three domains, each scored by a registered gym environment (never by code here):
  - `math`: small additions, a MATH-style row (`problem`, `answer`), the answer in `\\boxed{}`; binary reward;
  - `logic/spell_backward`: reasoning-gym entries (`question`, `answer`, `metadata`), the answer inside
    `<answer></answer>`; reasoning-gym's partial credit (fraction of letters in place);
  - `ifeval`: IFEval rows (`key`, `prompt`, `instruction_id_list`, `kwargs`) with two verifiable instructions each
    (bullet count or closing phrase, and a title or no commas); reward = fraction of the instructions followed.

`make_rows` turns them into the schema rows the trainer, `prorl.eval` and the SFT step read: `id`, `env`, `prompt`
(chat messages), `reference`, `metadata` (from the environment's own `task_from_dict`) and `demo`, a correct answer
that the SFT warm start imitates. Held-out rows are disjoint from training rows by content (addition pair, word,
prompt text), decided by a hash, so every seed evaluates on prompts no training run has seen.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

DOMAINS = ("math", "logic/spell_backward", "ifeval")
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

    max_operand: int = field(default=20, metadata={"help": "math: operands of the additions are in [0, max_operand]"})
    word_len: tuple[int, int] = field(default=(3, 4), metadata={"help": "spell_backward: word length range"})
    list_words: tuple[int, int] = field(default=(2, 3), metadata={"help": "ifeval: how many words to write"})

    def __post_init__(self):
        self.word_len, self.list_words = tuple(self.word_len), tuple(self.list_words)
        if self.max_operand < 2:
            raise ValueError(f"tasks.max_operand must be >= 2, got {self.max_operand}")
        for name in ("word_len", "list_words"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"tasks.{name} must be [low, high] with 1 <= low <= high, got {[lo, hi]}")


def is_heldout(key: str) -> bool:
    """Whether a content key (e.g. "7+12", a word, a prompt) belongs to the held-out split."""
    return zlib.crc32(key.encode()) % HELDOUT_BUCKETS == 0


# -- one generator per domain: (public row, demonstration, content key) --------------------------------------------
def gen_math(rng: random.Random, cfg: TaskConfig) -> tuple[dict, str, str]:
    a, b = rng.randint(0, cfg.max_operand), rng.randint(0, cfg.max_operand)
    return {"problem": f"What is {a} + {b}?", "answer": str(a + b)}, f"\\boxed{{{a + b}}}", f"{a}+{b}"


def gen_spell_backward(rng: random.Random, cfg: TaskConfig) -> tuple[dict, str, str]:
    words = _spell_words(cfg.word_len)
    word = words[rng.randrange(len(words))]
    # the entry reasoning-gym's spell_backward generates for this word (same question text and metadata)
    question = f"Spell this word backward (example: sun -> nus): {word}"
    entry = {"question": question, "answer": word[::-1],
             "metadata": {"source_dataset": "spell_backward", "word": word, "word_len": len(word)}}
    return entry, f"<answer>{word[::-1]}</answer>", word


_WORD_CACHE: dict[tuple[int, int], list[str]] = {}


def _spell_words(word_len: tuple[int, int]) -> list[str]:
    """reasoning-gym's spell_backward vocabulary, restricted to the length range."""
    if word_len not in _WORD_CACHE:
        import reasoning_gym as rg

        ds = rg.create_dataset("spell_backward", seed=0, size=1, min_word_len=word_len[0], max_word_len=word_len[1])
        _WORD_CACHE[word_len] = sorted({w for w in ds.words if w.isalpha() and w.islower()})
    return _WORD_CACHE[word_len]


def gen_ifeval(rng: random.Random, cfg: TaskConfig) -> tuple[dict, str, str]:
    # No letter-case instructions: IFEval's case checks also run language detection, which calls short word lists
    # non-English at random; a reward the model cannot control teaches nothing.
    n = rng.randint(*cfg.list_words)
    words = rng.sample(_WORDS, n + 2)
    ids, kwargs = [], []
    if rng.random() < 0.5:
        text = f"List {n} of these words as markdown bullet points: {', '.join(words)}."
        ids.append("detectable_format:number_bullet_lists"), kwargs.append({"num_bullets": n})
        body = "\n".join(f"* {w}" for w in words[:n])
    else:
        end = rng.choice(_END_PHRASES)
        text = f"Write {n} of these words: {', '.join(words)}. End your response with \"{end}\""
        ids.append("startend:end_checker"), kwargs.append({"end_phrase": end})
        body = " ".join(words[:n]) + " " + end
    if rng.random() < 0.5:  # a second instruction in every prompt: the reward is a fraction, not all-or-nothing
        text += " Start with a title in double angular brackets, like <<title>>."
        ids.append("detectable_format:title"), kwargs.append({})
        demo = f"<<{words[0].capitalize()}>>\n{body}"
    else:
        text += " Do not use any commas."
        ids.append("punctuation:no_comma"), kwargs.append({})
        demo = body
    return {"key": 0, "prompt": text, "instruction_id_list": ids, "kwargs": kwargs}, demo, text


GENERATORS: dict[str, Callable[[random.Random, TaskConfig], tuple[dict, str, str]]] = {
    "math": gen_math, "logic/spell_backward": gen_spell_backward, "ifeval": gen_ifeval,
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
        public, demo, key = gen(rng, cfg)
        if is_heldout(key) != (split == "heldout"):
            continue
        if env_id == "ifeval":
            public["key"] = len(rows)
        task = env.task_from_dict(public)
        prompt = task.prompt
        if env_id.startswith("logic/"):
            prompt = [{"role": "user", "content": f"{public['question']}\n{LOGIC_INSTRUCTION}"}]
        rows.append({"id": f"{env_id}/{split}/{seed}/{len(rows)}", "env": env_id, "prompt": prompt,
                     "reference": task.reference, "metadata": task.metadata, "demo": demo})
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
            public, demo, _ = gen(rng, cfg)
            question = public.get("problem") or public.get("question") or public.get("prompt")
            texts.append(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{demo}<|im_end|>")
    return texts
