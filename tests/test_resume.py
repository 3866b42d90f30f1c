"""Exact resume, preemption and crash safety with real processes, real signals and real kill -9."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import events, run_cli, slmtrain_cmd, train_losses, val_losses, write_recipe

from slmtrain import cli, config
from slmtrain.checkpoint import list_checkpoints
from slmtrain.data.prepare import prepare_data
from slmtrain.fsio import read_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from chaos import final_weights, run_experiment  # noqa: E402

# Small corpus (a few passes over the data in one run), gradient accumulation, dropout (so the RNG state
# matters), frequent checkpoints.
RESUME_EXTRA = """
[data]
builtin_train_stories = 12
builtin_valid_stories = 40
cache_dir = "{cache}"
[tokenizer]
vocab_size = 320
train_documents = 12
[model]
flavour = "llama"
n_layer = 2
n_head = 2
n_embd = 32
seq_len = 32
dropout = 0.1
[train]
batch_size = 4
grad_accum = 2
max_steps = 60
[eval]
every_steps = 20
batches = 2
samples = 1
sample_tokens = 8
[checkpoint]
every_steps = 5
keep_last = 2
reference_tokens = 4
[log]
every_steps = 1
progress = false
"""


def _recipe(tmp: Path, cache: Path, name: str = "r.toml") -> Path:
    base = write_recipe(tmp, cache, name=name).read_text()
    # Later tables override the tiny recipe's: drop its sections that we redefine.
    keep = base.split("[data]")[0]
    (tmp / name).write_text(keep + RESUME_EXTRA.format(cache=cache.as_posix()))
    return tmp / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    tmp = tmp_path_factory.mktemp("ref")
    assert cli.main(["run", str(_recipe(tmp, cache)), "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run"


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process ended early with {proc.returncode}: {proc.stderr.read()}")
        if train_losses(run_dir) and max(train_losses(run_dir)) >= step:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def _popen(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(slmtrain_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kw)


def _assert_same_run(a: Path, b: Path) -> None:
    assert train_losses(a) == train_losses(b)
    assert val_losses(a) == val_losses(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_sigterm_saves_exits_75_and_resume_is_exact(reference: Path, cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Two loader workers prefetching here, none in the reference: the cursor does not depend on them.
    proc = _popen("run", str(_recipe(tmp_path, cache)), "--run-dir", str(run_dir), "--set", "data.loader_workers=2")
    _wait_for_step(run_dir, 12, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    status = read_json(run_dir / "run.json")
    assert status["status"] == "preempted" and status["attempts"][-1]["exit_code"] == 75
    stopped_at = max(train_losses(run_dir))
    saved = [c for c in list_checkpoints(run_dir / "checkpoints") if c.committed]
    assert saved[-1].step == stopped_at  # durable checkpoint at the step reached, not an older one
    assert saved[-1].meta["reason"] in ("preempt", "periodic")  # a periodic save may have landed on it
    preempt = events(run_dir, "preempt_saved")[0]
    assert preempt["seconds"] < preempt["grace_seconds"]
    proc = run_cli("resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from step_{stopped_at:08d}" in proc.stderr
    _assert_same_run(reference, run_dir)
    prepared = prepare_data(config.load(run_dir / "recipe.toml"), log=lambda _m: None)
    assert prepared.reused
    tokens_per_pass = prepared.meta["splits"]["train"]["tokens"]
    assert read_json(run_dir / "run.json")["status"] == "finished"
    # The run covered several passes over this small corpus, across the resume.
    assert 60 * 4 * 2 * 32 > 2 * tokens_per_pass


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path: Path, cache: Path, async_save: bool) -> None:
    recipe = _recipe(tmp_path, cache)
    overrides = ["checkpoint.every_steps=2"] + (["checkpoint.async_save=true"] if async_save else [])
    log = tmp_path / "chaos.txt"
    with open(log, "w") as out:
        ok = run_experiment(recipe, tmp_path, kills=5, overrides=overrides, seed=3 + async_save, out=out)
    report = log.read_text()
    assert ok, report
    assert "kills: 5 " in report, report


def test_kill_9_in_a_time_budgeted_wsd_muon_run_then_resume_is_exact(tmp_path: Path, cache: Path) -> None:
    # The killed run fits its own step count; the reference is then run with that count as max_steps.
    recipe = _recipe(tmp_path, cache)
    overrides = ["checkpoint.every_steps=3", "train.max_steps=0", "schedule.warmup_steps=20", "schedule.kind='wsd'",
                 "train.budget_probe_steps=8", "optim.name='muon'", "model.qk_norm=true", "model.relu2=true",
                 "model.zero_init=true", "model.tie_embeddings=false", "optim.head_lr=0.01"]
    log = tmp_path / "chaos.txt"
    with open(log, "w") as out:
        ok = run_experiment(recipe, tmp_path, kills=4, overrides=overrides, seed=5, out=out, budget_minutes=0.1)
    report = log.read_text()
    assert ok, report
    assert "fitted step count: " in report and "kills: 4 " in report, report


def _prepare_two_checkpoints(reference: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    ckpts = [c.path for c in list_checkpoints(run_dir / "checkpoints") if c.committed]
    return run_dir, ckpts[-2], ckpts[-1]


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "no_latest"])
def test_resume_falls_back_past_a_damaged_checkpoint(reference: Path, tmp_path: Path, damage: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    run_dir, older, newest = _prepare_two_checkpoints(reference, tmp_path)
    if damage == "truncate":
        f = newest / "optim" / "__0_0.distcp"
        f.write_bytes(f.read_bytes()[:100])
        needle = "optim/__0_0.distcp: size"
    elif damage == "flip":
        f = newest / "model" / "__0_0.distcp"
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
        needle = "model/__0_0.distcp: sha256 mismatch"
    elif damage == "no_manifest":
        (newest / "meta.json").unlink()
        needle = "meta.json missing"
    else:
        (run_dir / "checkpoints" / "latest").unlink()
        needle = "latest is missing"
    code = cli.main(["resume", str(run_dir), "--set", "train.max_steps=65"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert needle in err
    expected = newest if damage == "no_latest" else older
    assert f"resuming from {expected.name}" in err
    if damage != "no_latest":
        assert newest.exists()  # reported and skipped, never deleted


def test_changed_recipe_is_refused_on_resume(reference: Path, tmp_path: Path, capsys) -> None:
    run_dir, _, _ = _prepare_two_checkpoints(reference, tmp_path)
    before = (run_dir / "metrics.jsonl").read_bytes()
    code = cli.main(["resume", str(run_dir), "--set", "model.n_layer=3", "--set", "optim.lr=0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.n_layer (2 -> 3)" in err and "optim.lr" in err
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    assert read_json(run_dir / "run.json")["status"] == "finished"  # a refused resume changes nothing
    # `run RECIPE --resume` compares the given recipe too, instead of ignoring its edits.
    recipe = tmp_path / "edited.toml"
    recipe.write_text((reference.parent / "r.toml").read_text().replace("n_embd = 32", "n_embd = 48"))
    assert cli.main(["run", str(recipe), "--run-dir", str(run_dir), "--resume"]) == 2
    assert "model.n_embd (32 -> 48)" in capsys.readouterr().err
    code = cli.main(["resume", str(run_dir), "--set", "log.every_steps=3", "--set", "train.max_steps=62"])
    assert code == 0, capsys.readouterr().err


def test_second_run_on_a_locked_directory_fails_clearly(cache: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, cache)
    run_dir = tmp_path / "run"
    first = _popen("run", str(recipe), "--run-dir", str(run_dir), "--set", "train.max_steps=200")
    _wait_for_step(run_dir, 2, first)
    second = run_cli("run", str(recipe), "--run-dir", str(run_dir), "--resume", timeout=120)
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 75  # unharmed: it saved and exited as a preempted run does
    assert list_checkpoints(run_dir / "checkpoints")[-1].committed


def test_second_sigint_aborts_at_once(cache: Path, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, cache)
    run_dir = tmp_path / "run"
    proc = _popen("run", str(recipe), "--run-dir", str(run_dir), "--set", "train.max_steps=100000",
                  "--set", "checkpoint.every_steps=0")
    _wait_for_step(run_dir, 2, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode in (75, 130)  # 75 only if the save finished between the two signals


def _fsize_limit(nbytes: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


@pytest.mark.parametrize("on_error", ["stop", "continue"])
def test_write_error_during_save_keeps_previous_checkpoint(reference: Path, tmp_path: Path, on_error: str) -> None:
    run_dir, older, newest = _prepare_two_checkpoints(reference, tmp_path)
    biggest = max(f.stat().st_size for f in newest.rglob("*") if f.is_file())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(slmtrain_cmd("resume", str(run_dir), "--set", "train.max_steps=70",
                                       "--set", f"checkpoint.on_error='{on_error}'"),
                          capture_output=True, text=True, timeout=120, env=env,
                          preexec_fn=_fsize_limit(biggest - 1))
    assert "checkpoint save at step" in proc.stderr and "failed" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1  # the final save cannot be skipped, whatever the policy
    if on_error == "continue":
        assert "Training continues" in proc.stderr
    sound = [c for c in list_checkpoints(run_dir / "checkpoints") if c.committed]
    assert newest in [c.path for c in sound]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == newest.name
    assert not list((run_dir / "checkpoints").glob("*.tmp-*"))
    assert read_json(run_dir / "run.json")["status"] == "failed"


def test_notice_url_triggers_save_and_exit_75(cache: Path, tmp_path: Path) -> None:
    import http.server
    import threading

    state = {"notice": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"TERMINATE" if state["notice"] else b""
            self.send_response(200 if state["notice"] else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/preempt"
        run_dir = tmp_path / "run"
        proc = _popen("run", str(_recipe(tmp_path, cache)), "--run-dir", str(run_dir),
                      "--set", "train.max_steps=100000", "--set", f"checkpoint.notice_url='{url}'",
                      "--set", "checkpoint.notice_interval=0.2")
        _wait_for_step(run_dir, 3, proc)
        state["notice"] = True
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 75, err
        assert "notice:url" in err
        assert [c for c in list_checkpoints(run_dir / "checkpoints") if c.committed]
    finally:
        server.shutdown()


def test_status_shows_checkpoints_and_metrics(reference: Path, capsys) -> None:
    assert cli.main(["status", str(reference)]) == 0
    out = capsys.readouterr().out
    assert "status: finished" in out
    assert "step_00000060" in out and "sound" in out
    assert "last train:" in out and "last eval:" in out


def test_changed_training_data_is_refused_on_resume(tmp_path: Path, capsys) -> None:
    from slmtrain.data.stories import generate_stories

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n<|endoftext|>\n".join(generate_stories(60, seed=5)) + "\n<|endoftext|>\n")
    recipe = tmp_path / "text.toml"
    recipe.write_text(f"""
