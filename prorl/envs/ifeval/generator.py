"""Procedural IFEval-style tasks: a writing request plus 1-3 verifiable instructions, phrased like IFEval's own
instruction descriptions, with random kwargs. Lets `make("ifeval").reset()` draw training tasks without a dataset
(as reasoning-gym tasks do), in the row format of IFEval's `input_data.jsonl`:

    row = generate_task(random.Random(0))   # {"key", "prompt", "instruction_id_list", "kwargs"}

Every instruction id of the checker registry has a description here (a test checks both directions). At most one
instruction is drawn from each group below, so that no two instructions contradict each other (two answer layouts,
two endings, two letter cases, two length bounds); `json_format` and `constrained_response` fix the whole answer
and come alone or with a keyword instruction only.
"""

from __future__ import annotations

import numbers
import random
from typing import Any, Callable

REQUESTS = (
    "Write a short blog post about a weekend trip to the mountains.",
    "Write a product description for a reusable water bottle.",
    "Write a letter to a friend who just moved to a new city.",
    "Explain how a rainbow forms to a ten-year-old.",
    "Write a poem about the sea at night.",
    "Write a cover letter for a job as a barista.",
    "Describe the rules of chess for a beginner.",
    "Write a review of a small neighbourhood bakery.",
    "Give advice to a student preparing for a first exam.",
    "Write a story about a robot that learns to paint.",
    "Summarize the benefits of regular exercise.",
    "Write an email to a landlord asking to repair a broken heater.",
    "Describe a typical day of a lighthouse keeper.",
    "Write a speech for a school science fair opening.",
    "Explain why the sky is blue.",
    "Write a short biography of a fictional inventor.",
    "Write a pitch for a mobile app that helps people drink more water.",
    "Describe your favourite season and why you like it.",
    "Write a riddle about time and give its answer.",
    "Write a travel guide entry for an imaginary island.",
    "Explain how to plant a tomato seedling.",
    "Write a limerick about a cat who loves music.",
    "Write an announcement for a community garden opening.",
    "Compare trains and planes for a trip of 500 kilometres.",
)
WORDS = ("river", "lantern", "garden", "window", "coffee", "planet", "music", "bridge", "forest", "silver", "orange",
         "ticket", "pillow", "thunder", "market", "candle", "harbor", "rocket", "meadow", "puzzle")
END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Any other questions?")
LANGUAGES = {"de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese"}
RELATIONS = ("less than", "at least")

Describer = Callable[[random.Random, str], tuple[dict[str, Any], str]]
DESCRIBE: dict[str, Describer] = {}
GROUP: dict[str, str] = {}


def describes(instruction_id: str, group: str):
    def wrap(fn: Describer) -> Describer:
        DESCRIBE[instruction_id], GROUP[instruction_id] = fn, group
        return fn
    return wrap


@describes("keywords:existence", "keywords")
def _existence(rng, request):
    words = rng.sample(WORDS, 2)
    return {"keywords": words}, f"Include keywords {', '.join(words)} in the response."


@describes("keywords:frequency", "keywords")
def _frequency(rng, request):
    word, n, rel = rng.choice(WORDS), rng.randint(1, 4), rng.choice(RELATIONS)
    return ({"keyword": word, "frequency": n, "relation": rel},
            f"In your response, the word {word} should appear {rel} {n} times.")


@describes("keywords:forbidden_words", "keywords")
def _forbidden(rng, request):
    words = rng.sample(WORDS, 2)
    return {"forbidden_words": words}, f"Do not include keywords {', '.join(words)} in the response."


@describes("keywords:letter_frequency", "keywords")
def _letter(rng, request):
    rel = rng.choice(RELATIONS)  # a bound below: a rare letter; a bound above: a common one
    letter, n = (rng.choice("jkqvxz"), rng.randint(2, 5)) if rel == "less than" else (rng.choice("aeinorst"),
                                                                                       rng.randint(2, 10))
    return ({"letter": letter, "let_frequency": n, "let_relation": rel},
            f"In your response, the letter {letter} should appear {rel} {n} times.")


