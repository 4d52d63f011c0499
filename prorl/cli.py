"""The `prorl` command line.

Each subcommand lives next to the code it drives, in a module exposing `add_arguments(parser)` and `run(args)`;
this file only lists them, so `prorl --help` stays fast (modules are imported when their command runs).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "envs": ("prorl.envs.cli", "List the registered environments"),
    "score": ("prorl.envs.cli", "Score completions in a JSONL file with the gym"),
    "eval-ifeval": ("prorl.envs.ifeval.report", "Official IFEval figures for a response file"),
    "train": ("prorl.train", "Train with the ProRL trainer (trl-style YAML config + overrides)"),
    "data": ("prorl.data.cli", "Build a training mixture from a recipe"),
    "eval": ("prorl.eval", "Sample n completions per prompt and report pass@k per env"),
    "demo": ("prorl.demo.run", "The embedded default: tiny model, SFT warm start, ProRL, before/after eval"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="prorl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nprorl: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"prorl {name}", description=COMMANDS[name][1])
    try:
        if name == "train":  # TrlParser owns the argument parsing of training
            return int(module.main(rest) or 0)
        module.add_arguments(cmd_parser, name)
        args = cmd_parser.parse_args(rest)
        return int(module.run(args, name) or 0)
    except BrokenPipeError:
        # The reader went away (`prorl eval-ifeval ... | head`): stop quietly with status 1, as the commands that
        # print through rich do. Point stdout at /dev/null so that the interpreter's final flush does not raise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
