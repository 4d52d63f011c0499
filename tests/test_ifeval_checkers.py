"""Each IFEval checker on responses that follow and that break its instruction, and the validation of kwargs."""

import pytest

from prorl.envs.ifeval import INSTRUCTIONS, InstructionError, build_checkers
from prorl.envs.ifeval.text import count_sentences, detect_language, split_sentences, word_tokens


def followed(instruction_id: str, kwargs: dict, response: str) -> bool:
    return INSTRUCTIONS[instruction_id].from_kwargs(kwargs).check(response)


CASES = [
    # (instruction id, kwargs, response, expected)
    ("keywords:existence", {"keywords": ["Paris", "river"]}, "The RIVERS of paris.", True),
    ("keywords:existence", {"keywords": ["Paris", "river"]}, "Only Paris here.", False),
    ("keywords:existence", {"keywords": ["C++"]}, "I like C++ a lot", True),  # matched literally, not as a regex
    ("keywords:existence", {"keywords": ["C++"]}, "I like CCC a lot", False),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": "at least"}, "War and war.", True),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": "at least"}, "War and peace.", False),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": "less than"}, "War and peace.", True),
    ("keywords:frequency", {"keyword": " war ", "frequency": 2, "relation": "less than"}, "warware", False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "A category of dogs.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "My CAT sleeps.", False),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 2, "let_relation": "at least"}, "Quick quiz", True),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 3, "let_relation": "at least"}, "Quick quiz", False),
    ("keywords:letter_frequency", {"letter": "Z", "let_frequency": 1, "let_relation": "less than"}, "no zed", False),
    # the 2025 official checker counts a non-letter literally (keys 1122 '#', 1129 '!')
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": "at least"}, "# a\n## b", True),
    ("keywords:letter_frequency", {"letter": "!", "let_frequency": 2, "let_relation": "at least"}, "Hi!", False),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je suis très heureux de vous rencontrer aujourd'hui dans cette belle ville.", True),
    ("language:response_language", {"language": "fr"},
     "Hello, I am very happy to meet you today in this beautiful city.", False),
    ("language:response_language", {"language": "de"}, "12345 67890", True),  # undecidable: followed (official)
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "NASA and the ESA met in Paris.", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "NASA and the ESA met in Paris.", False),
    ("change_case:english_capital", {}, "THIS IS MY ANSWER, WRITTEN IN ENGLISH FOR YOU.", True),
    ("change_case:english_capital", {}, "THIS IS MY ANSWER, written in English.", False),
    ("change_case:english_capital", {}, "C'EST MA RÉPONSE, ÉCRITE EN FRANÇAIS POUR VOUS AUJOURD'HUI.", False),
    ("change_case:english_lowercase", {}, "this is my answer, written in english for you.", True),
    ("change_case:english_lowercase", {}, "this is my answer, written in English.", False),
    ("punctuation:no_comma", {}, "No commas at all.", True),
    ("punctuation:no_comma", {}, "One, comma.", False),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Mr. Smith went to Washington. He arrived at 5 p.m. on Monday.", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Mr. Smith went to Washington. He arrived at 5 p.m. on Monday.", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two-three four_4, five", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "one two three four five", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nFirst.\n***\nSecond.\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "First.\n***\nSecond.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\n***\nSecond.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "weekend"},
     "Intro line.\n\n\"Weekend, finally!\" she said.", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "weekend"},
     "Intro line.\n\nThe weekend.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "weekend"},
     "Intro line.\n\nWeekend.", False),  # right first word, wrong paragraph count
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 3}, "Dear [name], at [address].", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Bye.\n\np. s. see you", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Bye.\nP.S. see you", False),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "Bye.\nnote: later", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "Items:\n* one\n* two\n- three", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "Items:\n* one\n**bold** two\n- three", False),
    ("detectable_format:constrained_response", {}, "Well. My answer is maybe.", True),
    ("detectable_format:constrained_response", {}, "My answer is probably yes.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and * * and *\n*", False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nabc\nSECTION 2\ndef", True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "Section 1\nabc\nSection 2\ndef", False),  # case-sensitive, like the official checker
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', True),
    ("detectable_format:json_format", {}, 'Here: {"a": 1}', False),
    ("detectable_format:title", {}, "<<My Poem>>\nRoses are red.", True),
    ("detectable_format:title", {}, "<< >>\n<<no\ntitle>>", False),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:two_responses", {}, "One.\n******\n******\nTwo.", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about cats."},
     "write a poem about cats.\nCats are soft.", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about cats."},
     "Sure! Write a poem about cats.\nCats are soft.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. any other questions?"  ', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ("startend:quotation", {}, '  "All quoted."\n', True),
    ("startend:quotation", {}, '"Not closed.', False),
]


def test_every_instruction_id_has_cases():
    assert len(INSTRUCTIONS) == 25
    covered = {case[0] for case in CASES}
    assert covered == set(INSTRUCTIONS)
    for instruction_id in INSTRUCTIONS:  # each checker is seen both followed and broken
        assert {case[3] for case in CASES if case[0] == instruction_id} == {True, False}, instruction_id


@pytest.mark.parametrize("instruction_id,kwargs,response,expected", CASES)
def test_checker(instruction_id, kwargs, response, expected):
    assert followed(instruction_id, kwargs, response) is expected