@describes("language:response_language", "case")
def _language(rng, request):
    code = rng.choice(sorted(LANGUAGES))
    return ({"language": code},
            f"Your ENTIRE response should be in {LANGUAGES[code]} language, no other language is allowed.")


@describes("change_case:capital_word_frequency", "case")
def _capital_words(rng, request):
    n, rel = rng.randint(1, 5), rng.choice(RELATIONS)
    return ({"capital_frequency": n, "capital_relation": rel},
            f"In your response, words with all capital letters should appear {rel} {n} times.")


@describes("length_constraints:number_sentences", "length")
def _sentences(rng, request):
    n, rel = rng.randint(2, 8), rng.choice(RELATIONS)
    return {"num_sentences": n, "relation": rel}, f"Your response should contain {rel} {n} sentences."


@describes("length_constraints:number_words", "length")
def _words(rng, request):
    n, rel = rng.choice((30, 50, 80, 100, 150)), rng.choice(RELATIONS)
    return {"num_words": n, "relation": rel}, f"Answer with {rel} {n} words."


@describes("length_constraints:number_paragraphs", "layout")
def _paragraphs(rng, request):
    n = rng.randint(2, 4)
    return {"num_paragraphs": n}, (f"There should be {n} paragraphs. Paragraphs are separated with the markdown "
                                   "divider: ***")


@describes("length_constraints:nth_paragraph_first_word", "layout")
def _nth_paragraph(rng, request):
    n = rng.randint(2, 4)
    nth, word = rng.randint(1, n), rng.choice(WORDS)
    return ({"num_paragraphs": n, "nth_paragraph": nth, "first_word": word},
            f"There should be {n} paragraphs. Paragraphs and only paragraphs are separated with each other by two "
            f"new lines. Paragraph {nth} must start with word {word}.")


@describes("detectable_format:multiple_sections", "layout")
def _sections(rng, request):
    splitter, n = rng.choice(("SECTION", "PART", "Section")), rng.randint(2, 4)
    return ({"section_spliter": splitter, "num_sections": n},
            f"Your response must have {n} sections. Mark the beginning of each section with {splitter} X, such as: "
            f"{splitter} 1.")


@describes("detectable_format:number_bullet_lists", "layout")
def _bullets(rng, request):
    n = rng.randint(2, 5)
    return {"num_bullets": n}, (f"Your answer must contain exactly {n} bullet points. Use the markdown bullet "
                                "points such as:\n* This is point 1.\n* This is point 2")


@describes("combination:repeat_prompt", "layout")
def _repeat(rng, request):
    return {"prompt_to_repeat": request}, (
        "First repeat the request word for word without change, then give your answer (1. do not say any words or "
        "characters before repeating the request; 2. the request you need to repeat does not include this sentence)")


@describes("startend:end_checker", "ending")
def _end(rng, request):
    phrase = rng.choice(END_PHRASES)
    return {"end_phrase": phrase}, (f"Finish your response with this exact phrase {phrase} No other words should "
                                    "follow this phrase.")


@describes("detectable_content:postscript", "ending")
def _postscript(rng, request):
    marker = rng.choice(("P.S.", "P.P.S"))
    return {"postscript_marker": marker}, (f"At the end of your response, please explicitly add a postscript "
                                           f"starting with {marker}")


@describes("detectable_content:number_placeholders", "content")
def _placeholders(rng, request):
    n = rng.randint(1, 3)
    return {"num_placeholders": n}, (f"The response must contain at least {n} placeholders represented by square "
                                     "brackets, such as [address].")


@describes("detectable_format:number_highlighted_sections", "content")
def _highlights(rng, request):
    n = rng.randint(1, 3)
    return {"num_highlights": n}, (f"Highlight at least {n} sections in your answer with markdown, i.e. "
                                   "*highlighted section*.")


