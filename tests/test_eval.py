"""prorl eval: the pass@k estimator against brute force, aggregation, and evaluate()/CLI end to end with real tiny
Hugging Face models whose outputs are known (built here from config: no download)."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import prorl
from prorl.cli import main as cli_main
from prorl.envs import Score
from prorl.eval import aggregate, evaluate, load_eval_rows, pass_at_k, prompt_stats, report_table

from _envs_for_tests import EchoEnv

for _id in ("test/echo", "test/echo_b"):
    prorl.register(_id, EchoEnv, override=True)

VOCAB = ["<pad>", "<eos>", "<unk>", "<go>", "7", "8", "9", "say", "q"]


def build_transition_model(path: Path, next_tokens: dict[str, list[str]], opens_think: bool = False) -> str:
    """A real Qwen2 model whose next token depends only on the current one.

    All attention/MLP weights are zero, so the residual stream at a position is the embedding of its token; with
    one-hot embeddings and lm_head rows set to a large multiple of `next_tokens`' transition table, token t is
    followed by one of next_tokens[t] (uniformly when several, since their logits tie) and anything else by <eos>.
    The chat template ends every prompt with <go>, so what the model answers is fixed by next_tokens["<go>"].
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = "{% for m in messages %}{{ m['content'] }} {% endfor %}" + ("<think> " if opens_think else "") + "<go>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<go>"])
    fast.chat_template = template
    hidden = 16
    config = Qwen2Config(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                         eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"], bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.zero_()
        model.model.embed_tokens.weight[:, :] = 0
        for i in range(len(VOCAB)):
            model.model.embed_tokens.weight[i, i] = 1.0
        head = model.lm_head.weight
        head.zero_()
        for i, token in enumerate(VOCAB):
            for nxt in next_tokens.get(token, ["<eos>"]):
                head[vocab[nxt], i] = 20.0
    model.generation_config.eos_token_id = vocab["<eos>"]
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "seven": build_transition_model(root / "seven", {"<go>": ["7"]}),
        "coin": build_transition_model(root / "coin", {"<go>": ["7", "8"]}),
        "think": build_transition_model(root / "think", {"<go>": ["7"]}, opens_think=True),
    }


def echo_rows(answers, env="test/echo"):
    rows = []
    for i, a in enumerate(answers):
        task = prorl.make(env).task_from_dict({"q": f"say q{i}", "answer": a, "id": f"{env}-{i}"})
        rows.append({"id": task.id, "env": env, "prompt": task.prompt, "reference": task.reference, "metadata": {}})
    return rows


