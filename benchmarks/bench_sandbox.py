"""Sandbox throughput: the same N small programs via (a) one `docker run --rm` each, with the same limits as the
pool's containers, and (b) the DockerSandbox warm pool, interleaved over the same stretch of time (the machine is
shared). Both run with the same client concurrency and check every output. Prints both rates and the ratio (targets: (b) >= 200 programs/s and >= 50x (a)).

    .venv/bin/python benchmarks/bench_sandbox.py [--n 200] [--rounds 10] [--pool-size 4] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prorl.sandbox.container import default_image
from prorl.sandbox.docker import DockerSandbox, DockerSandboxConfig


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


def pool_cpu_s(container_ids: list[str]) -> float | None:
    """CPU seconds used so far by the pool's containers, dockerd, containerd(-shim) and this process (cgroup v1
    or v2; None where the counters cannot be read). Spent per program, it bounds the rate of an idle machine."""
    total = 0.0
    for cid in container_ids:  # (a container replaced meanwhile is skipped by the caller)
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        if v1.exists():
            total += int(v1.read_text()) / 1e9
        elif v2.exists():
            total += int(v2.read_text().split("usage_usec")[1].split()[0]) / 1e6
        else:
            return None
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() in ("dockerd", "containerd", "containerd-shim"):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return total + usage.ru_utime + usage.ru_stime


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
    ap.add_argument("--rounds", type=int, default=10, help="(a) chunks, each followed by one full pass of (b)")
    ap.add_argument("--docker", default=shutil.which("docker") or "docker", help="docker CLI for (a)")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()
    progs = programs(args.n)
    cfg = DockerSandboxConfig(image=default_image(), pool_size=args.pool_size)  # PRORL_SANDBOX_IMAGE, else py3

    def pool_pass(sb: DockerSandbox) -> tuple[float, int]:
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.pool_size) as ex:
            outs = list(ex.map(lambda p: sb.run(p[0], stdin=p[1]).stdout, progs))
        return time.monotonic() - t0, sum(o.strip() == p[2] for o, p in zip(outs, progs))

    # The machine is shared and its load changes by the second: (a) runs in `--rounds` chunks and a full pass of
    # (b) over all N programs follows each chunk, so both are measured over the same stretch of time.
    t_start = time.monotonic()
    time_a = time_b = 0.0
    correct_a, correct_b, passes, cpu_per_program = 0, [], [], []
    with DockerSandbox(cfg) as sb:
        start_s = time.monotonic() - t_start
        sb.run("print(0)")
        chunks = [progs[i::args.rounds] for i in range(args.rounds)]
        for chunk in chunks:
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.pool_size) as ex:
                outs_a = list(ex.map(lambda p: docker_run_once(cfg, args.docker, p[0], p[1]), chunk))
            time_a += time.monotonic() - t0
            correct_a += sum(o.strip() == p[2] for o, p in zip(outs_a, chunk))
            ids = [slot.container.id for slot in sb._slots if slot.container is not None]
            cpu0 = pool_cpu_s(ids)
            wall, ok = pool_pass(sb)
            same = ids == [slot.container.id for slot in sb._slots if slot.container is not None]
            cpu1 = pool_cpu_s(ids)
            if cpu0 is not None and cpu1 is not None and same and len(ids) == args.pool_size:
                cpu_per_program.append((cpu1 - cpu0) / args.n)
            time_b += wall
            correct_b.append(ok)
            passes.append(args.n / wall)
    rate_a, rate_b = args.n / time_a, args.rounds * args.n / time_b
    figures = {"n": args.n, "rounds": args.rounds, "pool_size": args.pool_size, "cpus": os.cpu_count(),
               "load_avg": os.getloadavg()[0], "docker_run_per_s": round(rate_a, 2), "docker_run_correct": correct_a,
               "pool_per_s": round(rate_b, 1), "pool_pass_min_per_s": round(min(passes), 1),
               "pool_pass_max_per_s": round(max(passes), 1), "pool_correct": sum(correct_b),
               "pool_start_s": round(start_s, 2), "ratio": round(rate_b / rate_a, 1)}
    print(f"(a) docker run --rm, one per program: {rate_a:8.2f} programs/s ({correct_a}/{args.n} correct)")
    print(f"(b) DockerSandbox warm pool ({args.pool_size}):    {rate_b:8.1f} programs/s over {args.rounds} passes "
          f"(each {min(passes):.0f}-{max(passes):.0f}/s; {sum(correct_b)}/{args.rounds * args.n} correct; "
          f"pool start {start_s:.1f} s)")
    print(f"ratio (b)/(a): {rate_b / rate_a:.1f}x   targets: (b) >= 200/s, ratio >= 50x   "
          f"(1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    if cpu_per_program:
        cpu_ms = 1000 * sorted(cpu_per_program)[len(cpu_per_program) // 2]
        figures.update(pool_cpu_ms_per_program=round(cpu_ms, 2),
                       pool_idle_capacity_per_s=round(1000 * (os.cpu_count() or 1) / cpu_ms))
        print(f"(b) CPU per program (containers + dockerd + containerd + this process): {cpu_ms:.2f} ms, so "
              f"~{1000 * (os.cpu_count() or 1) / cpu_ms:.0f} programs/s if this machine's CPUs were ours alone")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