[data]
source = "text"
train = "{corpus.as_posix()}"
cache_dir = "{(tmp_path / 'cache').as_posix()}"
[tokenizer]
vocab_size = 300
[model]
n_layer = 1
n_head = 2
n_embd = 32
seq_len = 32
[train]
batch_size = 4
max_steps = 6
[checkpoint]
every_steps = 3
[log]
progress = false
""")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    corpus.write_text("\n<|endoftext|>\n".join(generate_stories(60, seed=6)) + "\n<|endoftext|>\n")
    tokenizer_before = (run_dir / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert cli.main(["resume", str(run_dir), "--set", "train.max_steps=9"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and ("tokenizer" in err or "data changed" in err)
    assert (run_dir / "tokenizer.json").read_bytes() == tokenizer_before
    assert read_json(run_dir / "run.json")["status"] == "finished"


def test_a_run_that_failed_before_any_checkpoint_can_be_started_again(cache: Path, tmp_path: Path, capsys) -> None:
    recipe = _recipe(tmp_path, cache)
    missing = tmp_path / "missing.txt"
    args = ["run", str(recipe), "--run-dir", str(tmp_path / "run")]
    assert cli.main([*args, "--set", "data.source='text'", "--set", f"data.train='{missing.as_posix()}'"]) == 2
    assert read_json(tmp_path / "run" / "run.json")["status"] == "failed"
    assert cli.main([*args, "--set", "train.max_steps=3"]) == 0
    assert [a["exit_code"] for a in read_json(tmp_path / "run" / "run.json")["attempts"]] == [2, 0]


def test_sigusr1_during_data_preparation_exits_75_without_a_partial_cache(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, tmp_path / "cache")
    run_dir = tmp_path / "run"
    proc = _popen("run", str(recipe), "--run-dir", str(run_dir), "--set", "data.builtin_train_stories=60000",
                  "--set", "tokenizer.train_documents=2000")
    deadline = time.monotonic() + 60
    while not (run_dir / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 75, err
    assert "during data preparation" in err
    status = read_json(run_dir / "run.json")
    assert status["status"] == "preempted" and "SIGUSR1" in status["attempts"][-1]["reason"]
    assert not list((tmp_path / "cache").glob("*.tmp-*"))  # nothing half-built is left to be trusted
