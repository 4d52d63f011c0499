"""Does the `code` reward depend on the machine's load? Honest CPU-bound programs (assertion tests needing about
`--cpu` seconds of CPU in all, under the 5 s budget) and the HumanEval / MBPP reference solutions, scored through the
`code` env with the sandbox's default pool, (a) one program at a time on an otherwise quiet pool, (b) as many at
once as the env's `score_batch` runs (one per slot), (c) as (b) plus `--host-load` busy processes on this machine (a
trainer, other scorers). Every program is correct: any reward below 1.0 is a false verdict. Prints the false-timeout
counts and the wall time per program against (a), measured in the same run.

    .venv/bin/python benchmarks/bench_sandbox_load.py [--sandbox docker|local] [--pool-size N] [--n 8] [--cpu 2.5]
        [--host-load 2] [--refs 200] [--out benchmarks/results/sandbox_load.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import prorl.envs as envs
from prorl.sandbox import make_sandbox

DATA = Path(os.environ.get("PRORL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BURN = "def burn(n):\n    s = 0\n    for i in range(n):\n        s += i\n    return s\n"
TESTS = 5


def calibrate(sandbox) -> float:
    """CPU seconds per million loop iterations of `burn`, measured inside the sandbox on the quiet pool."""
    probe = BURN + "import time\nt = time.process_time()\nburn(2_000_000)\nprint(time.process_time() - t)"
    return min(float(sandbox.run(probe, timeout_s=30).stdout) for _ in range(3)) / 2


def honest_row(iterations: int, k: int) -> dict:
    return {"task_id": 10_000 + k, "text": "burn", "test_setup_code": "",
            "test_list": [f"assert burn({iterations + k + t}) == {(iterations + k + t) * (iterations + k + t - 1) // 2}"
                          for t in range(TESTS)]}


def spin(stop) -> None:
    while not stop.is_set():
        pass


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed_scores(env, completions, rows, concurrent: bool):
    """(scores, wall seconds per program): one at a time, or all through score_batch (one thread per slot)."""
    if concurrent:
        t0 = time.monotonic()
        scores = env.score_batch(completions, rows)
        return scores, [(time.monotonic() - t0) * env.sandbox.parallelism / len(rows)] * len(rows)
    scores, walls = [], []
    for c, r in zip(completions, rows):
        t0 = time.monotonic()
        scores.append(env.score(c, r))
        walls.append(time.monotonic() - t0)
    return scores, walls


def summary(scores, walls) -> dict:
    return {"programs": len(scores), "reward_1": sum(s.reward == 1.0 for s in scores),
            "false_timeouts": sum(bool(s.details.get("budget_exceeded")) for s in scores),
            "other_failures": sum(s.reward != 1.0 and not s.details.get("budget_exceeded") for s in scores),
            "mean_reward": round(statistics.mean(s.reward for s in scores), 3),
            "wall_per_program_s": round(statistics.median(walls), 2)}


def references(limit: int) -> tuple[list[str], list[dict]]:
    """HumanEval canonical solutions and MBPP test-split (ids 11-510) reference code, `limit` of each at most."""
    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as fh:
        he = [json.loads(line) for line in fh][:limit]
    mbpp = [r for r in map(json.loads, open(DATA / "mbpp" / "mbpp.jsonl")) if 11 <= r["task_id"] <= 510][:limit]
    return [r["canonical_solution"] for r in he] + [r["code"] for r in mbpp], he + mbpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sandbox", default="docker", choices=("docker", "local"))
    ap.add_argument("--pool-size", type=int, help="slots (containers / local workers); default: the sandbox's")
    ap.add_argument("--n", type=int, default=8, help="honest programs per phase")
    ap.add_argument("--cpu", type=float, default=2.5, help="CPU seconds each honest program needs, all tests")
    ap.add_argument("--host-load", type=int, default=2, help="busy processes on this machine in phase (c)")
    ap.add_argument("--refs", type=int, default=200, help="HumanEval and MBPP rows each, scored in (c)")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()
    figures = {"sandbox": args.sandbox, "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
               "cpu_per_program_s": args.cpu, "tests_per_program": TESTS, "host_load_procs": args.host_load,
               "load_avg_start": load_avg()}
    with make_sandbox(args.sandbox, **({"pool_size": args.pool_size} if args.pool_size else {})) as sb:
        env = envs.make("code", sandbox=sb)
        per_million = calibrate(sb)
        iterations = int(args.cpu / TESTS / per_million * 1e6)
        figures.update(pool=sb.parallelism, budget_s=env.timeout_s, cpu_per_million_iterations_s=round(per_million, 4))
        rows = [honest_row(iterations, k) for k in range(args.n)]
        completions = [f"```python\n{BURN}```"] * args.n
        phases = {}
        print(f"{args.sandbox} sandbox, pool {sb.parallelism}, budget {env.timeout_s} s, {os.cpu_count()} CPUs; "
              f"honest programs: {TESTS} tests, ~{args.cpu} s CPU in all; load {load_avg()}")
        for name, concurrent, spinners in (("alone", False, 0), ("concurrent", True, 0),
                                           ("concurrent+host_load", True, args.host_load)):
            stop = mp.Event()
            procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(spinners)]
            for p in procs:
                p.start()
            try:
                phases[name] = summary(*timed_scores(env, completions, rows, concurrent))
                phases[name]["load_avg"] = load_avg()
                if spinners and args.refs:
                    t0 = time.monotonic()
                    ref_code, ref_rows = references(args.refs)
                    scores = env.score_batch(ref_code, ref_rows)
                    bad = [(r["task_id"], s.details.get("statuses"))
                           for r, s in zip(ref_rows, scores) if s.reward != 1.0]
                    phases["references_" + name] = {
                        "rows": len(ref_rows), "reward_1": len(ref_rows) - len(bad), "not_1": bad,
                        "timeouts": sum(bool(s.details.get("budget_exceeded")) for s in scores),
                        "wall_s": round(time.monotonic() - t0, 1)}
            finally:
                stop.set()
                for p in procs:
                    p.join()
        base = phases["alone"]
        for name, ph in phases.items():
            if name.startswith("references"):
                print(f"  {name:28s} {ph['reward_1']}/{ph['rows']} reward 1.0, {ph['timeouts']} timeouts "
                      f"({ph['wall_s']} s); not 1.0: {ph['not_1'][:6]}")
                continue
            ph["wall_vs_alone"] = round(ph["wall_per_program_s"] / base["wall_per_program_s"], 2)
            print(f"  {name:28s} {ph['reward_1']}/{ph['programs']} reward 1.0, false timeouts "
                  f"{ph['false_timeouts']} (alone: {base['false_timeouts']}), wall/program "
                  f"{ph['wall_per_program_s']} s ({ph['wall_vs_alone']}x alone), load {ph['load_avg']}")
    figures.update(phases=phases, load_avg_end=load_avg())
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
