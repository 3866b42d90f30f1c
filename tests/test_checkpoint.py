"""Checkpoint mechanism: real DCP round trips, damage detection, crash safety, discovery, retention, async."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from slmtrain import checkpoint as ck
from slmtrain import fsio
from slmtrain.asyncsave import AsyncSaver, snapshot
from slmtrain.manifest import meta_digest
from slmtrain.errors import CheckpointError

DISTCP = "model/__0_0.distcp"


def _trained(seed: int) -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(3, 8)).pow(2).sum().backward()
        optim.step()
        optim.zero_grad()
    return model, optim


def _app(model: torch.nn.Module, optim: torch.optim.Optimizer) -> dict[str, Any]:
    msd, osd = get_state_dict(model, optim)
    return {"model": msd, "optim": osd}


def _save(root: Path, step: int, val_loss: float | None = None, **kw: Any) -> Path:
    model, optim = _trained(step)
    return ck.save_checkpoint(root, step, _app(model, optim), {"cursor": step}, {"config.json": b'{"a": 1}'},
                              {"val_loss": val_loss}, **kw)


def _flip_byte(f: Path, at: int = 100) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_is_bitwise_without_process_group(tmp_path: Path) -> None:
    model, optim = _trained(1)
    rank_state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "cursor": 123}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DCP must not warn about a missing process group
        path = ck.save_checkpoint(tmp_path, 7, _app(model, optim), rank_state, {"config.json": b"{}"},
                                  {"tokens": 99})
    assert path == tmp_path / "step_00000007"
    assert (tmp_path / "latest").read_text() == "step_00000007\n"
    assert ck.verify_manifest(path) == []
    meta = ck.read_meta(path)
    assert (meta["schema"], meta["step"], meta["world_size"], meta["tokens"]) == (1, 7, 1, 99)
    assert {"model/.metadata", DISTCP, "rank_00000.pt", "config.json"} <= meta["files"].keys()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []

    fresh_model, fresh_optim = _trained(2)
    app = _app(fresh_model, fresh_optim)
    ck.load_app_state(path, app)
    set_state_dict(fresh_model, fresh_optim, model_state_dict=app["model"], optim_state_dict=app["optim"])
    for a, b in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for sa, sb in zip(optim.state.values(), fresh_optim.state.values(), strict=True):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # One more identical step must land on identical weights (hyperparameters and step counts came back).
    x = torch.randn(3, 8)
    for m, o in ((model, optim), (fresh_model, fresh_optim)):
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(model.weight, fresh_model.weight)

    loaded = ck.read_rank_state(path)
    assert torch.equal(loaded["torch"], rank_state["torch"]) and loaded["cursor"] == 123
    assert np.array_equal(loaded["numpy"][1], rank_state["numpy"][1])
    with pytest.raises(CheckpointError, match="rank_00001.pt is missing"):
        ck.read_rank_state(path, rank=1)
    (path / "rank_00000.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="rank_00000.pt is unreadable"):
        ck.read_rank_state(path)


def test_load_into_mismatched_state_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = _save(tmp_path, 1)
    with pytest.raises(CheckpointError, match=r"model: ValueError: Size mismatch .* for model.weight"):
        ck.load_app_state(path, {"model": {"weight": torch.zeros(5, 5), "bias": torch.zeros(4)}})


# ------------------------------------------------------------------------------------ damage detection
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("pristine"), 3)


def _damaged(pristine: Path, tmp_path: Path, damage: str) -> Path:
    path = tmp_path / pristine.name
    shutil.copytree(pristine, path)
    if damage == "flip":
        _flip_byte(path / DISTCP)
    elif damage == "truncate":
        f = path / DISTCP
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "delete":
        (path / "rank_00000.pt").unlink()
    elif damage == "stray":
        (path / "stray.txt").write_text("hi")
    elif damage == "no_meta":
        (path / "meta.json").unlink()
    elif damage == "garbage_meta":
        (path / "meta.json").write_bytes(b"\x00\xffnot json")
    elif damage == "schema":
        meta = fsio.read_json(path / "meta.json")
        (path / "meta.json").write_bytes(orjson.dumps({**meta, "schema": 99}))
    elif damage == "wrong_step":
        meta = {**fsio.read_json(path / "meta.json"), "step": 4}
        meta["meta_sha256"] = meta_digest(meta)  # re-sealed: only the step/name check can catch it
        (path / "meta.json").write_bytes(orjson.dumps(meta))
    elif damage == "edited_meta":
        meta = fsio.read_json(path / "meta.json")
        (path / "meta.json").write_bytes(orjson.dumps({**meta, "note": "edited"}))
    return path


@pytest.mark.parametrize(("damage", "expected"), [
    ("flip", f"{DISTCP}: sha256 mismatch (file changed)"),
    ("truncate", f"{DISTCP}: size "),
    ("delete", "rank_00000.pt: missing"),
    ("stray", "stray.txt: unexpected file not in the manifest"),
    ("no_meta", "meta.json missing"),
    ("garbage_meta", "meta.json is not valid JSON"),
    ("schema", "meta.json: schema 99 unsupported"),
    ("wrong_step", "meta.json: step 4 does not match the directory name step_00000003"),
    ("edited_meta", "meta.json: content does not match its own sha256"),
])
def test_manifest_detects_damage(pristine: Path, tmp_path: Path, damage: str, expected: str) -> None:
    assert ck.verify_manifest(pristine) == []
    problems = ck.verify_manifest(_damaged(pristine, tmp_path, damage))
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    if damage == "truncate":
        assert "(truncated?)" in problems[0]


def test_read_meta_raises_precisely(pristine: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="meta.json is not valid JSON"):
        ck.read_meta(_damaged(pristine, tmp_path, "garbage_meta"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
_relpaths = st.sampled_from(["rank_00000.pt", DISTCP, "model/.metadata", "../x", "", "/etc/passwd",
                             "a\x00b", "model", ".", "x" * 300]) | st.text(max_size=12)
_entry = st.fixed_dictionaries({}, optional={"size": st.integers() | _json, "sha256": st.text(max_size=70) | _json})
_meta_like = st.fixed_dictionaries({}, optional={
    "schema": st.just(1) | _json, "step": st.just(3) | _json, "world_size": st.integers(-2, 10**12) | _json,
    "files": st.dictionaries(_relpaths, _entry | _json, max_size=6) | _json})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode())
       | _meta_like.map(lambda v: json.dumps(v).encode()))
def test_garbage_meta_never_raises(pristine: Path, tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "step_00000003"
    if not path.exists():
        shutil.copytree(pristine, path)
    (path / "meta.json").write_bytes(payload)
    problems = ck.verify_manifest(path)
    assert problems and all(isinstance(p, str) and p for p in problems)
    try:
        assert ck.read_meta(path)["schema"] == 1
    except CheckpointError as e:
        assert problems == [str(e).removeprefix(f"{path}: ")]


# --------------------------------------------------------------------------------------- failed saves
class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot serialize")


def _boom(*_a: Any, **_k: Any) -> Any:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["app_state", "meta_json", "rename", "fsync"])
def test_failed_save_leaves_previous_and_latest_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       where: str) -> None:
    first = _save(tmp_path, 1)
    model, optim = _trained(2)
    app, meta, expected = _app(model, optim), {}, OSError
    if where == "app_state":
        app["extra"] = {"bad": Unpicklable()}
        expected = RuntimeError  # unwrapped from DCP's CheckpointException, a BaseException
    elif where == "meta_json":
        meta, expected = {"not_json": object()}, TypeError
    elif where == "rename":
        monkeypatch.setattr(ck.os, "rename", _boom)
    else:
        monkeypatch.setattr(ck.fsio, "fsync_dir", _boom)
    with pytest.raises(expected):
        ck.save_checkpoint(tmp_path, 2, app, {}, {"config.json": b"{}"}, meta)
    monkeypatch.undo()
    assert _names(tmp_path) == ["latest", "step_00000001"]
    assert (tmp_path / "latest").read_text() == "step_00000001\n"
    assert ck.verify_manifest(first) == []


def test_crash_before_latest_update_is_found_by_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 1)
    monkeypatch.setattr(ck.fsio, "atomic_write_text", _boom)
    with pytest.raises(OSError):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text() == "step_00000001\n"
    log: list[str] = []
    assert ck.find_resume(tmp_path, log.append) == tmp_path / "step_00000002"
    assert log == [f"{tmp_path / 'latest'} names step_00000001 but the newest sound checkpoint is step_00000002"]


def test_resave_of_same_step_keeps_existing_and_replaces_unsound(tmp_path: Path) -> None:
    first = _save(tmp_path, 5)
    created = (first / "meta.json").read_bytes()
    (tmp_path / "latest").write_text("garbage")
    assert _save(tmp_path, 5) == first
    assert (first / "meta.json").read_bytes() == created
    assert (tmp_path / "latest").read_text() == "step_00000005\n"

    _flip_byte(first / DISTCP)
    log: list[str] = []
    again = _save(tmp_path, 5, log=log.append)
    assert ck.verify_manifest(again) == []
    aside = [n for n in _names(tmp_path) if ".corrupt-" in n]
    assert len(aside) == 1 and len(log) == 1 and "sha256 mismatch" in log[0] and aside[0] in log[0]


def test_reserved_meta_and_bad_extra_names_rejected(tmp_path: Path) -> None:
    model, optim = _trained(1)
    with pytest.raises(ValueError, match="reserved"):
        ck.save_checkpoint(tmp_path, 1, _app(model, optim), {}, {}, {"step": 3})
    for bad in ["../x", "/abs", "meta.json", "model/x", "rank_00001.pt", ""]:
        with pytest.raises(ValueError, match="plain relative path"):
            ck.save_checkpoint(tmp_path, 1, _app(model, optim), {}, {bad: b""}, {})
    assert not (tmp_path / "step_00000001").exists()


# ------------------------------------------------------------------------------------------- discovery
def test_find_resume_skips_torn_newest_and_missing_latest(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step)
    _flip_byte(tmp_path / "step_00000003" / DISTCP)
    (tmp_path / "step_00000002" / "stray.bin").write_text("")  # 2 is now torn too
    (tmp_path / "latest").unlink()
    (tmp_path / "step_00000009.tmp-abcd").mkdir()  # crashed save: ignored
    before = _names(tmp_path)
    log: list[str] = []
    assert ck.find_resume(tmp_path, log.append) == tmp_path / "step_00000001"
    assert log[0] == f"{tmp_path / 'latest'} is missing; scanning for the newest sound checkpoint"
    assert log[1] == f"skipping step_00000003: {DISTCP}: sha256 mismatch (file changed)"
    assert log[2] == "skipping step_00000002: stray.bin: unexpected file not in the manifest"
    assert _names(tmp_path) == before  # never deletes


@pytest.mark.parametrize(("latest", "why"), [
    (b"\xff\xfe", "is unreadable ('utf-8' codec can't decode"),
    (b"../../etc", "holds '../../etc', not a checkpoint name"),
    (b"step_00000042\n", "names step_00000042, which does not exist"),
])
def test_find_resume_reports_garbage_latest(tmp_path: Path, latest: bytes, why: str) -> None:
    _save(tmp_path, 1)
    (tmp_path / "latest").write_bytes(latest)
    log: list[str] = []
    assert ck.find_resume(tmp_path, log.append) == tmp_path / "step_00000001"
    assert len(log) == 1 and log[0].startswith(f"{tmp_path / 'latest'} {why}")
    assert log[0].endswith("; scanning for the newest sound checkpoint")


def test_find_resume_empty_or_all_torn(tmp_path: Path) -> None:
    assert ck.find_resume(tmp_path / "none", print) is None
    _save(tmp_path, 1)
    (tmp_path / "step_00000001" / "meta.json").unlink()
    log: list[str] = []
    assert ck.find_resume(tmp_path, log.append) is None
    assert log[0].startswith("skipping step_00000001: meta.json missing")
    assert log[1].endswith("names step_00000001 but no checkpoint is sound")


def test_list_checkpoints_and_cleanup_tmp(tmp_path: Path) -> None:
    _save(tmp_path, 2)
    _save(tmp_path, 1)
    (tmp_path / "step_00000002" / "meta.json").write_text("{}")
    for name in ("step_00000003.tmp-0a1b", "step_00000004.tmp-ff"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "junk").write_text("x")
    (tmp_path / "step_1").mkdir()  # not canonical: ignored
    infos = ck.list_checkpoints(tmp_path)
    assert [(i.step, i.committed) for i in infos] == [(1, True), (2, False)]
    assert infos[0].meta is not None and infos[0].meta["step"] == 1 and infos[1].problems
    assert ck.cleanup_tmp(tmp_path) == ["step_00000003.tmp-0a1b", "step_00000004.tmp-ff"]
    assert _names(tmp_path) == ["latest", "step_00000001", "step_00000002", "step_1"]


# ---------------------------------------------------------------------------------------------- prune
def test_prune_keeps_last_best_latest_protected_and_torn(tmp_path: Path) -> None:
    losses = {1: 3.0, 2: 1.0, 3: None, 4: 2.0, 5: float("nan"), 6: 2.5, 7: 4.0}
    for step, loss in losses.items():
        _save(tmp_path, step, val_loss=loss)
    (tmp_path / "latest").write_text("step_00000003\n")  # pretend a crash left latest behind
    (tmp_path / "step_00000001" / "meta.json").unlink()  # torn: left for the user
    deleted = ck.prune(tmp_path, keep_last=2, keep_best=True, protect={tmp_path / "step_00000005"})
    assert sorted(p.name for p in deleted) == ["step_00000004"]
    assert _names(tmp_path) == ["latest"] + [f"step_0000000{s}" for s in (1, 2, 3, 5, 6, 7)]
    deleted = ck.prune(tmp_path, keep_last=1, keep_best=False)
    assert sorted(p.name for p in deleted) == ["step_00000002", "step_00000005", "step_00000006"]
    assert _names(tmp_path) == ["latest", "step_00000001", "step_00000003", "step_00000007"]
    with pytest.raises(ValueError):
        ck.prune(tmp_path, keep_last=0, keep_best=True)


# ---------------------------------------------------------------------------------------------- async
def test_async_saver_one_at_a_time_and_errors_surface() -> None:
    saver: AsyncSaver[int] = AsyncSaver()
    active, peak, order = [0], [0], []
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        order.append(i)
        with lock:
            active[0] -= 1
        return i

    for i in range(4):
        saver.submit(lambda i=i: job(i))
    assert saver.wait() == 3 and order == [0, 1, 2, 3] and peak[0] == 1
    assert saver.wait() is None

    release = threading.Event()

    def failing() -> int:
        release.wait(5)
        raise OSError("disk full")

    saver.submit(failing)
    assert saver.busy
    saver.poll()  # still running: nothing to report
    release.set()
    while saver.busy:
        time.sleep(0.005)
    with pytest.raises(OSError, match="disk full"):
        saver.poll()
    saver.poll()  # reported once
    assert saver.wait() is None

    def boom() -> int:
        raise ValueError("boom")

    saver.submit(boom)
    ran: list[int] = []
    with pytest.raises(ValueError, match="boom"):
        saver.submit(lambda: ran.append(1) or 1)  # waits for the failed one first, does not run this
    assert ran == [] and not saver.busy
    saver.submit(lambda: 5)
    saver.close()
    assert ran == []


def test_async_save_of_snapshot_survives_later_mutation(tmp_path: Path) -> None:
    model, optim = _trained(1)
    expected = model.weight.detach().clone()
    saver: AsyncSaver[Path] = AsyncSaver()
    app = snapshot(_app(model, optim))
    saver.submit(lambda: ck.save_checkpoint(tmp_path, 1, app, {}, {}, {}))
    with torch.no_grad():
        model.weight.add_(1.0)  # the training loop moves on at once
    path = saver.wait()
    saver.close()
    fresh_model, fresh_optim = _trained(2)
    loaded = _app(fresh_model, fresh_optim)
    ck.load_app_state(path, loaded)
    assert torch.equal(loaded["model"]["weight"], expected)


def test_snapshot_copies_to_cpu_and_keeps_structure() -> None:
    t = torch.arange(4.0)
    snap = snapshot({"a": [t, (t, 3)], "b": "x"})
    t.add_(1)
    assert torch.equal(snap["a"][0], torch.arange(4.0)) and snap["a"][1][1] == 3 and snap["b"] == "x"
    assert snap["a"][0].data_ptr() != t.data_ptr()


# --------------------------------------------------------------------------------------------- kill -9
# A zygote imports torch once (seconds) and forks one saver per round (milliseconds). Each saver resumes
# like a real run (cleanup, find_resume), then saves and prunes in a loop until it is SIGKILLed.
ZYGOTE = r"""
import os, sys, traceback
from pathlib import Path
import torch
from slmtrain import checkpoint as ck

