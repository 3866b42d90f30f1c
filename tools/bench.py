"""The benchmark suite: the machine's ceilings, slmtrain against a plain loop, and the rest of the pipeline.

    python tools/bench.py                          # everything (about an hour on 2 cores)
    python tools/bench.py --only ceilings,train    # sections: ceilings, train, mfu, recipes, profile,
                                                   #   fastpaths, checkpoint, prepare, generate
    python tools/bench.py --reps 5 --json bench.json

Prints a table per section and writes every figure to JSON (default runs/bench.json). Asserts nothing.

- ceilings: fp32 and bf16 matmul GFLOP/s at the training shapes (tokens x width x {3,4}width and x vocab),
  into a preallocated output, fp32 through both CPU libraries (the BLAS, oneDNN: the ceiling is the faster),
  and memory bandwidth (a large copy: bytes read + written per second).
- train: 4L/4H/d128 and 6L/8H/d256 (gpt2 shape without biases, tied head, ctx 256, batch 16, vocab 4096):
  `slmtrain run` (the whole framework: data loader, step, logging, preemption checks), each run a process of
  its own as a user starts it, in three configurations (CONFIGS: the fast paths the shipped CPU recipes use,
  fp32 compiled, fp32 eager), and the plain fp32 eager loop of tools/bench_reference.py in this process,
  alternating, same thread count. Figures per 10-step interval after the first interval (compilation and
  warm-up); median and spread over all. MFU is model FLOPs (6 x matmul parameters incl. the head, plus
  attention's 6 x 2 x layers x ctx x width per token) over the ceiling of the dtype the run computes in,
  measured just before that run.
- mfu: fp32 MFU with the ceiling timed between windows of 10 steps in the training process itself
  (tools/bench_mfu.py): slmtrain's step compiled and eager, and the reference loop, a process each.
- recipes: the shipped recipes' models on their own data, tokens/s and MFU.
- profile: where a step's time goes (torch.profiler, top ops by self CPU time), slmtrain and reference.
- fastpaths: each fast path on and off, tokens/s side by side; slmtrain's compiled GELU and cross-entropy
  against torch's.
- checkpoint / prepare / generate: save stall (sync, async) and latencies, `prepare` MB/s on
  ../shared/data/tinystories, generation tokens/s with and without the KV cache (eager, compiled, compiled
  int8).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_reference  # noqa: E402
from bench_mfu import (SUITE_WIDTHS, WINDOW, MatmulCeiling, flops_per_token, matmul_shapes,  # noqa: E402
                       median_seconds)

from slmtrain import cli  # noqa: E402
from slmtrain.log import read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"4L4H-d128": (4, 4, 128), "6L8H-d256": (6, 8, 256)}
CTX, BATCH, VOCAB, INTERVAL = 256, 16, 4096, 10
SHARED = Path(os.environ.get("SLMTRAIN_SHARED_DATA", REPO.parent / "shared" / "data"))


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _fmt(s: dict[str, float], unit: str = "", scale: float = 1.0, digits: int = 0) -> str:
    return (f"{s['median'] * scale:,.{digits}f}{unit} [{s['min'] * scale:,.{digits}f}-{s['max'] * scale:,.{digits}f}]")


# ------------------------------------------------------------------------------------------- ceilings
def ceilings(reps: int) -> dict[str, Any]:
    shapes = matmul_shapes(BATCH * CTX, SUITE_WIDTHS, VOCAB)
    out: dict[str, Any] = {"shapes": {}}
    for dtype in (torch.float32, torch.bfloat16):
        ceiling, best = MatmulCeiling(shapes, dtype), 0.0
        for lib in ceiling.libraries:
            rates = ceiling.per_shape(max(3, reps), lib)
            # torch.mm runs bf16 in oneDNN already: a library is named only where there is a choice.
            name = f" {lib}" if len(ceiling.libraries) > 1 else ""
            out["shapes"].update({f"{m}x{k}x{n} {str(dtype)[6:]}{name}": r for (m, k, n), r in zip(shapes, rates)})
            out[f"{str(dtype)[6:]}_{lib}_gflops"] = max(rates)
            best = max(best, *rates)
        out[f"{str(dtype)[6:]}_gflops"] = best
    x = torch.empty(64 * 2**20 // 4)  # 64 MiB, far past the caches
    y = torch.empty_like(x)
    out["bandwidth_gbs"] = 2 * x.numel() * 4 / median_seconds(lambda: y.copy_(x), max(5, reps)) / 1e9
    return out


def print_ceilings(c: dict[str, Any]) -> None:
    print("\n== ceilings")
    for k, v in c["shapes"].items():
        print(f"  matmul {k:31s} {v:8.1f} GFLOP/s")
    libs = ", ".join(f"{k.split('_')[1]} {v:.1f}" for k, v in c.items()
                     if k.startswith("float32_") and k.count("_") == 2)
    print(f"  fp32 ceiling {c['float32_gflops']:.1f} GFLOP/s (the faster library; {libs}), "
          f"bf16 ceiling {c['bfloat16_gflops']:.1f} GFLOP/s, memory bandwidth {c['bandwidth_gbs']:.1f} GB/s")


# ------------------------------------------------------------------------------------------ training
SHAPE_RECIPE = """
[run]
seed = 1
device = "cpu"
{run}
[data]
source = "builtin"
builtin_train_stories = 4000
builtin_valid_stories = 100
cache_dir = "{cache}"
[tokenizer]
vocab_size = 4096
train_documents = 4000
[model]
flavour = "gpt2"
bias = false
n_layer = {n_layer}
n_head = {n_head}
n_embd = {d}
seq_len = 256
vocab_size = 4096
[train]
batch_size = 16
max_steps = {steps}
[schedule]
warmup_steps = 10
[eval]
every_steps = 0
batches = 1
samples = 0
[checkpoint]
every_steps = 0
[log]
every_steps = 10
progress = false
"""


def _shape_recipe(work: Path, name: str, n_layer: int, n_head: int, d: int, steps: int) -> Path:
    """SHAPE_RECIPE for one model shape, written to work/NAME.toml, its data cached in work/cache."""
    recipe = work / f"{name}.toml"
    recipe.write_text(SHAPE_RECIPE.format(run="", cache=(work / "cache").as_posix(), n_layer=n_layer,
                                          n_head=n_head, d=d, steps=steps))
    return recipe


def _slmtrain(args: list[str], in_process: bool = False) -> None:
    """`slmtrain ARGS` in a process of its own, as a user runs it, so that process-wide settings (the allocator's,
    run.reuse_host_memory) stay out of this one, where the reference loop runs; or here, for the profiler."""
    if not in_process:
        _python(["-m", "slmtrain", *args])
    elif (code := cli.main(args)) != 0:
        raise SystemExit(f"slmtrain {' '.join(args)} exited {code}")


def _python(args: list[str]) -> str:
    """`python ARGS` in a process of its own, from the repository; its stdout (its stderr's end if it fails)."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{proc.stderr[-3000:]}\npython {' '.join(args)} exited {proc.returncode}")
    return proc.stdout


def slmtrain_rates(work: Path, name: str, n_layer: int, n_head: int, d: int, steps: int,
                   sets: list[str], in_process: bool = False) -> dict[str, Any]:
    """tokens/s per 10-step interval of a real `slmtrain run` (the final eval and save are not in them)."""
    recipe = _shape_recipe(work, name, n_layer, n_head, d, steps)
    run_dir = work / f"run-{name}-{time.monotonic_ns()}"
    args = ["run", str(recipe), "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]
    _slmtrain(args, in_process)
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    by_step = {r["step"]: r for r in train}
    rates = [by_step[s]["tokens_per_s"] for s in range(2 * INTERVAL, steps + 1, INTERVAL) if s in by_step]
    first = by_step.get(INTERVAL, by_step[min(by_step)])
    return {"rates": rates, "first_interval_tokens_per_s": first["tokens_per_s"]}


def reference_rates(data: np.ndarray, n_layer: int, n_head: int, d: int, steps: int) -> dict[str, Any]:
    times = bench_reference.train(data, vocab=VOCAB, ctx=CTX, n_layer=n_layer, n_head=n_head, d=d, batch=BATCH,
                                  steps=steps, log_every=INTERVAL)
    tokens = BATCH * CTX * INTERVAL
    rates = [tokens / sum(times[i:i + INTERVAL]) for i in range(INTERVAL, steps - INTERVAL + 1, INTERVAL)]
    return {"rates": rates}


def _train_data(work: Path) -> np.ndarray:
    """The builtin corpus tokenized with the same 4096 BPE, as the reference loop's memmap."""
    from slmtrain import config
    from slmtrain.data.prepare import open_tokens, prepare_data

    recipe = SHAPE_RECIPE.format(run="", cache=(work / "cache").as_posix(), n_layer=1, n_head=1, d=8, steps=1)
    prepared = prepare_data(config.loads(recipe), log=lambda _m: None)
    return open_tokens(prepared.train_path)


# slmtrain's configurations raced against the reference: --set values, and the dtype whose ceiling its MFU uses.
# "fast paths" is what the shipped CPU recipes run: compiled, and bf16 autocast where the hardware wins with it.
CONFIGS: dict[str, tuple[list[str], str]] = {
    "fast paths": (["run.compile=true", "run.precision='auto'"], "auto"),
    "fp32 compiled": (["run.compile=true"], "float32"),
    "fp32 eager": ([], "float32"),
}


def _auto_dtype() -> str:
    from slmtrain.train import pick_precision

    return "bfloat16" if pick_precision("auto", torch.device("cpu")) == "bf16" else "float32"


def train_section(work: Path, reps: int, steps: int, sets: list[str]) -> dict[str, Any]:
    """Each run's MFU is over the ceilings measured just before it: this machine's speed drifts by a quarter
    within minutes (its fp32 matmul ceiling too), and a ceiling from another moment would put that in the MFU."""
    data = _train_data(work)
    out: dict[str, Any] = {}
    sides = {**{c: (conf_sets, _auto_dtype() if dt == "auto" else dt) for c, (conf_sets, dt) in CONFIGS.items()},
             "reference": (None, "float32")}
    for name, (n_layer, n_head, d) in SHAPES.items():
        fpt = flops_per_token(n_layer, d, VOCAB, CTX)
        rates: dict[str, list[float]] = {c: [] for c in sides}
        mfus: dict[str, list[float]] = {c: [] for c in sides}
        fp32_mfus: dict[str, list[float]] = {c: [] for c in sides}
        ratios: dict[str, list[float]] = {c: [] for c in CONFIGS}
        fp32_ceilings = []
        for rep in range(reps):  # A, B, C, R, A, B, C, R: drift on a shared machine hits them alike
            medians = {}
            for side, (side_sets, dtype) in sides.items():
                ceil = ceilings(3)
                fp32_ceilings.append(ceil["float32_gflops"])
                if side_sets is None:
                    r = reference_rates(data, n_layer, n_head, d, steps)["rates"]
                else:
                    r = slmtrain_rates(work, name, n_layer, n_head, d, steps, side_sets + sets)["rates"]
                rates[side] += r
                medians[side] = statistics.median(r)
                mfus[side].append(medians[side] * fpt / (ceil[f"{dtype}_gflops"] * 1e9))
                fp32_mfus[side].append(medians[side] * fpt / (ceil["float32_gflops"] * 1e9))
            for conf in CONFIGS:
                ratios[conf].append(medians[conf] / medians["reference"])
        row: dict[str, Any] = {"flops_per_token": fpt, "fp32_ceilings_gflops": _spread(fp32_ceilings), "configs": {}}
        for side, (_, dtype) in sides.items():
            entry = {"tokens_per_s": _spread(rates[side]), "dtype": dtype, "mfu": _spread(mfus[side]),
                     "mfu_of_fp32_ceiling": _spread(fp32_mfus[side])}
            if side in ratios:
                entry["ratio"] = _spread(ratios[side])
            row["configs"][side] = entry
        out[name] = row
    return out


def print_train(t: dict[str, Any], title: str = "train: slmtrain vs the plain reference loop") -> None:
    print(f"\n== {title} (tokens/s per 10-step interval: median [min-max]; ratio to the reference per pair; "
          f"MFU of the ceiling of the dtype it computes in, measured before each run)")
    for name, r in t.items():
        print(f"  {name} (fp32 ceiling before the runs: {_fmt(r['fp32_ceilings_gflops'], ' GFLOP/s')}):")
        for conf, e in r["configs"].items():
            ms = 1000 * BATCH * CTX / e["tokens_per_s"]["median"]
            ratio = f" | ratio {_fmt(e['ratio'], 'x', digits=2)}" if "ratio" in e else ""
            mfu = f" | MFU {_fmt(e['mfu'], '%', 100)} ({e['dtype']})"
            print(f"    {conf:14s} {_fmt(e['tokens_per_s'])} tokens/s ({ms:.0f} ms/step){ratio}{mfu}")


# ------------------------------------------------------------------------------------ interleaved MFU
MFU_SIDES = {"fp32 compiled": "compiled", "fp32 eager": "eager", "reference": "reference"}


def mfu_section(work: Path, reps: int, windows: int) -> dict[str, Any]:
    """fp32 MFU with the ceiling timed between windows of steps in the training process (tools/bench_mfu.py):
    slmtrain's step compiled and eager, and the reference loop, one process each, alternating."""
    out: dict[str, Any] = {}
    for name, (n_layer, n_head, d) in SHAPES.items():
        recipe = _shape_recipe(work, f"mfu-{name}", n_layer, n_head, d, 10**6)
        pooled: dict[str, dict[str, list[float]]] = {s: {"mfu": [], "gflops": [], "ceilings": [], "medians": []}
                                                      for s in MFU_SIDES}
        for _ in range(reps):
            for side, flag in MFU_SIDES.items():
                said = _python([str(REPO / "tools" / "bench_mfu.py"), "--side", flag, "--recipe", str(recipe),
                                "--cache", str(work / "cache"), "--windows", str(windows)])
                r = json.loads(said.splitlines()[-1])
                for key in ("mfu", "gflops", "ceilings"):
                    pooled[side][key] += r[key]
                pooled[side]["medians"].append(statistics.median(r["mfu"]))
        out[name] = {side: {k: _spread(v) for k, v in lists.items()} for side, lists in pooled.items()}
    return out


def print_mfu(m: dict[str, Any]) -> None:
    print(f"\n== fp32 MFU, the ceiling timed between windows of {WINDOW} steps in the training process "
          "(per window: median [min-max]; per process medians in brackets after)")
    for name, sides in m.items():
        print(f"  {name}:")
        for side, r in sides.items():
            print(f"    {side:14s} MFU {_fmt(r['mfu'], '%', 100)} (processes {_fmt(r['medians'], '%', 100)}) | "
                  f"{_fmt(r['gflops'], ' GFLOP/s')} over a ceiling of {_fmt(r['ceilings'], ' GFLOP/s')}")


# ------------------------------------------------------------------------------------------- profile
def _profile(fn, top: int = 8) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [(e.key, e.self_cpu_time_total / total) for e in events[:top]]


def profile_section(work: Path, sets: list[str]) -> dict[str, Any]:
    data = _train_data(work)
    # Every reference first: a slmtrain run in this process leaves its allocator tuned (run.reuse_host_memory).
    out = {name: {"reference": _profile(lambda: reference_rates(data, *shape, 10))} for name, shape in SHAPES.items()}
    for name, shape in SHAPES.items():
        for side, side_sets in (("slmtrain", sets), ("slmtrain (fast paths)", CONFIGS["fast paths"][0] + sets)):
            out[name][side] = _profile(lambda: slmtrain_rates(work, name, *shape, 10, side_sets, in_process=True))
    return out


def print_profile(p: dict[str, Any]) -> None:
    print("\n== profile: share of self CPU time, top ops (10 steps, start-up included for slmtrain)")
    for name, sides in p.items():
        for side, ops in sides.items():
            print(f"  {name} {side}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in ops))


# ---------------------------------------------------------------------------------- recipes, rest
def recipes_section(work: Path, steps: int) -> dict[str, Any]:
    from slmtrain import config

    out = {}
    env_ok = (SHARED / "tinystories" / "train.txt").exists()
    for recipe in ("quickstart", "tinystories"):
        if recipe == "tinystories" and not env_ok:
            out[recipe] = {"skipped": f"no TinyStories files under {SHARED}"}
            continue
        os.environ.setdefault("SLMTRAIN_DATA", str(SHARED))
        path = REPO / "recipes" / f"{recipe}.toml"
        run_dir = work / f"recipe-{recipe}"
        sets = [f"train.max_steps={steps}", "train.max_minutes=0", "eval.every_steps=0", "checkpoint.every_steps=0",
                "log.every_steps=10", "log.progress=false", "eval.samples=0"]
        ceils = ceilings(3)  # just before the run: see train_section
        _slmtrain(["run", str(path), "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)])
        cfg = config.load(run_dir / "recipe.toml")
        train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train" and r["step"] > INTERVAL]
        rates = [r["tokens_per_s"] for r in train if r["step"] % INTERVAL == 0]
        m = cfg.model
        mlp = 3 * (2 / 3) if m.flavour == "llama" else 4  # SwiGLU's three matrices at 2/3 width
        fpt = flops_per_token(m.n_layer, m.n_embd, m.vocab_size, m.seq_len, mlp=int(round(mlp * 2)) / 2)
        dtype = "bfloat16" if cfg.run.precision == "bf16" else "float32"  # the run records what "auto" picked
        row = {"tokens_per_s": _spread(rates), "flops_per_token": fpt, "dtype": dtype, "compile": cfg.run.compile}
        row["mfu"] = statistics.median(rates) * fpt / (ceils[f"{dtype}_gflops"] * 1e9)
        out[recipe] = row
    return out


def print_recipes(r: dict[str, Any]) -> None:
    print("\n== shipped recipes (model and data of each recipe)")
    for name, row in r.items():
        if "skipped" in row:
            print(f"  {name}: skipped ({row['skipped']})")
            continue
        mfu = f", MFU {100 * row['mfu']:.0f}% of the {row['dtype']} ceiling"
        how = f"{row['dtype']}{', compiled' if row['compile'] else ''}"
        print(f"  {name} ({how}): {_fmt(row['tokens_per_s'])} tokens/s{mfu}")


def generate_section(reps: int) -> dict[str, Any]:
    import bench_generate
    from slmtrain.config import ModelConfig
    from slmtrain.model import GPT

    out = {}
    prompt = [1, 17, 256, 3000, 42, 7, 99, 1024]
    for flavour in ("gpt2", "llama"):
        torch.manual_seed(0)
        model = GPT(ModelConfig(flavour=flavour, n_layer=5, n_head=6, n_embd=192, seq_len=256, vocab_size=4096)).eval()
        out[flavour] = {"params": model.num_params(),
                        "cache": bench_generate.tokens_per_s(model, prompt, 200, True, reps),
                        "compiled": bench_generate.tokens_per_s(model, prompt, 200, True, reps, compiled=True),
                        "int8_compiled": bench_generate.tokens_per_s(model, prompt, 200, True, reps, compiled=True,
                                                                     weights="int8"),
                        "no_cache": bench_generate.tokens_per_s(model, prompt, 200, False, reps)}
    return out


def prepare_section(work: Path, reps: int) -> dict[str, Any]:
    import bench_train

    text = SHARED / "tinystories" / "train.txt"
    if not text.exists():
        return {"skipped": f"no {text}"}
    bpe, trained = bench_train.train_recipe_bpe(text, VOCAB, work / "prep-bpe")
    figures, _busy = bench_train.bench_prepare(text, {"gpt2": SHARED / "gpt2", f"bpe-{VOCAB}": bpe}, reps)
    return {"MB": text.stat().st_size / 1e6, "bpe_train_seconds": trained,
            **{name: _spread(by["this"]) for name, by in figures.items()}}


def print_prepare(r: dict[str, Any]) -> None:
    print("\n== prepare (end to end, MB of text per second; the trained BPE is given, its training timed apart)")
    if "skipped" in r:
        print(f"  skipped: {r['skipped']}")
        return
    print(f"  {r['MB']:.1f} MB of TinyStories; training the {VOCAB}-token BPE took {r['bpe_train_seconds']:.2f}s")
    for name in ("gpt2", f"bpe-{VOCAB}"):
        print(f"  {name:10s} {_fmt(r[name], ' MB/s', digits=2)}")


def checkpoint_section(work: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_checkpoint.py")], capture_output=True,
                          text=True, cwd=work)
    return {"report": proc.stdout.strip(), "exit_code": proc.returncode}


SECTIONS = ("ceilings", "train", "mfu", "recipes", "profile", "fastpaths", "checkpoint", "prepare", "generate")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions per comparison")
    p.add_argument("--steps", type=int, default=50, help="training steps per measured run")
    p.add_argument("--windows", type=int, default=6, help="mfu: windows of 10 steps per process")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for the slmtrain runs")
    p.add_argument("--json", default=str(REPO / "runs" / "bench.json"))
    args = p.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "cpus": os.cpu_count()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if "ceilings" in only:
            results["ceilings"] = ceilings(args.reps)
            print_ceilings(results["ceilings"])
        if "train" in only:
            results["train"] = train_section(work, args.reps, args.steps, args.sets)
            print_train(results["train"])
        if "mfu" in only:
            results["mfu"] = mfu_section(work, args.reps, args.windows)
            print_mfu(results["mfu"])
        if "fastpaths" in only:
            results["fastpaths"] = fastpaths_section(work, args.reps, args.steps)
            print_fastpaths(results["fastpaths"])
            results["compiled_forms"] = compiled_forms(args.reps)
            print_compiled_forms(results["compiled_forms"])
        if "recipes" in only:
            results["recipes"] = recipes_section(work, args.steps)
            print_recipes(results["recipes"])
        if "profile" in only:
            results["profile"] = profile_section(work, args.sets)
            print_profile(results["profile"])
        if "prepare" in only:
            results["prepare"] = prepare_section(work, args.reps)
            print_prepare(results["prepare"])
        if "generate" in only:
            results["generate"] = generate_section(args.reps)
            print("\n== generate (greedy, 200 new tokens, best of reps)")
            for k, v in results["generate"].items():
                print(f"  {k}: {v['cache']:.0f} tokens/s with the KV cache (compiled {v['compiled']:.0f}, compiled int8 "
                      f"{v['int8_compiled']:.0f}), {v['no_cache']:.0f} without")
        if "checkpoint" in only:
            results["checkpoint"] = checkpoint_section(work)
            print("\n== checkpoint\n" + results["checkpoint"]["report"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.json}")
    return 0


# name: (--set values with the fast path on, with it off); each measured side by side at 4L4H-d128.
FASTPATHS: dict[str, tuple[list[str], list[str]]] = {
    "torch.compile (model)": (["run.compile=true"], ["run.compile=false"]),
    "fused AdamW": (["optim.fused='on'"], ["optim.fused='off'"]),
    "fused head + loss": (["train.fused_head_loss=true"], ["train.fused_head_loss=false"]),
    "bf16 autocast": (["run.precision='bf16'"], ["run.precision='fp32'"]),
    "bf16 autocast, compiled": (["run.precision='bf16'", "run.compile=true"],
                                ["run.precision='fp32'", "run.compile=true"]),
    "reuse host memory": (["run.reuse_host_memory=true"], ["run.reuse_host_memory=false"]),
    "reuse host memory, compiled": (["run.reuse_host_memory=true", "run.compile=true"],
                                    ["run.reuse_host_memory=false", "run.compile=true"]),
}


def compiled_forms(reps: int) -> dict[str, Any]:
    """slmtrain's compiled forms against torch's, both through torch.compile, forward + backward (ms): GPT-2's
    tanh GELU as x sigmoid(2u) at the MLP's widths, and the cross-entropy over a batch's (tokens x vocab)
    logits."""
    import torch.nn.functional as F

    from slmtrain.headloss import cross_entropy
    from slmtrain.model import gelu_tanh

    tokens = BATCH * CTX
    cases = {f"GELU {tokens}x{w}": ((torch.randn(tokens, w, requires_grad=True),), torch.randn(tokens, w),
                                     gelu_tanh, lambda t: F.gelu(t, approximate="tanh")) for w in (512, 1024)}
    logits = torch.randn(tokens, VOCAB, requires_grad=True)
    targets = torch.randint(0, VOCAB, (tokens,))
    cases[f"cross-entropy {tokens}x{VOCAB}"] = ((logits, targets), torch.ones(()), cross_entropy,
                                                 lambda z, t: F.cross_entropy(z, t, ignore_index=-1))
    out = {}
    for name, (args, g, ours, torchs) in cases.items():
        times: dict[str, list[float]] = {"on": [], "off": []}
        fns = {"on": torch.compile(ours), "off": torch.compile(torchs)}
        for _ in range(max(3, reps)):
            for side, fn in fns.items():
                times[side].append(1000 * median_seconds(lambda fn=fn: fn(*args).backward(g), 10))
        out[name] = {side: _spread(ts) for side, ts in times.items()}
    return out


def fastpaths_section(work: Path, reps: int, steps: int) -> dict[str, Any]:
    out = {}
    n_layer, n_head, d = SHAPES["4L4H-d128"]
    for name, (on, off) in FASTPATHS.items():
        a, b = [], []
        for _ in range(reps):
            a += slmtrain_rates(work, f"fp-{name}", n_layer, n_head, d, steps, on)["rates"]
            b += slmtrain_rates(work, f"fp-{name}", n_layer, n_head, d, steps, off)["rates"]
        out[name] = {"on": _spread(a), "off": _spread(b), "gain": statistics.median(a) / statistics.median(b)}
    return out


def print_fastpaths(f: dict[str, Any]) -> None:
    print("\n== fast paths at 4L4H-d128 (tokens/s, on vs off)")
    for name, r in f.items():
        print(f"  {name}: on {_fmt(r['on'])} | off {_fmt(r['off'])} | {r['gain']:.2f}x")


def print_compiled_forms(g: dict[str, Any]) -> None:
    for name, r in g.items():
        gain = r["off"]["median"] / r["on"]["median"]
        print(f"  compiled {name}, forward + backward: slmtrain's form {_fmt(r['on'], ' ms', digits=2)} | "
              f"torch's {_fmt(r['off'], ' ms', digits=2)} | {gain:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
