"""Loss-spike detection and in-process rollback, with a real injected fault (an exploding LR)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import events, train_losses, write_recipe

from slmtrain import cli
from slmtrain.config import HealthConfig
from slmtrain.health import SpikeDetector
from slmtrain.verify import verify

FAULT = ["train.max_steps=100", "checkpoint.every_steps=10", "checkpoint.keep_last=3", "eval.every_steps=0",
         "log.every_steps=5", "health.window=20", "health.fault_lr_step=60", "health.fault_lr_factor=200"]


def _run(tmp_path: Path, cache: Path, name: str, *sets: str) -> tuple[int, Path]:
    args = ["run", str(write_recipe(tmp_path, cache)), "--run-dir", str(tmp_path / name)]
    for s in (*FAULT, *sets):
        args += ["--set", s]
    return cli.main(args), tmp_path / name


def test_the_detector_flags_a_sustained_spike_not_noise() -> None:
    cfg = HealthConfig(window=20, spike_sigma=6.0, spike_ratio=1.2, patience=3)
    det = SpikeDetector(cfg)
    rng = random.Random(0)
    noisy = [3.0 - 0.002 * i + rng.gauss(0, 0.05) for i in range(200)]
    assert not any(det.update(i, x).spike for i, x in enumerate(noisy))
    assert not det.update(200, 9.0).spike and not det.update(201, 9.5).spike  # two high losses: not yet
    v = det.update(202, 8.0)
    assert v.spike and v.first_bad == 200
    # The high losses stayed out of the baseline, and the state round-trips exactly.
    assert max(det.losses) < 4.0
    again = SpikeDetector(cfg, det.state_dict())
    assert again.update(203, 8.5) == det.update(203, 8.5)
    det.forget_streak()
    assert not det.update(204, 3.0).spike


def test_an_exploding_lr_rolls_back_skips_the_data_and_recovers(tmp_path: Path, cache: Path, capsys) -> None:
    code, run = _run(tmp_path, cache, "fault")
    assert code == 0
    err = " ".join(capsys.readouterr().err.split())
    (rb,) = events(run, "rollback")
    assert rb["first_bad_step"] == 61 and rb["step"] == 50 and rb["from_step"] == 65
    assert rb["skipped_data_steps"] == 15 and rb["set_aside"] == ["step_00000060"]
    assert "Rolled back to step_00000050" in err
    assert (run / "checkpoints" / "step_00000060.rolledback-1").is_dir()
    losses = train_losses(run)
    assert losses[100] < 4.5 and max(losses[s] for s in range(90, 101, 5)) < 4.5  # recovered, not ruined
    assert verify(run / "checkpoints" / "step_00000100").sound
    assert cli.main(["status", str(run)]) == 0
    assert "rollbacks: 1 (last: step 65 -> 50, loss spike" in capsys.readouterr().out


def test_rollbacks_are_bounded_then_the_run_fails_with_advice(tmp_path: Path, cache: Path, capsys) -> None:
    code, _ = _run(tmp_path, cache, "bounded", "health.max_rollbacks=0")
    assert code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "loss spike" in err and "health.max_rollbacks = 0" in err and "lower optim.lr" in err
    assert "Traceback" not in err


def test_non_finite_steps_roll_back_too(tmp_path: Path, cache: Path) -> None:
    code, run = _run(tmp_path, cache, "nan", "health.fault_lr_factor=1e30", "optim.grad_clip=0.0",
                     "train.skip_nonfinite=1")
    assert code == 0
    (rb,) = events(run, "rollback")
    assert "consecutive non-finite steps" in rb["reason"] and rb["step"] <= 50
    assert max(train_losses(run)) == 100


def test_a_run_with_a_rollback_resumes_exactly_under_kill_9(tmp_path: Path, cache: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from chaos import run_experiment

    log = tmp_path / "chaos.txt"
    with open(log, "w") as out:
        ok = run_experiment(write_recipe(tmp_path, cache), tmp_path, kills=3, overrides=FAULT, seed=2, out=out)
    assert ok, log.read_text()
    assert events(tmp_path / "chaos", "rollback") and events(tmp_path / "reference", "rollback")


@pytest.mark.parametrize("flag", ["health.rollback=false"])
def test_rollback_can_be_turned_off(tmp_path: Path, cache: Path, flag: str) -> None:
    code, run = _run(tmp_path, cache, "off", flag)
    assert code == 0 and not events(run, "rollback")
