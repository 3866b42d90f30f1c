"""`slmtrain` command line: thin argparse dispatch and exit codes.

Exit codes: 0 done, 75 preempted after a durable save, 2 bad input, 1 anything else, 130 aborted.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import traceback
from pathlib import Path

from slmtrain import __version__
from slmtrain.errors import CheckpointError, SlmError, UserError

EPILOG = """exit codes: 0 done | 75 preempted after a durable checkpoint (requeue me) | 2 bad input |
1 anything else (e.g. a checkpoint that does not verify) | 130 aborted by a second Ctrl-C"""


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one recipe value (TOML syntax; repeatable), e.g. --set train.max_steps=200")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slmtrain", description="Pretrain small GPT-style language models; survive preemption; prove "
        "checkpoints sound.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"slmtrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train from a recipe", epilog=EPILOG,
                       description="Train a model from a TOML recipe into a run directory (default "
                       "run.out_dir/run.name). With --resume, continue that run if it already exists.")
    p.add_argument("recipe", help="path to a .toml recipe, e.g. recipes/quickstart.toml")
    _add_set(p)
    p.add_argument("--run-dir", help="run directory (default: OUT_DIR/NAME from the recipe)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory if it exists")

    p = sub.add_parser("resume", help="continue a run from its newest sound checkpoint", epilog=EPILOG,
                       description="Continue a run after a crash or preemption. Reads RUN_DIR/recipe.toml (never "
                       "the original recipe), skips torn or corrupt checkpoints, and continues bit for bit.")
    p.add_argument("run_dir", help="the run directory, e.g. runs/quickstart")
    _add_set(p)

    p = sub.add_parser("prepare", help="only tokenize the data of a recipe (cached for later runs)",
                       description="Build or reuse the tokenizer and the memory-mapped token files of a recipe "
                       "and report the throughput.")
    p.add_argument("recipe")
    _add_set(p)

    p = sub.add_parser("status", help="show a run's state, checkpoints and last metrics")
    p.add_argument("run_dir")

    from slmtrain import use_cli

    use_cli.add_parsers(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    import slmtrain

    # With --resume the given recipe is what continues the run: a change to it outside the keys that may
    # change on resume is refused against the checkpoint, never silently ignored.
    return slmtrain.train(slmtrain.load_recipe(args.recipe, args.overrides), args.run_dir, resume=bool(args.resume))


def _cmd_resume(args: argparse.Namespace) -> int:
    import slmtrain

    return slmtrain.resume(args.run_dir, args.overrides)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from slmtrain import config
    from slmtrain.data.prepare import prepare_data

    cfg = config.load(args.recipe, args.overrides)
    prepared = prepare_data(cfg, log=lambda m: print(m, file=sys.stderr))
    state = "reused" if prepared.reused else "built"
    print(f"{state} {prepared.dir}: {prepared.tokens:,} tokens, vocab {prepared.tokenizer.vocab_size}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from slmtrain.runinfo import status_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} does not exist or is not a directory: pass a run directory, e.g. runs/quickstart")
    print(status_report(run_dir))
    return 0


def _paragraph(msg: str) -> str:
    # Paths stay whole, so they can be copied from the message.
    return textwrap.fill(" ".join(msg.split()), width=100, subsequent_indent="  ", break_on_hyphens=False,
                         break_long_words=False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"run": _cmd_run, "resume": _cmd_resume, "prepare": _cmd_prepare, "status": _cmd_status}
    from slmtrain import use_cli

    handlers.update(use_cli.HANDLERS)
    try:
        return handlers[args.command](args)
    except UserError as e:
        print("error: " + _paragraph(str(e)), file=sys.stderr)
        return e.exit_code
    except CheckpointError as e:
        print("error: " + _paragraph(str(e)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except SlmError as e:
        print("error: " + _paragraph(str(e)), file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug or an environment failure: keep the traceback for reports
        from slmtrain.diskspace import plain_write_error

        if (plain := plain_write_error(e)) is not None:  # a full disk or a limit: the user's to fix, not a bug
            print("error: " + _paragraph(plain), file=sys.stderr)
            return 1
        traceback.print_exc()
        print("error: " + _paragraph(f"{type(e).__name__}: {e}"), file=sys.stderr)
        return 1