# -- pass@k ------------------------------------------------------------------------------------------------------
def brute_force_pass_at_k(n, c, k):
    """Fraction of the k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_on_every_small_case():
    checked = 0
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
                checked += 1
    assert checked == 240


def test_pass_at_k_closed_form_and_edges():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)
    assert pass_at_k(20, 5, 4) == pytest.approx(1 - math.comb(15, 4) / math.comb(20, 4))
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_aggregate_leaves_masked_samples_out_of_n():
    ok, wrong, timeout = Score(1.0, "ok"), Score(0.0, "wrong"), Score(0.0, "timeout")
    a = prompt_stats([ok, wrong, timeout, timeout])  # n=2 scored, 1 correct
    b = prompt_stats([wrong, wrong, wrong, Score(0.5, "wrong")])  # partial credit is not "correct"
    assert (a["n"], a["correct"], a["masked"]) == (2, 1, 2)
    summary = aggregate([a, b], ks=[1, 2, 4])
    assert summary["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["pass@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert summary["pass@4"] == 0.0 and summary["pass@4_prompts"] == 1  # prompt a has only 2 scored samples
    assert summary["mean_reward"] == pytest.approx((1.0 + 0.5) / 6)
    assert summary["masked"] == 2 and summary["samples"] == 8


def test_report_table_says_over_how_many_prompts_a_partial_pass_at_k_is():
    from rich.console import Console

    ok, wrong, timeout = Score(1.0, "ok"), Score(0.0, "wrong"), Score(0.0, "timeout")
    summary = aggregate([prompt_stats([ok, wrong, timeout, timeout]), prompt_stats([wrong] * 4)], ks=[1, 4])
    result = {"model": "m", "n": 4, "ks": [1, 4], "sampling": {"temperature": 0.6, "top_p": 0.95},
              "per_env": {"math": summary}, "overall": summary}
    console = Console(width=200, record=True)
    console.print(report_table([result]))
    text = console.export_text()
    assert "0.000 (1)" in text and "0.250 (" not in text  # pass@4 over 1 of 2 prompts; pass@1 over both
    assert "over the N prompts with at least k scored samples" in text
    full = aggregate([prompt_stats([wrong] * 4)], ks=[1, 4])
    console = Console(width=200, record=True)
    console.print(report_table([{**result, "per_env": {"math": full}, "overall": full}]))
    assert "(1)" not in console.export_text() and "at least k" not in console.export_text()


# -- evaluate ----------------------------------------------------------------------------------------------------
def test_evaluate_per_env_pass_at_k_with_a_model_that_always_answers_7(models):
    rows = echo_rows(["7", "7", "9"]) + echo_rows(["9", "9"], env="test/echo_b")
    res = evaluate(models["seven"], rows, n=4, ks=[1, 4], workers=0)
    assert res["per_env"]["test/echo"]["pass@1"] == pytest.approx(2 / 3)
    assert res["per_env"]["test/echo"]["pass@4"] == pytest.approx(2 / 3)
    assert res["per_env"]["test/echo_b"]["pass@4"] == 0.0
    assert res["overall"]["pass@1"] == pytest.approx(2 / 5)
    assert res["overall"]["samples"] == 20 and res["overall"]["prompts"] == 5
    assert [p["correct"] for p in res["per_prompt"]] == [4, 4, 0, 0, 0]


def test_a_template_that_opens_think_makes_an_unclosed_completion_answer_nothing(models):
    """The 'think' model's template ends the prompt inside <think> (as DeepSeek-R1-Distill's does): its answer "7"
    never closes the block, so it is no answer, as in training (EnvReward)."""
    res = evaluate(models["think"], echo_rows(["7"]), n=2, ks=[1], workers=0, keep_completions=True)
    assert res["overall"]["pass@1"] == 0.0
    assert [s["status"] for s in res["per_prompt"][0]["samples"]] == ["format_error"] * 2
    assert res["per_prompt"][0]["samples"][0]["completion"].strip() == "7"  # stored as generated


def test_evaluate_coin_model_matches_the_estimator_and_is_reproducible(models):
    rows = echo_rows(["7"] * 6)
    res = evaluate(models["coin"], rows, n=8, ks=[1, 2, 8], workers=0, keep_completions=True)
    again = evaluate(models["coin"], rows, n=8, ks=[1, 2, 8], workers=0, keep_completions=True)
    assert [p["samples"] for p in res["per_prompt"]] == [p["samples"] for p in again["per_prompt"]]
    texts = {s["completion"].strip() for p in res["per_prompt"] for s in p["samples"]}
    assert texts == {"7", "8"}
    counts = [p["correct"] for p in res["per_prompt"]]
    assert 0.25 < sum(counts) / 48 < 0.75  # each sample is a fair coin
    for k in (1, 2, 8):
        expected = sum(pass_at_k(8, c, k) for c in counts) / len(counts)
        assert res["overall"][f"pass@{k}"] == pytest.approx(expected)
    assert res["overall"]["pass@1"] <= res["overall"]["pass@2"] <= res["overall"]["pass@8"]


def test_evaluate_accepts_tasks(models):
    tasks = [prorl.make("test/echo").task_from_dict({"q": "say q", "answer": a, "id": a}) for a in ("7", "9")]
    res = evaluate(models["seven"], tasks, n=2, ks=[1], workers=0)
    assert [p["correct"] for p in res["per_prompt"]] == [2, 0]


def test_evaluate_rejects_k_above_n(models):
    with pytest.raises(ValueError, match="k <= n"):
        evaluate(models["seven"], echo_rows(["7"]), n=2, ks=[1, 4], workers=0)


def test_eval_cli_compares_two_models_and_writes_json_png_and_completions(models, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in echo_rows(["7", "9", "7"])))
    out = tmp_path / "eval"
    code = cli_main(["eval", "--model", models["seven"], "--compare", models["coin"], "--data", str(data),
                     "--n", "4", "--k", "1,4", "--workers", "1", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pass@4" in printed and "overall" in printed
    results = json.loads((out / "results.json").read_text())
    assert [Path(r["model"]).name for r in results] == ["seven", "coin"]
    assert results[0]["overall"]["pass@1"] == pytest.approx(2 / 3)
    assert (out / "passk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3 * 4 and {"model", "id", "env", "completion", "reward", "status"} <= json.loads(lines[0]).keys()
    # each sample names its prompt (its index in per_prompt: ids may repeat in a user's data) and its draw, so the
    # per-prompt counts can be recomputed from the samples alone
    rows = [json.loads(line) for line in lines]
    assert len({(r["model"], r["prompt"], r["sample"]) for r in rows}) == len(rows)
    for res in results:
        for i, p in enumerate(res["per_prompt"]):
            mine = [r for r in rows if r["model"] == res["model"] and r["prompt"] == i]
            assert [r["sample"] for r in mine] == [0, 1, 2, 3] and {r["id"] for r in mine} == {p["id"]}
            assert sum(r["reward"] == 1.0 for r in mine) == p["correct"]


def test_eval_cli_reports_bad_arguments(models, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"q": "say q", "answer": "7"}) + "\n")
    assert cli_main(["eval", "--model", models["seven"], "--data", str(data), "--n", "2", "--k", "4"]) == 2
    assert "every k must be" in capsys.readouterr().err
    assert cli_main(["eval", "--model", models["seven"], "--data", str(data), "--n", "2", "--k", "1"]) == 2
    assert "--env" in capsys.readouterr().err  # public rows need an environment
    assert cli_main(["eval", "--model", models["seven"], "--data", str(data), "--n", "2"]) == 2
    assert "every k must be" not in capsys.readouterr().err  # the default k values are those <= n
    for flags in (["--model", str(tmp_path / "nope")], ["--model", models["seven"], "--compare", "org/model"]):
        assert cli_main(["eval", *flags, "--data", str(data), "--env", "test/echo", "--n", "2", "--k", "1"]) == 2
        assert "not a local model folder" in capsys.readouterr().err  # not a Hub lookup's traceback


def test_load_eval_rows_reads_public_rows_with_env_and_limits_per_env(tmp_path):
    data = tmp_path / "public.jsonl"
    data.write_text("".join(json.dumps({"q": f"say q{i}", "answer": "7"}) + "\n" for i in range(5)))
    rows = load_eval_rows(str(data), env="test/echo", limit=3)
    assert len(rows) == 3 and rows[0]["env"] == "test/echo"
    assert rows[0]["prompt"] == [{"role": "user", "content": "say q0"}] and rows[0]["reference"] == {"answer": "7"}
    array = tmp_path / "public.json"  # one JSON array of rows, as DeepScaleR ships (datasets/samples/math.json)
    array.write_text(json.dumps([{"q": f"say q{i}", "answer": "7"} for i in range(2)], indent=1))
    assert [r["reference"] for r in load_eval_rows(str(array), env="test/echo")] == [{"answer": "7"}] * 2
    array.write_text(json.dumps([{"q": "say q", "answer": "7"}, 3]))
    with pytest.raises(ValueError, match=r"element 1 of the array is not an object \(got int\)"):
        load_eval_rows(str(array), env="test/echo")


def test_the_envs_that_checked_the_rows_score_the_samples(models, tmp_path):
    """`prorl eval` builds each environment once: load_eval_rows hands the ones it built to evaluate(), which
    builds only those missing (before, each evaluate() call built every env again)."""
    data = tmp_path / "public.jsonl"
    data.write_text("".join(json.dumps({"q": f"say q{i}", "answer": a}) + "\n" for i, a in enumerate("79")))
    envs = {}
    rows = load_eval_rows(str(data), env="test/echo", envs=envs)
    built = dict(envs)
    assert list(built) == ["test/echo"]
    res = evaluate(models["seven"], rows + echo_rows(["7"], env="test/echo_b"), n=2, ks=[1], workers=0, envs=envs)
    assert envs["test/echo"] is built["test/echo"] and sorted(envs) == ["test/echo", "test/echo_b"]
    assert res["per_env"]["test/echo"]["pass@1"] == 0.5 and res["per_env"]["test/echo_b"]["pass@1"] == 1.0


def test_load_eval_rows_names_a_task_from_dict_that_hangs(tmp_path):
    """Before: a custom env's task_from_dict that never returned stalled `prorl eval` for ever while it read the
    data, before any sampling, without a word."""
    prorl.register("test/hang-task", "_envs_for_tests:HangingTaskEcho", override=True)
    data = tmp_path / "public.jsonl"
    data.write_text(json.dumps({"q": "say 1", "answer": "1"}) + "\n" + json.dumps({"q": "HANG", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"public.jsonl:2 \(test/hang-task\): HangingTaskEcho.task_from_dict did not "
                                         r"return within 1 s"):
        load_eval_rows(str(data), env="test/hang-task")


def test_load_eval_rows_names_the_row_and_field_of_a_bad_public_row(tmp_path):
    """A row of a .jsonl file is named by its line, as an editor shows it (blank lines counted); before, by its
    0-based index among the rows ("row 1" for line 3 here)."""
    data = tmp_path / "public.jsonl"
    data.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n\n" + json.dumps({"problem": "x", "answr": "3"})
                    + "\n")
    with pytest.raises(ValueError, match=r"public.jsonl:3 \(math\) is missing field 'answer'"):
        load_eval_rows(str(data), env="math")
    data.write_text(json.dumps({"problem": "1+1", "answer": None}) + "\n")
    with pytest.raises(ValueError, match=r"public.jsonl:1 \(math\): field 'answer' must be"):
        load_eval_rows(str(data), env="math")
    data.write_text(json.dumps([1, 2]) + "\n")
    with pytest.raises(ValueError, match=r"public\.jsonl:1: a row must be a JSON object, got list"):
        load_eval_rows(str(data), env="math")
    prorl.register("test/sloppy", "_envs_for_tests:SloppyEcho", override=True)  # task_from_dict: AttributeError
    data.write_text(json.dumps({"q": "say 1", "answer": "1"}) + "\n" + json.dumps({"q": "say 1", "answer": 1}) + "\n")
    with pytest.raises(ValueError, match=r"public\.jsonl:2 \(test/sloppy\): AttributeError\("):  # was: traceback
        load_eval_rows(str(data), env="test/sloppy")


def test_eval_data_from_a_recipe_uses_its_held_out_split(models, tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"q": f"say q{i}", "answer": "7"}) + "\n" for i in range(8)))
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "e", "seed": 1, "sources": {
        "a": {"env": "test/echo", "path": "a.jsonl", "size": 5, "holdout": 3}}}))
    held = load_eval_rows(str(tmp_path / "r.yaml"))
    train = load_eval_rows(str(tmp_path / "r.yaml"), split="train")
    assert len(held) == 3 and len(train) == 5 and not {r["id"] for r in held} & {r["id"] for r in train}
    res = evaluate(models["seven"], held, n=2, ks=[1, 2], workers=0)
    assert res["overall"]["pass@1"] == 1.0 and res["per_env"]["test/echo"]["prompts"] == 3


def test_sampler_over_a_model_in_memory_draws_what_the_loaded_one_draws(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prorl.data.sampling import Sampler, SamplingConfig

    config = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=3, seed=5, backend="hf", batch_size=4)
    prompts = [[{"role": "user", "content": f"say q{i}"}] for i in range(3)]
    loaded = Sampler(models["coin"], config, device="cpu").sample(prompts, 4)
    model = AutoModelForCausalLM.from_pretrained(models["coin"])
    in_memory = Sampler.from_model(model, AutoTokenizer.from_pretrained(models["coin"]), config).sample(prompts, 4)
    assert in_memory == loaded
    assert {c for cs in loaded for c in cs} == {"7", "8"}  # seeded draws of a coin, not one constant answer
    # settings a model ships in its generation_config do not shape the samples (min_p 0.99 keeps only the argmax),
    # and the model's own config is back afterwards
    model.generation_config.min_p = 0.99
    shipped = model.generation_config
    assert Sampler.from_model(model, AutoTokenizer.from_pretrained(models["coin"]), config).sample(prompts, 4) == loaded
    assert model.generation_config is shipped and shipped.min_p == 0.99


def test_eval_split_heldout_of_a_recipe_without_held_out_rows_is_an_error(tmp_path):
    """`--split heldout` asks for held-out prompts: a recipe that holds none is an error, as a build folder without
    heldout.parquet is. Before the fix the recipe's training rows were evaluated instead, silently."""
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"q": f"say q{i}", "answer": "7"}) + "\n" for i in range(4)))
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "e", "sources": {
        "a": {"env": "test/echo", "path": "a.jsonl", "size": 4}}}))
    assert len(load_eval_rows(str(tmp_path / "r.yaml"))) == 4  # no split asked: the training rows
    with pytest.raises(ValueError, match="holds no rows out"):
        load_eval_rows(str(tmp_path / "r.yaml"), split="heldout")


