"""`prorl data build RECIPE -o DIR`: build a training mixture from a recipe and print its card.

    prorl data build datasets/prorl-mix.yaml -o runs/data/prorl-mix                 # public files under $PRORL_DATA
    prorl data build datasets/prorl-mix.yaml -o runs/data/sample --sample-data      # the bundled samples
    prorl data build datasets/prorl-mix.yaml -o out --set sources.math.path=/data/deepscaler.json
    prorl data build RECIPE -o out --filter-model runs/demo/sft --samples 8 --keep '0.0<p<1.0'

`prorl data export BUILD -o DIR --format verl`: the built mixture as verl's Parquet files (prorl.data.export).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    b = sub.add_parser("build", help="Build a mixture (Parquet + card) from a YAML recipe",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("recipe", help="the YAML recipe, e.g. datasets/prorl-mix.yaml")
    b.add_argument("-o", "--output", required=True, help="output folder (train.parquet, heldout.parquet, card.*, "
                   "dropped.jsonl; pass_rates.jsonl with --filter-model)")
    b.add_argument("--sample-data", action="store_true",
                   help="read each source's `sample` file (datasets/samples/) instead of its public `path`")
    b.add_argument("--root", help="folder that relative paths in the recipe resolve against (default: its folder)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set sources.math.path=/data/deepscaler.json (repeatable); "
                        "sources.NAME=null leaves a source out, and a source the recipe lacks is added only "
                        "with its env (--set sources.NAME.env=ENV)")
    b.add_argument("--on-error", choices=("skip", "fail"), help="a bad row: report and skip it, or stop (default: "
                                                                "the recipe's on_error)")
    f = b.add_argument_group("difficulty filter (optional)")
    f.add_argument("--filter-model", metavar="DIR", help="local model estimating prompts' pass rates, each source's "
                   "in a seeded order until enough are kept for its part of the mixture (appended to "
                   "OUT/pass_rates.jsonl per chunk; a re-run with the same settings reuses them)")
    f.add_argument("--samples", type=int, default=8, metavar="K", help="completions per prompt (default 8)")
    f.add_argument("--keep", default="0.0<p<1.0", help="keep prompts with LOW<p<HIGH (default '0.0<p<1.0')")
    f.add_argument("--filter-temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    f.add_argument("--filter-max-new-tokens", type=int, default=1024, help="completion length cap (default 1024)")
    f.add_argument("--filter-batch-size", type=int, default=64, help="sequences per generate call (default 64)")
    b.add_argument("-q", "--quiet", action="store_true", help="print only errors and the output path")
    e = sub.add_parser("export", help="Write a built mixture in another trainer's format (verl's Parquet)")
    e.add_argument("build", help="a `prorl data build` output folder (or one .parquet / .jsonl file of its rows)")
    e.add_argument("-o", "--output", required=True, help="output folder (train.parquet; heldout.parquet when the "
                   "build has held-out rows)")
    e.add_argument("--format", default="verl", choices=("verl",), help="verl: rows {data_source, prompt, ability, "
                   "reward_model, extra_info} scored by prorl.trainer.verl_reward.compute_score (default)")


def _difficulty(args, console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from prorl.data.filter import DifficultyFilter, parse_keep
    from prorl.data.sampling import SamplingConfig

    low, high = parse_keep(args.keep)
    if not (Path(args.filter_model) / "config.json").is_file():  # else transformers would look it up on the Hub
        raise FileNotFoundError(f"--filter-model {args.filter_model}: not a local model folder (no config.json)")
    if args.samples < 1:
        raise ValueError("--samples must be >= 1")
    # One bar per source (each pool is scanned only until enough of its rows are kept, so no overall total is known
    # in advance): labelled with the source and its place, it counts the sequences sampled of at most the whole
    # pool's, and is marked complete when the build moves on to the next source.
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=args.quiet)
    tasks: list = []

    def on_source(name: str, k: int, n: int) -> None:
        if tasks:
            bar.update(tasks[-1], total=bar.tasks[-1].completed)  # its scan is over (most stop short of their pool)
        tasks.append(bar.add_task(f"estimating pass rates of {name} (source {k}/{n})", total=None))

    def progress(done: int, total: int) -> None:
        if not tasks:
            tasks.append(bar.add_task("estimating pass rates", total=None))
        bar.update(tasks[-1], completed=done, total=total)

    sampling = SamplingConfig(temperature=args.filter_temperature, top_p=1.0, max_new_tokens=args.filter_max_new_tokens,
                              batch_size=args.filter_batch_size)
    return DifficultyFilter(args.filter_model, samples=args.samples, low=low, high=high, sampling=sampling,
                            progress=progress, on_source=on_source, cache=Path(args.output) / "pass_rates.jsonl"), bar


def card_table(card: dict) -> Table:
    table = Table(title=f"{card['name']}: {card['rows']['train']} rows ({card['rows']['heldout']} held out), "
                        f"scale {card['scale']:.4g}")
    for col in ("source", "env", "read", "dropped", "held", "avail", "selected", "share (recipe)"):
        table.add_column(col, justify="left" if col in ("source", "env") else "right", no_wrap=True)
    for name, s in card["sources"].items():
        rshare = f" ({s['recipe_share']:.3f})" if s["recipe_share"] is not None else ""
        table.add_row(name, s["env"], str(s["read"]), str(sum(s["dropped"].values())), str(s["heldout"]),
                      str(s["available"]), str(s["selected"]), f"{s['share']:.3f}{rshare}")
    return table


def _kept(out: Path) -> str:
    """What a failed build left in its output folder: a build writes nothing there unless it completes."""
    note = ""
    if out.is_dir() and (out / "card.json").is_file():
        note += f"\n{out} still holds the previous build, as it was (its card.md says what it was built from)"
    if out.is_dir() and (out / "pass_rates.jsonl").is_file():
        note += (f"\nthe pass rates estimated so far are kept in {out / 'pass_rates.jsonl'}: a re-run with the "
                 f"same model and settings reuses them")
    return note


def _export(args: argparse.Namespace) -> int:
    from prorl.data.export import export

    try:
        written = export(args.build, args.output, args.format)
    except (ValueError, OSError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False,
                                   soft_wrap=True)
        return 2
    print(f"wrote {', '.join(f'{args.output}/{f} ({n} rows)' for f, n in written.items())} in {args.format}'s format")
    return 0


def run(args: argparse.Namespace, name: str) -> int:
    if args.data_command == "export":
        return _export(args)
    from prorl.data.build import DataError, build
    from prorl.data.card import card_dict, discard_stage, make_stage
    from prorl.data.recipe import RecipeError, load_recipe

    console = Console(stderr=False, quiet=False)
    err = Console(stderr=True)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        difficulty, bar = _difficulty(args, console) if args.filter_model else (None, None)
        try:  # an unusable output folder fails before the work (and nothing is made there until the build is done)
            discard_stage(*make_stage(Path(args.output)))
        except OSError as exc:
            raise OSError(f"-o {args.output}: cannot make the output folder there: {exc.strerror}") from None
        with console.status("building", spinner="dots") as status:

            def log(msg: str, transient: bool = False) -> None:
                if args.quiet:
                    return
                status.update(msg)
                if not transient:
                    console.print(f"[dim]{msg}[/]", highlight=False)

            if bar is not None:
                status.stop()  # the filter's progress bar takes the live display
                with bar:
                    result = build(recipe, args.output, sample_data=args.sample_data, root=args.root,
                                   on_error=args.on_error, difficulty=difficulty, log=log)
                    for t in bar.tasks:  # the last source's scan is over too (most stop short of their pool)
                        bar.update(t.id, total=t.completed)
            else:
                result = build(recipe, args.output, sample_data=args.sample_data, root=args.root,
                               on_error=args.on_error, log=log)
    except (RecipeError, DataError, ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc) + _kept(Path(args.output)))}", markup=True,
                  highlight=False, soft_wrap=True)
        return 2
    invalid = [i for i in result.issues if i.reason == "invalid"]
    for issue in invalid[:10]:
        err.print(f"[yellow]skipped[/] {escape(str(issue))}", markup=True, highlight=False, soft_wrap=True)
    if len(invalid) > 10:
        err.print(f"... and {len(invalid) - 10} more invalid rows (all in {args.output}/dropped.jsonl)")
    if not args.quiet:
        console.print(card_table(card_dict(result)))
    if not result.train:  # saved all the same: the card and dropped.jsonl say why
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(card_dict(result)["dropped"].items())) or "none"
        empty = [s for s in result.stats.values() if s.available == 0 and s.needed != 0]  # not: none generated
        why = "".join(f"; sources.{s.name} has no usable row ({s.read} read"
                      + "".join(f", {k}: {v}" for k, v in sorted(s.dropped.items())) + ")"
                      + (f": its `where` {result.recipe.source(s.name).where} selects none of them (--set "
                         f"sources.{s.name}.where=null to read every row)" if s.dropped.get("not_selected") == s.read
                         else "") for s in empty)
        if empty and result.recipe.shortfall == "scale" and len(empty) < len(result.stats):
            why += " and shortfall=scale scales every source down with it (fix or remove it)"
        err.print("[bold red]error:[/] " + escape(f"no training rows in the mixture (rows dropped: {dropped}){why}; "
                                                  f"see {args.output}/card.md and dropped.jsonl"), markup=True, highlight=False, soft_wrap=True)
        return 2
    console.print(f"wrote {args.output}/train.parquet ({len(result.train)} rows)"
                  + (f", heldout.parquet ({len(result.heldout)} rows)" if result.heldout else "")
                  + ", card.md, card.json, dropped.jsonl")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="prorl data")
    add_arguments(parser, "data")
    sys.exit(run(parser.parse_args(), "data"))
