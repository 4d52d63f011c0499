"""Sandbox throughput: the same N small programs via (a) one `docker run --rm` each, with the same limits as the
pool's containers, and (b) the DockerSandbox warm pool (measured before and after (a)). Both run with the same
client concurrency and check every output. Prints both rates and the ratio (targets: (b) >= 200 programs/s and >= 50x (a)).

    .venv/bin/python benchmarks/bench_sandbox.py [--n 200] [--pool-size 4] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from prorl.sandbox.docker import IMAGE, DockerSandbox, DockerSandboxConfig


def programs(n: int) -> list[tuple[str, str, str]]:
    """(program, stdin, expected stdout): small, varied, deterministic."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(("n = int(input())\nprint(sum(range(n)))", f"{i * 10}\n", str(sum(range(i * 10)))))
        elif kind == 1:
            out.append(("s = input()\nprint(s[::-1].upper())", f"word{i}\n", f"word{i}"[::-1].upper()))
        elif kind == 2:
            out.append(("import math\na, b = map(int, input().split())\nprint(math.gcd(a, b))",
                        f"{i * 6} {i * 4 + 2}\n", str(__import__("math").gcd(i * 6, i * 4 + 2))))
        else:
            out.append(("xs = sorted(map(int, input().split()))\nprint(*xs)", " ".join(str((i * 7 + k * 13) % 50)
                        for k in range(8)) + "\n", " ".join(map(str, sorted((i * 7 + k * 13) % 50 for k in range(8))))))
    return out


def docker_run_once(cfg: DockerSandboxConfig, docker: str, program: str, stdin: str) -> str:
    mem = cfg.memory_mb + cfg.tmpfs_mb + 96
    cmd = [docker, "run", "--rm", "-i", "--network", "none", "--read-only", "--user", "1000:1000",
           "--tmpfs", f"/sandbox:rw,nosuid,nodev,noexec,size={cfg.tmpfs_mb}m,uid=1000,gid=1000",
           "--memory", f"{mem}m", "--memory-swap", f"{mem}m", "--pids-limit", str(cfg.pids_limit),
           "--cpus", str(cfg.cpus), "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
           "--log-driver", "none", cfg.image, "python3", "-c", program]
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="programs per method")
    ap.add_argument("--pool-size", type=int, default=4, help="warm containers (and client threads for both)")
    ap.add_argument("--docker", default=shutil.which("docker") or "docker", help="docker CLI for (a)")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()
    progs = programs(args.n)
    cfg = DockerSandboxConfig(image=IMAGE, pool_size=args.pool_size)

    def pool_pass(sb: DockerSandbox) -> tuple[float, int]:
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.pool_size) as ex:
            outs = list(ex.map(lambda p: sb.run(p[0], stdin=p[1]).stdout, progs))
        return args.n / (time.monotonic() - t0), sum(o.strip() == p[2] for o, p in zip(outs, progs))

    # The machine is shared: (b) is measured right before and right after (a), and both are reported.
    t_start = time.monotonic()
    with DockerSandbox(cfg) as sb:
        start_s = time.monotonic() - t_start
        sb.run("print(0)")
        rate_b1, correct_b1 = pool_pass(sb)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.pool_size) as ex:
            outs_a = list(ex.map(lambda p: docker_run_once(cfg, args.docker, p[0], p[1]), progs))
        rate_a = args.n / (time.monotonic() - t0)
        correct_a = sum(o.strip() == p[2] for o, p in zip(outs_a, progs))
        rate_b2, correct_b2 = pool_pass(sb)
    rate_b = (rate_b1 + rate_b2) / 2
    figures = {"n": args.n, "pool_size": args.pool_size, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
               "docker_run_per_s": round(rate_a, 2), "docker_run_correct": correct_a,
               "pool_per_s_before": round(rate_b1, 1), "pool_per_s_after": round(rate_b2, 1),
               "pool_correct": min(correct_b1, correct_b2), "pool_start_s": round(start_s, 2),
               "ratio": round(rate_b / rate_a, 1)}
    print(f"(a) docker run --rm, one per program: {rate_a:8.2f} programs/s ({correct_a}/{args.n} correct)")
    print(f"(b) DockerSandbox warm pool ({args.pool_size}):    {rate_b1:8.1f} before (a), {rate_b2:.1f} after (a) "
          f"programs/s ({correct_b1}+{correct_b2}/{2 * args.n} correct; pool start {start_s:.1f} s)")
    print(f"ratio mean(b)/(a): {rate_b / rate_a:.1f}x   targets: (b) >= 200/s, ratio >= 50x   "
          f"(1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
