"""Stopping rules, precisions and the non-finite guard, on short real runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import events, slmtrain_cmd, train_losses, write_recipe

from slmtrain import cli, config
from slmtrain.config import ModelConfig
from slmtrain.fsio import read_json
from slmtrain.log import read_jsonl
from slmtrain.model import GPT
from slmtrain.train import pick_precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from chaos import final_weights  # noqa: E402


def _run(tmp_path: Path, cache: Path, *sets: str) -> int:
    args = ["run", str(write_recipe(tmp_path, cache)), "--run-dir", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    return cli.main(args)


def test_max_tokens_stops_the_run(tmp_path: Path, cache: Path) -> None:
    # 16 x 64 = 1024 tokens per step: 10 steps reach 10,240 >= 10,000.
    assert _run(tmp_path, cache, "train.max_steps=0", "train.max_tokens=10000", "eval.every_steps=0") == 0
    assert max(train_losses(tmp_path / "run")) == 10


def _budget_run(tmp_path: Path, cache: Path, name: str, *sets: str) -> Path:
    run_dir = tmp_path / name
    args = ["run", str(write_recipe(tmp_path, cache)), "--run-dir", str(run_dir), "--set", "train.max_steps=0",
            "--set", "schedule.warmup_steps=20", "--set", "train.budget_probe_steps=8"]
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0
    return run_dir


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_a_time_budget_fits_the_step_count_and_a_rerun_with_that_count_is_identical(tmp_path: Path, cache: Path,
                                                                                   kind: str) -> None:
    # A generous overrun allowance: this test is about the fitted count, not about a noisy machine.
    # Warmup short enough that even a slow, busy machine fits more steps than it: the floor is then reached.
    run_dir = _budget_run(tmp_path, cache, "budget", "train.max_minutes=0.08", "train.budget_overrun=10.0",
                          f"schedule.kind='{kind}'", "schedule.warmup_steps=10")
    plan = events(run_dir, "budget_plan")
    assert len(plan) == 1 and plan[0]["step"] == 8
    refits = events(run_dir, "budget_refit")
    if kind == "cosine":
        assert not refits  # the LR depends on the length right after warmup: the count stays
    for r in refits:  # each while the LR was flat under the old and the new count
        assert r["step"] + 2 < int(0.8 * r["previous_steps"]) and r["step"] + 2 <= int(0.8 * r["planned_steps"])
    planned = read_json(run_dir / "run.json")["planned_steps"]
    assert planned == (refits[-1]["planned_steps"] if refits else plan[0]["planned_steps"]) and planned > 8
    assert read_json(run_dir / "run.json")["planned_steps"] == planned
    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["step"] == planned
    assert train[-1]["lr"] == pytest.approx(5e-3 * 0.1)  # the last step runs at the schedule's floor
    final = read_json(run_dir / "checkpoints" / f"step_{planned:08d}" / "meta.json")
    assert final["trainer"]["planned_steps"] == planned
    assert read_json(run_dir / "run.json")["attempts"][-1]["reason"] == "finished"
    # The count is the whole story: the same recipe with max_steps = planned and no budget is the same run.
    again = _budget_run(tmp_path, cache, "fixed", "train.max_minutes=0", f"train.max_steps={planned}",
                        f"schedule.kind='{kind}'", "schedule.warmup_steps=10")
    assert train_losses(again) == train_losses(run_dir)
    assert not events(again, "budget_plan")
    a, b = final_weights(run_dir), final_weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_machine_that_slows_down_mid_run_stops_near_the_budget(tmp_path: Path, cache: Path) -> None:
    run_dir = tmp_path / "slow"
    budget = 6.0
    proc = subprocess.Popen(slmtrain_cmd("run", str(write_recipe(tmp_path, cache)), "--run-dir", str(run_dir),
                                         "--set", "train.max_steps=0", "--set", f"train.max_minutes={budget / 60}",
                                         "--set", "schedule.warmup_steps=30", "--set", "eval.every_steps=0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hogs: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists() or not events(run_dir, "budget_plan"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.02)
        # A real slowdown: processes competing for the cores once the count has been fitted (enough of them to
        # slow the run several times over even when the machine was already busy while it fitted).
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(8)]
        _, err = proc.communicate(timeout=300)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert proc.returncode == 0, err
    plan, cut = events(run_dir, "budget_plan")[0], events(run_dir, "budget_cut")
    assert len(cut) == 1 and cut[0]["step"] < plan["planned_steps"]
    assert "stopping before the schedule reached its floor" in err
    last = max(train_losses(run_dir))
    meta = read_json(run_dir / "checkpoints" / f"step_{last:08d}" / "meta.json")
    # Stopped at the budget plus its 1.5 % allowance, less the final evaluation and save it reserved, which
    # then ran on the slowed machine: a few reserves past the budget at most, never the whole planned run.
    reserve = meta["trainer"]["budget_reserve_seconds"]
    # The loop's whole time, final evaluation and save included (the checkpoint's is taken a step earlier).
    loop = events(run_dir, "summary")[0]["train_seconds"]
    assert budget * 1.015 - reserve <= loop <= budget * 1.015 + 4 * reserve + 1.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains(tmp_path: Path, cache: Path, precision: str) -> None:
    assert _run(tmp_path, cache, f"run.precision='{precision}'", "train.max_steps=20") == 0
    losses = train_losses(tmp_path / "run")
    assert losses[20] < losses[1]
    saved = read_json(tmp_path / "run" / "checkpoints" / "step_00000020" / "meta.json")
    assert (saved["scaler"] is not None) == (precision == "fp16")


def test_auto_precision_is_recorded_and_a_resume_keeps_the_runs_own(tmp_path: Path, cache: Path) -> None:
    picked = pick_precision("auto", torch.device("cpu"))
    assert picked in ("fp32", "bf16")
    assert _run(tmp_path, cache, "run.precision='auto'", "train.max_steps=2", "eval.every_steps=0") == 0
    run_dir = tmp_path / "run"
    assert config.load(run_dir / "recipe.toml").run.precision == picked
    saved = read_json(run_dir / "checkpoints" / "step_00000002" / "config.json")
    assert saved["recipe"]["run"]["precision"] == picked
    # A run started in the other precision, as on a machine where "auto" picks it, resumed with "auto":
    # it carries on in its own precision, and its numbers are those of an uninterrupted run.
    other = "fp32" if picked == "bf16" else "bf16"
    ref, part = _stopped_and_resumed(tmp_path, cache, [f"run.precision='{other}'"], steps=4,
                                     resume_sets=["run.precision='auto'"])
    assert config.load(part / "recipe.toml").run.precision == other
    assert train_losses(part) == train_losses(ref)


def _stopped_and_resumed(tmp_path: Path, cache: Path, sets: list[str], steps: int,
                         resume_sets: list[str] | None = None) -> tuple[Path, Path]:
    """(an uninterrupted run of `steps`, one stopped at steps/2 and resumed with `resume_sets` in place of `sets`)."""
    rec = str(write_recipe(tmp_path, cache))
    common = ["eval.every_steps=0", f"checkpoint.every_steps={steps // 2}"]

    def run(run_dir: Path, extra: list[str], n: int, *flags: str) -> None:
        args = [a for s in common + extra + [f"train.max_steps={n}"] for a in ("--set", s)]
        assert cli.main(["run", rec, "--run-dir", str(run_dir), *flags, *args]) == 0

    ref, part = tmp_path / "ref", tmp_path / "part"
    run(ref, sets, steps)
    run(part, sets, steps // 2)
    run(part, sets if resume_sets is None else resume_sets, steps, "--resume")
    return ref, part


def test_a_compiled_bf16_run_stopped_and_resumed_matches_an_uninterrupted_one(tmp_path: Path, cache: Path) -> None:
    # What the shipped CPU recipes run: compiled, bf16 autocast (chosen here, whatever "auto" picks).
    ref, part = _stopped_and_resumed(tmp_path, cache, ["run.compile=true", "run.precision='bf16'"], steps=6)
    assert train_losses(part) == train_losses(ref)
    ref_w, part_w = final_weights(ref), final_weights(part)
    assert ref_w.keys() == part_w.keys() and all(torch.equal(ref_w[k], part_w[k]) for k in ref_w)


def test_compile_without_a_cpu_compiler_trains_eager_and_says_so(tmp_path: Path, cache: Path) -> None:
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++")}
    proc = subprocess.run(slmtrain_cmd("run", str(write_recipe(tmp_path, cache)), "--run-dir", str(tmp_path / "run"),
                                       "--set", "run.compile=true", "--set", "train.max_steps=2",
                                       "--set", "eval.every_steps=0"),
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "none was found" in proc.stdout + proc.stderr and "training eager" in proc.stdout + proc.stderr
    assert len(train_losses(tmp_path / "run")) == 2


def test_bf16_attention_computes_in_fp32_on_cpu_when_it_will_be_differentiated() -> None:
    seen: list[torch.dtype] = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.scaled_dot_product_attention:
                seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, seq_len=8, vocab_size=32))
    idx = torch.randint(0, 32, (2, 8))
    with Record(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
        loss.backward()  # CPU's bf16 attention backward is the slow one
        with torch.no_grad():
            model(idx, idx)  # no backward to pay for: bf16, the faster forward
    assert seen == [torch.float32, torch.bfloat16]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("fused", ["off", "on"], ids=["host-check", "fused-device-flag"])
def test_divergence_skips_updates_then_fails(tmp_path: Path, cache: Path, capsys, fused: str) -> None:
    # Fused AdamW skips on a device flag that the run reads only at log steps (every step here).
    code = _run(tmp_path, cache, "optim.lr=10.0", "optim.grad_clip=0.0", "schedule.warmup_steps=0", "model.init_std=1.0",
                "train.skip_nonfinite=2", "eval.every_steps=0", f"optim.fused='{fused}'")
    err = capsys.readouterr().err
    assert code == 1
    assert "consecutive non-finite steps" in err and "Traceback" not in err
    skipped = events(tmp_path / "run", "skipped_step")
    assert len(skipped) == 3 and [e["consecutive"] for e in skipped] == [1, 2, 3]
    assert read_json(tmp_path / "run" / "run.json")["status"] == "failed"


def test_time_based_checkpoints_and_the_grace_warning(tmp_path: Path, cache: Path) -> None:
    # Every save is due after 6 ms, and no step plus save fits in a zero grace period.
    assert _run(tmp_path, cache, "train.max_steps=8", "checkpoint.every_steps=0", "checkpoint.every_minutes=0.0001",
                "checkpoint.grace_seconds=0.0", "checkpoint.keep_last=2", "eval.every_steps=0") == 0
    saves = events(tmp_path / "run", "save")
    assert [s["step"] for s in saves] == list(range(1, 9))
    assert len(events(tmp_path / "run", "grace_warning")) == 1
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert kept[-1] == "step_00000008" and len(kept) <= 3  # keep_last 2, plus the best by validation loss


def test_compiled_model_trains_and_saves_plain_names(tmp_path: Path, cache: Path) -> None:
    assert _run(tmp_path, cache, "run.compile=true", "train.max_steps=3", "eval.every_steps=0",
                "checkpoint.reference_tokens=2") == 0
    # verify matches the saved keys to a fresh, uncompiled model's exactly: no `_orig_mod.` prefixes.
    assert cli.main(["verify", str(tmp_path / "run")]) == 0


def test_async_saves_verify_and_train_identically(tmp_path: Path, cache: Path) -> None:
    sync_dir, async_dir = tmp_path / "sync", tmp_path / "async"
    for d, mode in ((sync_dir, "false"), (async_dir, "true")):
        recipe = write_recipe(tmp_path, cache, name=f"{d.name}.toml")
        assert cli.main(["run", str(recipe), "--run-dir", str(d), "--set", "train.max_steps=12",
                         "--set", "checkpoint.every_steps=4", "--set", f"checkpoint.async_save={mode}",
                         "--set", "eval.every_steps=0", "--set", "checkpoint.keep_last=5"]) == 0
    assert train_losses(sync_dir) == train_losses(async_dir)
    assert [e["step"] for e in events(async_dir, "save_submitted")] == [4, 8]
    # References computed in the background, from the copy, equal those of the live model.
    for step in (4, 8, 12):
        name = f"step_{step:08d}"
        a = read_json(async_dir / "checkpoints" / name / "meta.json")["reference"]
        b = read_json(sync_dir / "checkpoints" / name / "meta.json")["reference"]
        assert a == b
    assert cli.main(["verify", str(async_dir), "--all"]) == 0
