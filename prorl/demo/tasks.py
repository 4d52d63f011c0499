"""Small generated tasks for the embedded default, in each environment's public task format.

Three domains, each scored by a gym environment (never by code here):
  - `math`: 2-3 digit additions, a MATH-style row (`problem`, `answer`), the answer in `\\boxed{}`;
  - `logic/spell_backward`: reasoning-gym entries (`question`, `answer`, `metadata`), partial credit per letter;
  - `ifeval`: IFEval-style rows (`key`, `prompt`, `instruction_id_list`, `kwargs`), reward = fraction followed.
Every row also carries a correct demonstration (`demo`), the text the SFT warm start imitates.
"""

from __future__ import annotations

import random
from typing import Any

MATH_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."

_WORDS = (
    "apple river stone cloud green light music paper table water window garden silver orange yellow purple "
    "summer winter spring forest ocean planet rocket castle dragon little happy quiet brave tiger eagle horse "
    "bread honey lemon candle pencil basket mirror ladder bridge island valley desert thunder shadow"
).split()


def _number(rng: random.Random, n_digits: int) -> int:
    return rng.randrange(10 ** (n_digits - 1), 10 ** n_digits)


def make_math(rng: random.Random, digits: tuple[int, int] = (2, 3)) -> dict[str, Any]:
    a, b = (_number(rng, rng.randint(*digits)) for _ in range(2))
    return {"problem": f"What is {a} + {b}?", "answer": str(a + b), "demo": f"\\boxed{{{a + b}}}"}


def make_spell_backward(seed: int, n: int, word_len: tuple[int, int] = (3, 5)) -> list[dict[str, Any]]:
    import reasoning_gym as rg

    ds = rg.create_dataset("spell_backward", seed=seed, size=n, min_word_len=word_len[0], max_word_len=word_len[1])
    rows = []
    for entry in ds:
        row = {"question": entry["question"], "answer": entry["answer"], "metadata": dict(entry["metadata"])}
        row["metadata"].pop("difficulty", None)
        row["demo"] = f"<answer>{entry['answer']}</answer>"
        rows.append(row)
    return rows


def make_ifeval(rng: random.Random, key: int) -> dict[str, Any]:
    """Name some words, with one or two verifiable constraints on the form of the answer."""
    n = rng.randint(2, 4)
    words = rng.sample(_WORDS, n + 2)
    kind = rng.choice(["bullets", "capital", "lowercase", "end"])
    if kind == "bullets":
        prompt = f"List {n} of these words as markdown bullet points: {', '.join(words)}."
        ids, kwargs = ["detectable_format:number_bullet_lists"], [{"num_bullets": n}]
        demo = "\n".join(f"* {w}" for w in words[:n])
    elif kind == "capital":
        prompt = f"Write {n} of these words: {', '.join(words)}. Your answer must be in all capital letters."
        ids, kwargs = ["change_case:english_capital"], [{}]
        demo = " ".join(w.upper() for w in words[:n])
    elif kind == "lowercase":
        prompt = f"Write {n} of these words in lowercase letters only: {', '.join(w.upper() for w in words)}."
        ids, kwargs = ["change_case:english_lowercase"], [{}]
        demo = " ".join(words[:n])
    else:
        end = rng.choice(_WORDS)
        prompt = f"Write {n} of these words: {', '.join(words)}. End your response with the exact phrase \"{end}\"."
        ids, kwargs = ["startend:end_checker"], [{"end_phrase": end}]
        demo = " ".join(words[:n] + [end])
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs, "demo": demo}


def tokenizer_corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Text the tiny tokenizer is trained on: generated tasks with their demonstrations, as chat turns."""
    from reasoning_gym.utils import SYSTEM_PROMPTS

    rng = random.Random(seed)
    texts = [SYSTEM_PROMPTS["default"], MATH_SUFFIX]
    for i in range(n):
        m = make_math(rng)
        texts.append(f"<|im_start|>user\n{m['problem']} {MATH_SUFFIX}<|im_end|>\n<|im_start|>assistant\n{m['demo']}")
        f = make_ifeval(rng, i)
        texts.append(f"<|im_start|>user\n{f['prompt']}<|im_end|>\n<|im_start|>assistant\n{f['demo']}")
    for s in make_spell_backward(seed, n):
        texts.append(f"<|im_start|>user\n{s['question']}<|im_end|>\n<|im_start|>assistant\n{s['demo']}")
    return texts
