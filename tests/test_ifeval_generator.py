"""Procedural IFEval-style tasks (`prorl/envs/ifeval/generator.py`): every instruction id is generated, with valid
kwargs the prompt states, compatible combinations, determinism per seed, and answers that follow the stated
instructions score 1."""

import random

import pytest

import prorl
from prorl.envs.ifeval import INSTRUCTIONS
from prorl.envs.ifeval.generator import CONFLICTS, DESCRIBE, GROUP, LANGUAGES, compatible, generate_task


def test_every_registered_instruction_has_a_description():
    assert set(DESCRIBE) == set(INSTRUCTIONS) == set(GROUP)


def test_generated_tasks_are_valid_compatible_and_state_their_kwargs():
    env = prorl.make("ifeval")
    rng, seen = random.Random(0), set()
    for _ in range(2000):
        row = generate_task(rng)
        task = env.task_from_dict(row)  # validates every kwarg against its checker
        ids = row["instruction_id_list"]
        assert 1 <= len(ids) <= 3 and task.prompt[0]["content"] == row["prompt"]
        for k, instruction_id in enumerate(ids):  # each one could have joined the others
            assert compatible(instruction_id, ids[:k] + ids[k + 1:]), ids
        for kwargs in row["kwargs"]:
            for name, value in kwargs.items():
                values = value if isinstance(value, list) else [LANGUAGES.get(value, value)]
                for v in values:
                    assert str(v) in row["prompt"], (name, v, row["prompt"])
        seen.update(ids)
    assert seen == set(INSTRUCTIONS)
    pairs = [set(generate_task(rng)["instruction_id_list"]) for _ in range(500)]
    assert not any({"detectable_format:json_format", "punctuation:no_comma"} <= ids for ids in pairs)
    assert frozenset(("combination:repeat_prompt", "startend:quotation")) in CONFLICTS


def test_generation_is_deterministic_and_bounded():
    assert generate_task(random.Random(7)) == generate_task(random.Random(7))
    assert generate_task(random.Random(7)) != generate_task(random.Random(8))
    rng = random.Random(1)
    assert all(len(generate_task(rng, (2, 2))["instruction_id_list"]) == 2 for _ in range(200))
    # before: a first pick that combines with few others (json_format: keywords only) stopped the draw short, so
    # (3, 3) gave 2 instructions in 9% of the tasks
    assert all(len(generate_task(rng, (3, 3))["instruction_id_list"]) == 3 for _ in range(500))
    assert len(prorl.make("ifeval", instructions=(6, 6)).sample_tasks(1, seed=0)[0].reference["kwargs"]) == 6
    with pytest.raises(ValueError, match="instructions must be"):
        prorl.make("ifeval", instructions=(0, 2))
    with pytest.raises(ValueError, match=r"most <= 6 \(one instruction per group\), got \(1, 7\)"):
        prorl.make("ifeval", instructions=(1, 7))
    env = prorl.make("ifeval", seed=5)
    first = env.reset()[0]
    # one check, made by the generator and by the env when it is made: before, generate_task said "instructions:
    # at most 6 compatible instructions fit ..." where make() said "most <= 6 (one instruction per group)", and a
    # non-integer count passed make() (int(1.5) is 1) or failed inside the draw
    for bad in ((1, 7), (0, 2), (3, 2), (1.5, 3), (True, 2), ("1", 3), (2,), None):
        message = r"^instructions must be \(fewest, most\) integers with 1 <= fewest <= most <= 6 "
        with pytest.raises(ValueError, match=message):
            generate_task(rng, bad)
        with pytest.raises(ValueError, match=message):
            prorl.make("ifeval", instructions=bad)
    assert env.reset(seed=5)[0] == first and env.reset(seed=5)[0] == prorl.make("ifeval").reset(seed=5)[0]
    assert len(env.sample_tasks(3, seed=0)) == 3


# Answers that follow one instruction, built from its kwargs: the description and the checker agree.
FOLLOW = {
    "punctuation:no_comma": lambda kw: "A calm bakery with warm bread and kind staff.",
    "detectable_format:title": lambda kw: "<<Bread and joy>>\nThe bakery is lovely.",
    "startend:end_checker": lambda kw: f"The bakery is lovely. {kw['end_phrase']}",
    "startend:quotation": lambda kw: '"The bakery is lovely."',
    "change_case:english_lowercase": lambda kw: "the bakery is lovely and the bread is warm.",
    "change_case:english_capital": lambda kw: "THE BAKERY IS LOVELY AND THE BREAD IS WARM.",
    "detectable_content:postscript": lambda kw: f"The bakery is lovely.\n\n{kw['postscript_marker']} Go early.",
    "detectable_content:number_placeholders": lambda kw: " ".join(f"[p{i}]" for i in range(kw["num_placeholders"])),
    "detectable_format:number_highlighted_sections": lambda kw: " ".join(["*part*"] * kw["num_highlights"]),
    "detectable_format:number_bullet_lists": lambda kw: "\n".join(f"* point {i}" for i in range(kw["num_bullets"])),
    "keywords:existence": lambda kw: "We met by the " + " and the ".join(kw["keywords"]) + ".",
    "keywords:forbidden_words": lambda kw: "A quiet bakery.",
    "combination:repeat_prompt": lambda kw: kw["prompt_to_repeat"] + " Here is my answer.",
    "detectable_format:multiple_sections": lambda kw: "\n".join(f"{kw['section_spliter']} {i + 1}\ntext"
                                                               for i in range(kw["num_sections"])),
    "length_constraints:number_paragraphs": lambda kw: "\n***\n".join(["A paragraph."] * kw["num_paragraphs"]),
}


def test_answers_that_follow_the_stated_instruction_score_one():
    env, rng, checked = prorl.make("ifeval"), random.Random(3), set()
    for _ in range(3000):
        row = generate_task(rng, (1, 1))
        (instruction_id,), (kwargs,) = row["instruction_id_list"], row["kwargs"]
        if instruction_id in FOLLOW:
            score = env.score(FOLLOW[instruction_id](kwargs), row)
            assert score.reward == 1.0, (instruction_id, kwargs, score)
            checked.add(instruction_id)
    assert checked == set(FOLLOW)