# Instructions without kwargs: (group, description).
FIXED = {
    "change_case:english_capital": (
        "case", "Your entire response should be in English, and in all capital letters."),
    "change_case:english_lowercase": (
        "case", "Your entire response should be in English, and in all lowercase letters. No capital letters are "
                "allowed."),
    "combination:two_responses": (
        "layout", "Give two different responses. Responses and only responses should be separated by 6 asterisk "
                  "symbols: ******."),
    "detectable_format:json_format": (
        "whole", "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```."),
    "detectable_format:constrained_response": (
        "whole", "Answer with one of the following options: My answer is yes., My answer is no., My answer is "
                 "maybe."),
    "startend:quotation": ("ending", "Wrap your entire response with double quotation marks."),
    "detectable_format:title": (
        "content", "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."),
    "punctuation:no_comma": ("content", "In your entire response, refrain from the use of any commas."),
}
for _id, (_group, _text) in FIXED.items():
    describes(_id, _group)(lambda rng, request, text=_text: ({}, text))


# Pairs from different groups that still contradict: case-sensitive section markers under a letter case, a
# repeated (English, unquoted) request under a language or quotation marks, a first word after an opening quote.
CONFLICTS = {frozenset(pair) for pair in (
    ("detectable_format:multiple_sections", "change_case:english_capital"),
    ("detectable_format:multiple_sections", "change_case:english_lowercase"),
    ("detectable_format:multiple_sections", "change_case:capital_word_frequency"),
    ("combination:repeat_prompt", "startend:quotation"),
    ("combination:repeat_prompt", "language:response_language"),
    ("length_constraints:nth_paragraph_first_word", "startend:quotation"),
)}


def compatible(instruction_id: str, chosen: list[str]) -> bool:
    """Whether `instruction_id` can join `chosen`: a group not taken yet, "whole" only beside "keywords", no pair
    of CONFLICTS."""
    groups = {GROUP[i] for i in chosen}
    group = GROUP[instruction_id]
    if group in groups:
        return False
    together = groups | {group}
    if "whole" in together and together - {"whole", "keywords"}:
        return False
    return not any(frozenset((instruction_id, i)) in CONFLICTS for i in chosen)


MOST_INSTRUCTIONS = len(set(GROUP.values()) - {"whole"})  # one per group; "whole" combines with keywords only


def instruction_range(instructions: tuple[int, int]) -> tuple[int, int]:
    """`instructions` checked: (fewest, most) integers with 1 <= fewest <= most <= MOST_INSTRUCTIONS (at most one
    instruction per group fits in a task; more would never be drawn). The ifeval env checks it when it is made."""
    try:
        low, high = instructions
    except (TypeError, ValueError):
        low = high = None
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in (low, high)) \
            or not 1 <= low <= high <= MOST_INSTRUCTIONS:
        raise ValueError(f"instructions must be (fewest, most) integers with 1 <= fewest <= most <= "
                         f"{MOST_INSTRUCTIONS} (one instruction per group), got {instructions!r}")
    return int(low), int(high)


def generate_task(rng: random.Random, instructions: tuple[int, int] = (1, 3)) -> dict[str, Any]:
    """One IFEval-style row with between instructions[0] and instructions[1] compatible instructions."""
    low, high = instruction_range(instructions)
    request = rng.choice(REQUESTS)
    want = rng.randint(low, high)
    ids: list[str] = []
    while len(ids) < want:  # a first pick that combines with few others (json_format) can fall short: draw again
        ids = []
        for instruction_id in rng.sample(sorted(DESCRIBE), len(DESCRIBE)):
            if len(ids) == want:
                break
            if compatible(instruction_id, ids):
                ids.append(instruction_id)
    kwargs, texts = zip(*(DESCRIBE[i](rng, request) for i in ids))
    return {"key": f"gen-{rng.getrandbits(48):012x}", "prompt": " ".join((request, *texts)),
            "instruction_id_list": ids, "kwargs": list(kwargs)}
