"""The STEM environment: multiple choice (list/dict options, letter/index/text golds, final-letter extraction)
and free-form answers graded like math."""

import pytest

from prorl.envs import make
from prorl.envs.stem import extract_choice, gold_letter, normalize_options

MC = {"question": "Which is a noble gas?", "options": ["Oxygen", "Neon", "Iron", "Sodium"], "answer": "B"}


@pytest.mark.parametrize("completion, letter", [
    ("Neon has a full shell.\nAnswer: B", "B"),
    ("So the answer is (B).", "B"),
    (r"\boxed{B}", "B"),
    (r"\boxed{\text{(B)}}", "B"),
    ("The answer is: **B**", "B"),
    ("The answer is Option D", "D"),
    ("(A) is wrong because ..., but (B) fits", "B"),
    ("Answer: A ... wait, Answer: B", "B"),
    ("the answer is a noble gas", None),
    ("I cannot tell", None),
    (r"so \boxed{c}", "C"),  # a lone lower-case letter in a box
    (r"\boxed{a prime}", None),  # not a letter
    ("Answer: I think it's C", None),  # the pronoun is not option I
    ("Answer: I'm not sure", None),
    ("Answer: I", "I"),
    ("Answer: (I) fits", "I"),
])
def test_extract_choice(completion, letter):
    assert extract_choice(completion) == letter


def test_an_option_named_by_its_text():
    opts = {"A": "Oxygen", "B": "Neon", "C": "Iron"}
    assert extract_choice("Answer: Neon", opts) == "B"
    assert extract_choice(r"\boxed{\text{neon}}", opts) == "B"
    assert extract_choice("Answer: Argon", opts) is None
    assert make("stem").score("The answer is: Neon.", MC).status == "ok"


def test_option_texts_and_letters_outside_the_options():
    physics = {"A": "E = mc^2", "B": "p = mv", "C": "F = ma", "D": "W = Fd"}
    assert extract_choice(r"\boxed{F = ma}", physics) == "C"  # an option's text, not option F
    assert extract_choice("Answer: F = ma", physics) == "C"
    assert extract_choice("Answer: F", physics) is None  # F is not an option here
    force = {"A": "2 N", "B": "5 N", "C": "A force of 10 N", "D": "0 N"}
    assert extract_choice("Answer: A force of 10 N", force) == "C"
    assert extract_choice("\\boxed{30\\ \\mathrm{m/s}}\n\nAnswer: C", physics) == "C"  # the box names no option
    listing = "(A) is wrong. (B) is correct. (C) and (D) are wrong.\nSo the correct choice is B."
    assert extract_choice(listing, physics) is None  # the options it listed are not its choice
    assert extract_choice(listing.replace("is B.", "is (B)."), physics) == "B"


def test_multiple_choice_scoring():
    env = make("stem")
    assert env.score("Answer: B", MC).status == "ok"
    assert env.score("Answer: C", MC).status == "wrong"
    s = env.score("I think it is the second one.", MC)
    assert (s.status, s.reward) == ("format_error", 0.0)
    assert env.score("<think>Answer: A</think>Answer: B", MC).status == "ok"
    assert env.score("I'd say Sodium.", MC).status == "format_error"
    task = env.task_from_dict(MC)
    text = task.prompt[0]["content"]
    assert "A. Oxygen" in text and "D. Sodium" in text and "Answer: X" in text
    assert task.reference == {"answer": "B", "options": {"A": "Oxygen", "B": "Neon", "C": "Iron", "D": "Sodium"}}


def test_option_and_gold_formats():
    opts = normalize_options({"b": "y", "a": "x"})
    assert opts == {"A": "x", "B": "y"}
    assert normalize_options([str(i) for i in range(10)])["J"] == "9"
    assert gold_letter(1, opts) == "B" and gold_letter("(a)", opts) == "A" and gold_letter("y", opts) == "B"
    with pytest.raises(ValueError):
        normalize_options(["only one"])
    with pytest.raises(ValueError):
        normalize_options({"K": "x", "A": "y"})
    with pytest.raises(ValueError):
        gold_letter("E", opts)
    env = make("stem")
    assert env.score("Answer: E", {**MC, "answer": "E"}).status == "format_error"  # a bad task, not the model
    assert "bad task" in env.score("Answer: E", {**MC, "answer": "E"}).details["error"]


def test_an_mmlu_row_with_choices_is_multiple_choice():
    """cais/mmlu rows name their options `choices` and their gold a 0-based index. Before: read as a free-form
    question whose gold was the text "2", the options left out of the prompt, so the right letter scored 0
    (format_error) and only \\boxed{2} scored 1."""
    row = {"question": "Which gas is a noble gas?", "subject": "chemistry",
           "choices": ["Oxygen", "Nitrogen", "Neon", "Iron"], "answer": 2}
    env = make("stem")
    task = env.task_from_dict(row)
    assert task.reference == {"answer": "C", "options": {"A": "Oxygen", "B": "Nitrogen", "C": "Neon", "D": "Iron"}}
    assert "C. Neon" in task.prompt[0]["content"] and task.metadata == {"subject": "chemistry"}
    assert [env.score(c, row).reward for c in ("Answer: C", "\\boxed{C}", "Answer: Neon", "\\boxed{2}")] == [1, 1, 1, 0]


def test_free_form_answers_use_the_math_grader():
    env = make("stem")
    task = {"question": "A 2 kg mass accelerates at 3 m/s^2. Force in N?", "answer": "6"}
    assert env.score(r"F = ma = \boxed{6}", task).status == "ok"
    assert env.score(r"\boxed{6.0}", task).status == "ok"
    assert env.score(r"\boxed{\frac{12}{2}}", task).status == "ok"
    assert env.score(r"\boxed{5}", task).status == "wrong"
    assert env.score("6 N", task).status == "format_error"


def test_batch_scoring_in_workers():
    env = make("stem")
    comps = ["Answer: B", "Answer: A", r"\boxed{6}"]
    tasks = [MC, MC, {"question": "3+3?", "answer": "6"}]
    assert [s.reward for s in env.score_batch(comps, tasks, workers=2)] == [1.0, 0.0, 1.0]