def test_nth_paragraph_indexes_the_split_list_like_the_official_checker():
    kwargs = {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "weekend"}
    # two non-empty paragraphs, but "\n\n\n\n" leaves an empty piece at index 1: the official checker looks there
    assert followed("length_constraints:nth_paragraph_first_word", kwargs, "Intro.\n\nWeekend here.") is True
    assert followed("length_constraints:nth_paragraph_first_word", kwargs, "Intro.\n\n\n\nWeekend here.") is False
    kwargs_first = {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "weekend"}
    assert followed("length_constraints:nth_paragraph_first_word", kwargs_first, "\n\nWeekend.\n\nMore.") is False
    assert followed("length_constraints:nth_paragraph_first_word", kwargs_first, "Weekend.\n\nMore.\n\n") is True


def test_sentences_and_word_tokens():
    assert split_sentences("Dr. Smith arrived at 5 p.m. He left. Did he?") == [
        "Dr. Smith arrived at 5 p.m.", "He left.", "Did he?"]
    assert count_sentences("No full stop") == 1
    assert word_tokens("The U.S. team WON. They're NASA's best!") == [
        "The", "U.S.", "team", "WON", ".", "They", "'re", "NASA", "'s", "best", "!"]


def test_language_detection_is_deterministic():
    text = "gut ok"  # short and ambiguous: unseeded langdetect answers 'et', 'no' or 'sv' from call to call
    assert len({detect_language(text) for _ in range(20)}) == 1
    assert detect_language("Das ist ein ganz normaler deutscher Satz über das Wetter.") == "de"
    assert detect_language("1234 5678") is None


@pytest.mark.parametrize("instruction_id,kwargs,message", [
    ("keywords:frequency", {"keyword": "war", "relation": "at least"}, "missing kwargs ['frequency']"),
    ("keywords:frequency", {"keyword": "war", "frequency": 2, "relation": "at most"}, "must be one of"),
    ("keywords:frequency", {"keyword": "war", "frequency": "2", "relation": "at least"}, "must be an integer"),
    ("keywords:frequency", {"keyword": "war", "frequency": True, "relation": "at least"}, "must be an integer"),
    ("keywords:frequency", {"keyword": "", "frequency": 2, "relation": "at least"}, "non-empty string"),
    ("keywords:existence", {"keywords": "war"}, "non-empty list of strings"),
    ("keywords:existence", {"keywords": []}, "non-empty list of strings"),
    ("punctuation:no_comma", {"num_words": 3}, "unknown kwargs ['num_words']"),
    ("keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": "at least"}, "one character"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"},
     "nth_paragraph must be in 1..num_paragraphs"),
    ("length_constraints:number_words", {"num_words": -1, "relation": "at least"}, "must be >= 0"),
    ("language:response_language", {"language": "xx"}, "not one langdetect knows"),
])
def test_bad_kwargs_are_clear_errors(instruction_id, kwargs, message):
    with pytest.raises(InstructionError, match=__import__("re").escape(message)):
        INSTRUCTIONS[instruction_id].from_kwargs(kwargs)


def test_hugging_face_rows_with_null_kwargs_are_accepted():
    hf_kwargs = {"num_highlights": None, "relation": "at least", "num_words": 3, "keywords": None, "letter": None}
    (checker,) = build_checkers(["length_constraints:number_words"], [hf_kwargs])
    assert checker.check("one two three")


def test_build_checkers_errors():
    with pytest.raises(InstructionError, match="unknown instruction id 'keywords:bogus'"):
        build_checkers(["punctuation:no_comma", "keywords:bogus"], [{}, {}])
    with pytest.raises(InstructionError, match="one object per instruction"):
        build_checkers(["punctuation:no_comma"], [{}, {}])
    with pytest.raises(InstructionError, match="is empty"):
        build_checkers([], [])
    # a repeated id keeps both instructions, each with its own kwargs
    checkers = build_checkers(["keywords:frequency"] * 2, [
        {"keyword": "war", "frequency": 2, "relation": "at least"},
        {"keyword": "peace", "frequency": 1, "relation": "at least"}])
    assert [c.check("war war") for c in checkers] == [True, False]


def test_linear_time_scanners_equal_the_official_regexes():
    """Bullets, placeholders and titles are counted without the official regexes (quadratic on long runs of blank
    lines or brackets); on random texts over the characters that matter, the results are the same."""
    import random
    import re

    from prorl.envs.ifeval.checks_format import count_bullets, titles
    from prorl.envs.ifeval.checks_length import count_placeholders

    rng = random.Random(0)
    alphabet = ["*", "**", "-", "\n", "\n\n", " ", "\t", "\r", "\u00a0", "a", "[", "]", "<<", ">>", "<", ">"]
    for _ in range(20000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert count_bullets(t, "*") == len(re.findall(r"^\s*\*[^\*].*$", t, flags=re.MULTILINE)), repr(t)
        assert count_bullets(t, "-") == len(re.findall(r"^\s*-.*$", t, flags=re.MULTILINE)), repr(t)
        assert count_placeholders(t) == len(re.findall(r"\[.*?\]", t)), repr(t)
        assert titles(t) == re.findall(r"<<[^\n]+>>", t), repr(t)


def test_degenerate_answers_are_plain_verdicts():
    deep = "[" * 100_000  # deeper than the interpreter's recursion limit for json
    assert followed("detectable_format:json_format", {}, deep) is False
    assert followed("detectable_format:number_bullet_lists", {"num_bullets": 0}, "\n" * 100_000) is True