def saver(root):
    ck.cleanup_tmp(root)
    path = ck.find_resume(root, lambda m: None)
    step = ck.read_meta(path)["step"] if path else 0
    while True:
        step += 1
        w = torch.randn(1_000_000, generator=torch.Generator().manual_seed(step))
        ck.save_checkpoint(root, step, {"model": {"w": w}, "optim": {"m": w * 2}}, {"step": step},
                           {"config.json": b"{}"}, {"val_loss": float(step % 5)})
        ck.prune(root, keep_last=2, keep_best=True)

print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            saver(Path(line.strip()))
        except BaseException:
            traceback.print_exc()
        os._exit(3)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def test_kill9_mid_save_never_leaves_unsound_committed_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    rng = random.Random(20240611)
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert zygote.stdin is not None and zygote.stdout is not None
    mid_save = 0
    try:
        assert zygote.stdout.readline().strip() == "ready"
        for round_ in range(10):
            zygote.stdin.write(f"{root}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            deadline = time.monotonic() + 60
            while round_ == 0 and not (root / "latest").exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # let one save commit first, however slow the machine
            time.sleep(rng.uniform(0.03, 0.35))
            os.kill(pid, signal.SIGKILL)
            status = int(zygote.stdout.readline())
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "saver died on its own"
            mid_save += any(".tmp-" in n for n in _names(root))
            infos = ck.list_checkpoints(root)
            assert all(i.committed for i in infos), [(i.path.name, i.problems) for i in infos]
            if not infos:
                continue
            if (root / "latest").exists():  # absent only if the very first save died before updating it
                assert (root / "latest").read_text().strip() in {i.path.name for i in infos}
            path = ck.find_resume(root, lambda m: None)
            assert path == infos[-1].path
            step = ck.read_meta(path)["step"]
            app = {"model": {"w": torch.zeros(1_000_000)}, "optim": {"m": torch.zeros(1_000_000)}}
            ck.load_app_state(path, app)
            assert torch.equal(app["model"]["w"], torch.randn(1_000_000, generator=torch.Generator().manual_seed(step)))
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    assert zygote.returncode == 0, zygote.stderr.read() if zygote.stderr else ""
    assert ck.list_checkpoints(root)
    assert mid_save >= 1, "no kill landed inside a save: the test exercised nothing"
