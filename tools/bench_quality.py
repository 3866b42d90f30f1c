"""What a time budget buys: train a recipe for N minutes on the real files, then measure it.

    SLMTRAIN_DATA=../shared/data python tools/bench_quality.py recipes/tinystories.toml --minutes 10
    python tools/bench_quality.py recipes/tinystories.toml --minutes 10 --set optim.name='adamw' --json out.jsonl
    python tools/bench_quality.py --table out.jsonl        # a markdown table of the results gathered there

Runs `slmtrain run RECIPE --set train.max_minutes=N` in this process (a fresh run directory under --out), then
evaluates the final checkpoint on every window of the validation split (not only the recipe's eval batches),
and prints validation loss and bits per byte, steps (and the count the budget fitted), tokens, tokens/s,
wall time of the training loop against the budget, the last LR against the schedule's floor, and three
sampled stories. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from slmtrain import cli
from slmtrain import config as config_mod
from slmtrain.checkpoint import find_resume
from slmtrain.ckptload import load_model
from slmtrain.evaluate import evaluate_checkpoint
from slmtrain.fsio import read_json
from slmtrain.generate import generate
from slmtrain.log import read_jsonl

PROMPTS = ("Once upon a time", "Lily and her dog", "Tom wanted to")


def measure(recipe: str, minutes: float, sets: list[str], out: Path, name: str) -> dict:
    run_dir = out / name
    args = ["run", recipe, "--run-dir", str(run_dir), "--set", f"train.max_minutes={minutes}", "--set",
            "log.progress=false"]
    for s in sets:
        args += ["--set", s]
    started = time.monotonic()
    code = cli.main(args)
    wall = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"the run exited {code}")
    ckpt = find_resume(run_dir / "checkpoints", log=lambda _m: None)
    assert ckpt is not None
    meta = read_json(ckpt / "meta.json")
    cfg = config_mod.load(run_dir / "recipe.toml")
    result, _ = evaluate_checkpoint(ckpt)
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    plan = next((r for r in records if r.get("event") == "budget_plan"), {})
    model, _, tok = load_model(ckpt)
    samples = []
    for i, prompt in enumerate(PROMPTS):
        gen = torch.Generator().manual_seed(1000 + i)
        ids = tok.encode(prompt)
        new = list(generate(model, ids, 160, temperature=0.8, top_k=40, eos_id=tok.eos_id, generator=gen))
        samples.append(tok.decode(ids + new))
    trainer = meta["trainer"]
    summary = next(r for r in reversed(records) if r.get("event") == "summary")
    loop_s = summary["train_seconds"]  # final evaluation and save included
    return {
        "name": name, "recipe": recipe, "sets": sets, "minutes": minutes,
        "val_loss": result.loss, "val_bpb": result.bits_per_byte, "val_tokens": result.tokens,
        "steps": trainer["step"], "planned_steps": trainer.get("planned_steps"), "tokens": trainer["tokens"],
        "tokens_per_s": trainer["tokens"] / max(loop_s, 1e-9), "loop_seconds": loop_s,
        "budget_seconds": minutes * 60, "budget_error": loop_s / (minutes * 60) - 1, "wall_seconds": wall,
        "last_lr": train[-1]["lr"] if train else None,
        "floor_lr": cfg.optim.lr * cfg.schedule.min_lr_ratio, "step_seconds": plan.get("step_seconds"),
        "params": model.num_params(), "samples": samples,
    }


def report(r: dict) -> str:
    lines = [
        f"== {r['name']}: {r['recipe']} {' '.join(r['sets'])}",
        f"validation: {r['val_loss']:.4f} nats/token, {r['val_bpb']:.4f} bits per byte "
        f"({r['val_tokens']:,} tokens, the whole split)",
        f"steps {r['steps']} (fitted {r['planned_steps']}) | {r['tokens']:,} tokens | {r['tokens_per_s']:,.0f} tok/s "
        f"| {r['params'] / 1e6:.2f}M params",
        f"training loop {r['loop_seconds']:.1f}s of a {r['budget_seconds']:.0f}s budget ({100 * r['budget_error']:+.1f}%)"
        f" | last LR {r['last_lr']:.3g}, floor {r['floor_lr']:.3g}",
    ]
    lines += [f"sample {i + 1}: {s}" for i, s in enumerate(r["samples"])]
    return "\n".join(lines)


def table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    out = ["| run | changes | val bpb | val loss | steps | tokens | tokens/s | loop / budget |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["name"].rsplit("-", 2)[0]
        out.append(f"| {name} | {' '.join(f'`{s}`' for s in r['sets']) or '(recipe)'} | {r['val_bpb']:.4f} | "
                   f"{r['val_loss']:.4f} | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | "
                   f"{r['loop_seconds']:.0f} s / {r['budget_seconds']:.0f} s |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?")
    p.add_argument("--table", help="print a markdown table of the JSON lines in this file and exit")
    p.add_argument("--minutes", type=float, help="the time budget (train.max_minutes)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value, repeatable")
    p.add_argument("--name", default="", help="label of this run (default: from the --set values)")
    p.add_argument("--out", default="runs/bench_quality", help="parent of the run directories")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return 0
    if not args.recipe or not args.minutes:
        p.error("give a RECIPE and --minutes (or --table FILE)")
    if "SLMTRAIN_DATA" not in os.environ and Path("../shared/data").is_dir():
        os.environ["SLMTRAIN_DATA"] = str(Path("../shared/data").resolve())
    name = args.name or ("_".join(s.replace("'", "").replace("=", "-") for s in args.sets) or "recipe")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    r = measure(args.recipe, args.minutes, args.sets, Path(args.out), f"{name}-{stamp}")
    print(report(r), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
