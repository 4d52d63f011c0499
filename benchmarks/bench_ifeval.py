"""Scoring time of the 541 official IFEval GPT-4 responses (target: < 10 s on 2 cores).

    .venv/bin/python benchmarks/bench_ifeval.py [--repeats 3]

Three ways, timed in the same process after a warm-up (which loads the Punkt and langdetect models, and is timed
on its own): `env.score` in strict mode (what training does), the full `eval-ifeval` report (strict + loose, the
four official figures), and `env.score_batch` through the killable worker processes. Prints each rate and its ratio
to the strict in-process rate, and the ratio of the 10 s budget to the report's time. Last, the slowest checker on
degenerate 60,000-character answers (runs of blank lines, brackets, ...), which a policy in training can produce.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import prorl
from prorl.envs.ifeval import INSTRUCTIONS
from prorl.envs.ifeval.report import evaluate_files

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ifeval"
INPUTS = DATA / "input_data.jsonl"
RESPONSES = DATA / "input_response_data_gpt4_20231107_145030.jsonl"
BUDGET_S = 10.0


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    rows = [json.loads(line) for line in INPUTS.read_text().splitlines()]
    by_prompt = {r["prompt"]: r["response"] for r in map(json.loads, RESPONSES.read_text().splitlines())}
    responses = [by_prompt[r["prompt"]] for r in rows]
    env = prorl.make("ifeval")
    n = len(rows)

    start = time.perf_counter()
    cold = evaluate_files(RESPONSES, INPUTS)
    cold_s = time.perf_counter() - start
    figures = cold.figures()

    strict_s = best_of(args.repeats, lambda: [env.score(c, r) for c, r in zip(responses, rows)])
    report_s = best_of(args.repeats, lambda: evaluate_files(RESPONSES, INPUTS))
    env.score_batch(responses[:4], rows[:4], workers=args.workers)  # start the workers outside the timing
    batch_s = best_of(args.repeats, lambda: env.score_batch(responses, rows, workers=args.workers))

    print(f"{n} official responses, {sum(len(r['instruction_id_list']) for r in rows)} instructions")
    print(f"first report, models loaded inside: {cold_s:.2f} s")
    print(f"{'way':<42} {'seconds':>8} {'responses/s':>12} {'ratio':>6}")
    base = n / strict_s
    for name, seconds in (("env.score, strict, in process (baseline)", strict_s),
                          ("eval-ifeval report, strict + loose", report_s),
                          (f"env.score_batch, strict, {args.workers} workers", batch_s)):
        print(f"{name:<42} {seconds:>8.2f} {n / seconds:>12.1f} {n / seconds / base:>6.2f}")
    print(f"budget {BUDGET_S:.0f} s / report time (cold) = {BUDGET_S / cold_s:.1f}x")
    print("figures: " + ", ".join(f"{k} {f}/{t}" for k, (f, t) in figures.items()))

    examples = {}  # one official kwargs per instruction id
    for row in rows:
        for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
            examples.setdefault(instruction_id, kwargs)
    size = 60_000
    degenerate = {"blank lines": "\n" * size, "spaces": " " * size, "brackets": "[" * size, "angles": "<" * size,
                  "markup mix": "* - [ < P.S. \n" * (size // 14)}
    worst = (0.0, "", "")
    for label, answer in degenerate.items():
        for instruction_id, kwargs in examples.items():
            checker = INSTRUCTIONS[instruction_id].from_kwargs(kwargs)
            seconds = best_of(1, lambda: checker.check(answer))
            worst = max(worst, (seconds, instruction_id, label))
    print(f"slowest checker on degenerate {size:,}-char answers: {worst[1]} on {worst[2]}, {worst[0]:.2f} s")


if __name__ == "__main__":
    main()
