"""Math scoring throughput: `MathEnv.score_batch` (killable worker processes) vs raw single-process math-verify.

Items: every MATH-500 gold with a model-like completion (a paragraph of reasoning, then a boxed answer): about
half right (the gold, sometimes in an equivalent form), 40% wrong (another problem's answer), 10% unparseable
(no box, or an empty one). Both sides score the same items in the same run:
  - raw: `math_verify.verify(parse(gold), parse(completion))` in this process, one item at a time (its own
    signal timeouts, which only work in the main thread);
  - prorl: `make("math").score_batch(completions, tasks, workers=2)` with the kill-able per-sample timeout.
The pool is started (and warmed on a few items) before timing, as in a training run. Rounds alternate between
the two sides and the best round of each is compared (timings on a shared machine are noisy); the first prorl
round, before the workers have cached the parsed golds, is printed as well.

    .venv/bin/python benchmarks/bench_scoring.py [--repeat 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math500" / "test.jsonl"

REASONING = ("We set up the problem carefully. Let the unknown quantity be $x$; translating the statement gives an "
             "equation we can simplify step by step. Checking small cases confirms the pattern, and substituting "
             "back verifies the result satisfies every condition, so we can state the final answer.")


def build_items(seed: int = 0) -> tuple[list[str], list[dict], list[bool]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    completions, tasks, right = [], [], []
    for i, row in enumerate(rows):
        u = rng.random()
        if u < 0.5:
            ans = row["answer"]
            if ans.strip().isdigit() and rng.random() < 0.3:
                ans = f"{ans}.0"  # an equivalent form that needs more than string equality
            text = f"{REASONING}\n\nTherefore the answer is $\\boxed{{{ans}}}$."
        elif u < 0.9:
            other = rows[(i + 1 + rng.randrange(len(rows) - 1)) % len(rows)]["answer"]
            text = f"{REASONING}\n\nTherefore the answer is $\\boxed{{{other}}}$."
        else:
            text = f"{REASONING}\n\nSo the answer must be what we found above." if rng.random() < 0.5 \
                else f"{REASONING}\n\nFinal answer: \\boxed{{}}"
        completions.append(text)
        tasks.append({"problem": row["problem"], "answer": row["answer"]})
        right.append(u < 0.5)
    return completions, tasks, right


def run_raw(completions: list[str], tasks: list[dict]) -> tuple[float, list[bool]]:
    from math_verify import parse, verify

    t0 = time.perf_counter()
    out = [bool(verify(parse("\\boxed{" + t["answer"] + "}"), parse(c))) for c, t in zip(completions, tasks)]
    return time.perf_counter() - t0, out


def run_prorl(env, completions: list[str], tasks: list[dict], workers: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    scores = env.score_batch(completions, tasks, workers=workers)
    return time.perf_counter() - t0, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="timed rounds per side (alternating); best is kept")
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)

    import prorl

    completions, tasks, right = build_items()
    n = len(completions)
    env = prorl.make("math")
    t0 = time.perf_counter()
    env.score_batch(completions[:8], tasks[:8], workers=args.workers)  # start and warm the pool
    print(f"pool start + warm-up: {time.perf_counter() - t0:.2f} s")

    raw_times, ours_times = [], []
    for _ in range(args.repeat):
        dt, raw_out = run_raw(completions, tasks)
        raw_times.append(dt)
        dt, scores = run_prorl(env, completions, tasks, args.workers)
        ours_times.append(dt)
    raw_rate, ours_rate = n / min(raw_times), n / min(ours_times)
    statuses = {s: sum(x.status == s for x in scores) for s in ("ok", "wrong", "format_error", "timeout",
                                                                    "infra_error")}
    agree = sum((x.reward == 1.0) == r for x, r in zip(scores, raw_out))
    intended = sum((x.reward == 1.0) == r for x, r in zip(scores, right))
    paths = Counter(x.details.get("match") or ("guard" if "guard" in x.details else x.status) for x in scores)
    print(f"items: {n} (intended right: {sum(right)}); prorl statuses: {statuses}")
    print(f"decided by: {dict(paths)}")
    print(f"prorl verdicts agree with raw math-verify on {agree}/{n}, with the intended label on {intended}/{n}")
    print(f"raw math_verify, 1 process : {raw_rate:8.1f} items/s  (best of {args.repeat}: {min(raw_times):.2f} s)")
    print(f"prorl score_batch, {args.workers} workers: {ours_rate:8.1f} items/s  "
          f"(best of {args.repeat}: {min(ours_times):.2f} s, per-sample kill-able timeout {env.timeout_s} s)")
    print(f"prorl first round (gold parses not yet cached in the workers): {n / ours_times[0]:.1f} items/s, "
          f"{n / ours_times[0] / raw_rate:.2f}x raw")
    print(f"ratio prorl / raw: {ours_rate / raw_rate:.2f}x")


if __name__ == "__main__":
    main()