def test_eval_env_flag_does_not_rescore_rows_of_another_env(tmp_path):
    """--env is the environment of rows that have no `env` column. Before the fix it replaced every row's own env,
    so a math row of a mixture was scored by --env's environment without a word."""
    rows = echo_rows(["7"]) + [{"id": "m", "env": "math", "prompt": [{"role": "user", "content": "1+1?"}],
                                "reference": {"answer": "2"}, "metadata": {}}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"rows.jsonl:2: env 'math', not --env 'test/echo'"):
        load_eval_rows(str(data), env="test/echo")
    assert [r["env"] for r in load_eval_rows(str(data))] == ["test/echo", "math"]


def test_eval_cli_refuses_bad_n_limit_and_k(models, tmp_path, capsys):
    """Before the fix `--n 0` ended in a traceback (evaluate's ValueError, raised outside the CLI's error
    handling), `--limit 0` evaluated every prompt and `--limit -1` none (again a traceback)."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in echo_rows(["7", "9"])))
    for flags, message in ((["--n", "0"], "--n must be >= 1"), (["--n", "2", "--limit", "0"], "--limit must be >= 1"),
                           (["--n", "2", "--limit", "-1"], "--limit must be >= 1"),
                           # `--k ,` was a traceback too, `--k 1,x` said "invalid literal for int()" without the flag
                           (["--n", "2", "--k", ","], "--k ',': expected comma-separated whole numbers"),
                           (["--n", "2", "--k", "1,x"], "--k '1,x': expected comma-separated whole numbers")):
        assert cli_main(["eval", "--model", models["seven"], "--data", str(data), *flags]) == 2
        assert message in capsys.readouterr().err


def test_eval_an_unknown_env_is_an_error_before_any_sampling(models, tmp_path, capsys):
    """A schema row whose env is not registered (a typo, a plugin not installed) is named when the data is read.
    Before the fix every prompt was sampled first, then the scoring step raised KeyError: a traceback, and the
    samples (hours on a real model) were lost."""
    rows = echo_rows(["7"]) + [{**echo_rows(["7"])[0], "id": "x", "env": "test/ech0"}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli_main(["eval", "--model", models["seven"], "--data", str(data), "--n", "2", "-o", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "rows.jsonl:2: unknown environment 'test/ech0'" in captured.err and "samples each" not in captured.out
    with pytest.raises(KeyError, match="unknown environment 'test/ech0'"):  # the Python entry point: before sampling
        evaluate(str(tmp_path / "no-model"), rows, n=2, ks=[1], workers=0)


def test_eval_an_unusable_output_folder_fails_before_sampling(models, tmp_path, capsys):
    """Before the fix `-o` was created after every model was sampled and scored: an output path that is a file
    ended the run there with a FileExistsError traceback, and the results were lost."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in echo_rows(["7"])))
    (tmp_path / "out").write_text("a file")
    assert cli_main(["eval", "--model", models["seven"], "--data", str(data), "--n", "2", "-o", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert str(tmp_path / "out") in captured.err and "samples each" not in captured.out


def test_eval_cli_names_empty_missing_and_misused_data(models, tmp_path, capsys):
    """Before the fix an empty --data file ended in a ValueError traceback after the model was loaded, a missing one
    said only "[Errno 2] No such file or directory", and --split / --sample-data with a plain file were ignored
    without a word (the whole file was evaluated)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in echo_rows(["7"])))
    cases = ((["--data", str(empty)], f"--data {empty}: no rows to evaluate"),
             (["--data", str(tmp_path / "nope.jsonl")], f"--data {tmp_path / 'nope.jsonl'}: no such file or folder"),
             (["--data", str(rows), "--split", "heldout"], "--split is for a build folder or a recipe"),
             (["--data", str(rows), "--sample-data"], "--sample-data is for a recipe"))
    for flags, message in cases:
        assert cli_main(["eval", "--model", models["seven"], *flags, "--n", "2"]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err and "samples each" not in captured.out


def test_eval_counts_timeout_and_infra_error_apart_and_says_what_overall_is(models, tmp_path, capsys):
    """`masked` lumped timeouts (the verifier's budget) with infra_errors (no verdict: a sandbox outage) and nothing
    said why samples were left out, nor that `overall` is over all prompts (each env weighted by its prompt count,
    not the mean of the env rows)."""
    prorl.register("test/outage", "_envs_for_tests:OutageEcho", override=True)
    rows = echo_rows(["7", "9", "7"]) + echo_rows(["7"], env="test/outage")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli_main(["eval", "--model", models["seven"], "--data", str(data), "--n", "2", "--k", "1",
                     "--workers", "1", "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    assert result["per_env"]["test/outage"]["infra_error"] == 2 and result["overall"]["timeout"] == 0
    assert result["overall"]["pass@1"] == pytest.approx(2 / 3)  # over the 3 prompts with scored samples
    assert "2 samples unscored (infra_error 2, timeout 0)" in out and "left out of n" in out
    assert "overall: mean over all prompts" in " ".join(out.split())
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert "`overall` averages over all prompts" in helped and "left out of that prompt's n" in helped


def test_sampling_stopped_mid_way_goes_on_from_its_checkpoint_with_the_same_draws(models, tmp_path):
    """A stop (Ctrl-C) lost every sample drawn so far: nothing was kept before the end. With `checkpoint` each
    finished batch is kept with the random state after it, and a second call draws what one uninterrupted call
    draws."""
    from prorl.data.sampling import Sampler, SamplingConfig

    config = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=3, seed=5, backend="hf", batch_size=3)
    prompts = [[{"role": "user", "content": f"say q{i}"}] for i in range(4)]
    whole = Sampler(models["coin"], config, device="cpu").sample(prompts, 4)
    ck = tmp_path / "sampling.jsonl"
    seen = []

    def stop_after_two_batches(k):
        seen.append(k)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Sampler(models["coin"], config, device="cpu").sample(prompts, 4, progress=stop_after_two_batches,
                                                              checkpoint=ck)
    assert len(ck.read_text().splitlines()) == 1 + 2  # the header and the two finished batches
    ck.write_text(ck.read_text() + '{"batch": 2, "samp')  # a kill while a line was written
    assert Sampler(models["coin"], config, device="cpu").sample(prompts, 4, checkpoint=ck) == whole
    assert len({c for cs in whole for c in cs}) == 2  # real draws of a coin, not one constant answer
    other = SamplingConfig(**{**config.to_dict(), "seed": 6})
    with pytest.raises(ValueError, match=r"sampling.jsonl: written for other sampling than this run's"):
        Sampler(models["coin"], other, device="cpu").sample(prompts, 4, checkpoint=ck)


def test_eval_cli_resume_goes_on_from_the_samples_an_interrupted_run_kept(models, tmp_path, capsys):
    """Before: no --resume, and nothing of a long eval was kept when it was stopped. Now -o keeps the samples as
    they are drawn (sampling.model.jsonl); --resume draws only the rest, and the results equal an uninterrupted
    run's."""
    from prorl.data.sampling import Sampler, SamplingConfig

    rows = echo_rows(["7", "8", "7", "9"])
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flags = ["--model", models["coin"], "--data", str(data), "--n", "4", "--k", "1,4", "--max-new-tokens", "3",
             "--batch-size", "3", "--workers", "0"]
    assert cli_main(["eval", *flags, "-o", str(tmp_path / "whole")]) == 0
    assert not list((tmp_path / "whole").glob("sampling.*"))  # gone once completions.jsonl holds every sample
    out = tmp_path / "resumed"
    out.mkdir()
    config = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=3, batch_size=3, seed=0)
    seen = []

    def stop(k):  # Ctrl-C after two of the six batches
        seen.append(k)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Sampler(models["coin"], config).sample([r["prompt"] for r in rows], 4, progress=stop,
                                               checkpoint=out / "sampling.model.jsonl")
    assert cli_main(["eval", *flags[:5], "8", *flags[6:], "-o", str(out), "--resume"]) == 2  # other --n
    assert "sampling.model.jsonl: written for other n" in capsys.readouterr().err
    assert cli_main(["eval", *flags, "-o", str(out), "--resume"]) == 0
    strip = lambda res: {k: v for k, v in res.items() if k != "wall_s"}
    assert strip(json.loads((out / "results.json").read_text())) == strip(
        json.loads((tmp_path / "whole" / "results.json").read_text()))
    assert (out / "completions.jsonl").read_text() == (tmp_path / "whole" / "completions.jsonl").read_text()
    # the kept samples are used, not drawn again: one marked in the file shows up in the results
    with pytest.raises(KeyboardInterrupt):
        seen.clear()
        Sampler(models["coin"], config).sample([r["prompt"] for r in rows], 4, progress=stop,
                                               checkpoint=out / "sampling.model.jsonl")
    kept = (out / "sampling.model.jsonl").read_text().splitlines()
    first = json.loads(kept[1])
    first["samples"][0][2] = "KEPT"
    (out / "sampling.model.jsonl").write_text("\n".join([kept[0], json.dumps(first), *kept[2:]]) + "\n")
    assert cli_main(["eval", *flags, "-o", str(out), "--resume"]) == 0
    assert sum('"completion": "KEPT"' in line for line in (out / "completions.jsonl").read_text().splitlines()) == 1
    assert cli_main(["eval", *flags, "--resume"]) == 2
    assert "--resume goes on from the samples kept in -o DIR" in capsys.readouterr().err
