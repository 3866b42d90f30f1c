"""`slmtrain verify` on real checkpoints: sound ones pass, each kind of damage fails with its own message.

Damage that leaves the manifest intact is "re-sealed": the sizes, checksums and meta.json's own digest
are recomputed after tampering, so the deeper check is what has to catch it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import run_cli, write_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmtrain import cli
from slmtrain.ckptload import load_model
from slmtrain.data.stories import generate_stories
from slmtrain.data.tokenizer import train_bpe
from slmtrain.errors import UserError
from slmtrain.manifest import meta_digest
from slmtrain.reference import MARGIN_TOLERANCE
from slmtrain.verify import CHECKS, Report, resolve_targets, verify

CHECK_NAMES = [name for name, _ in CHECKS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An fp32 run with checkpoints at steps 10 and 20; bf16, fp16 (grad scaler) and untied llama runs."""
    tmp = tmp_path_factory.mktemp("verify-runs")
    recipe = write_recipe(tmp, tmp / "cache")
    common = ["--set", "log.every_steps=5"]
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp / "fp32"), "--set", "train.max_steps=20",
                     "--set", "checkpoint.every_steps=10", "--set", "eval.every_steps=10", *common]) == 0
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp / "bf16"), "--set", "run.precision='bf16'",
                     "--set", "train.max_steps=6", "--set", "eval.every_steps=0", *common]) == 0
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp / "fp16"), "--set", "run.precision='fp16'",
                     "--set", "train.max_steps=4", "--set", "eval.every_steps=0", *common]) == 0
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp / "llama"), "--set", "model.flavour='llama'",
                     "--set", "model.tie_embeddings=false", "--set", "train.max_steps=4", "--set", "eval.every_steps=0",
                     *common]) == 0
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp / "muon"), "--set", "model.flavour='llama'",
                     "--set", "optim.name='muon'", "--set", "model.qk_norm=true", "--set", "model.relu2=true",
                     "--set", "model.zero_init=true", "--set", "model.logit_softcap=15.0",
                     "--set", "train.max_steps=4", "--set", "eval.every_steps=0", *common]) == 0
    return {"fp32": tmp / "fp32", "bf16": tmp / "bf16", "fp16": tmp / "fp16", "llama": tmp / "llama",
            "muon": tmp / "muon"}


@pytest.fixture(scope="module")
def final(runs: dict[str, Path]) -> Path:
    return runs["fp32"] / "checkpoints" / "step_00000020"


@pytest.fixture()
def ckpt(final: Path, tmp_path: Path) -> Path:
    """A private copy of the final checkpoint to damage (same directory name: the step must match it)."""
    return Path(shutil.copytree(final, tmp_path / final.name))


# ---------------------------------------------------------------------------------------- tampering
def _read_meta(ckpt: Path) -> dict[str, Any]:
    return orjson.loads((ckpt / "meta.json").read_bytes())


def _write_meta(ckpt: Path, meta: dict[str, Any]) -> None:
    """Write meta.json with its own digest recomputed (the manifest entries as given)."""
    meta["meta_sha256"] = meta_digest(meta)
    (ckpt / "meta.json").write_bytes(orjson.dumps(meta))


def reseal(ckpt: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Recompute every manifest entry and meta.json's digest, optionally after editing meta."""
    meta = _read_meta(ckpt)
    if edit is not None:
        edit(meta)
    meta["files"] = {f.relative_to(ckpt).as_posix(): {"size": f.stat().st_size,
                                                     "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
                     for f in sorted(ckpt.rglob("*")) if f.is_file() and f.name != "meta.json"}
    _write_meta(ckpt, meta)


def _resave_model(ckpt: Path, change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    """Rewrite model/ through DCP with a changed state dict, then re-seal."""
    model, _cfg, _tok = load_model(ckpt)
    sd = change({k: v.clone() for k, v in model.state_dict().items()})
    shutil.rmtree(ckpt / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": sd}, checkpoint_id=ckpt / "model", no_dist=True)
    reseal(ckpt)


def _edit_config(ckpt: Path, section: str, key: str, value: Any) -> None:
    raw = orjson.loads((ckpt / "config.json").read_bytes())
    raw["recipe"][section][key] = value
    (ckpt / "config.json").write_bytes(orjson.dumps(raw))


def _flip(f: Path, at: int) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))


def _status(report: Report) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.detail) for c in report.checks}


def _assert_fails(report: Report, check: str, needle: str) -> None:
    status, detail = _status(report)[check]
    assert not report.sound, report.format()
    assert status == "fail", report.format()
    assert needle in detail, report.format()


# ------------------------------------------------------------------------------------------- sound
@pytest.mark.parametrize("which", ["step_00000010", "step_00000020"])
def test_final_and_intermediate_checkpoints_are_sound(runs: dict[str, Path], which: str) -> None:
    report = verify(runs["fp32"] / "checkpoints" / which)
    assert report.sound, report.format()
    assert [c.name for c in report.checks] == CHECK_NAMES
    assert all(c.status == "pass" and c.detail for c in report.checks), report.format()
    assert report.format().splitlines()[-1].startswith("SOUND")


@pytest.mark.parametrize("run", ["bf16", "fp16", "llama", "muon"])
def test_other_precisions_and_flavours_verify_on_cpu_in_fp32(runs: dict[str, Path], run: str) -> None:
    (ckpt,) = resolve_targets(runs[run])
    report = verify(ckpt)
    assert report.sound, report.format()
    assert all(c.status == "pass" for c in report.checks), report.format()
    assert "float32" in _status(report)["weights"][1]
    assert ("grad scaler" in _status(report)["optimizer"][1]) == (run == "fp16")
    assert _status(report)["tied_weights"][1].startswith("untied" if run == "llama" else "output projection is")
    assert ("8 Muon matrices with momentum_buffer" in _status(report)["optimizer"][1]) == (run == "muon")


def _drop_optim_entry(ckpt: Path, suffix: str) -> None:
    """Remove one entry from optim/'s DCP metadata (as if it had never been saved), then re-seal."""
    import pickle

    md = dcp.FileSystemReader(str(ckpt / "optim")).read_metadata()
    key = next(k for k in md.state_dict_metadata if k.endswith(suffix))
    del md.state_dict_metadata[key]
    md.planner_data.pop(key, None)
    md.storage_data = {i: v for i, v in md.storage_data.items() if i.fqn != key}
    (ckpt / "optim" / ".metadata").write_bytes(pickle.dumps(md))
    reseal(ckpt)


def test_a_muon_matrix_without_its_momentum_fails(runs: dict[str, Path], tmp_path: Path) -> None:
    (src,) = resolve_targets(runs["muon"])
    ckpt = Path(shutil.copytree(src, tmp_path / src.name))
    _drop_optim_entry(ckpt, "h.1.mlp.c_fc.weight.momentum_buffer")
    _assert_fails(verify(ckpt), "optimizer", "no state for parameter h.1.mlp.c_fc.weight")


def test_a_copied_checkpoint_verifies_anywhere(ckpt: Path) -> None:
    assert verify(ckpt).sound


# ------------------------------------------------------------------------------------------ damage
def _damage(ckpt: Path, kind: str) -> tuple[str, str]:
    """Apply one kind of damage; returns (the check that must fail, a phrase its message must hold)."""
    if kind == "flipped_weight_byte":
        _flip(ckpt / "model" / "__0_0.distcp", 2000)
        return "manifest", "model/__0_0.distcp: sha256 mismatch"
    if kind == "truncated_optimizer":
        f = ckpt / "optim" / "__0_0.distcp"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return "manifest", "optim/__0_0.distcp: size"
    if kind == "truncated_optimizer_resealed":
        f = ckpt / "optim" / "__0_0.distcp"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        reseal(ckpt)
        return "optimizer", "cannot read optim/"
    if kind == "config_unsealed":
        _edit_config(ckpt, "model", "n_layer", 3)
        return "manifest", "config.json: size"
    if kind == "n_layer":
        _edit_config(ckpt, "model", "n_layer", 3)
        reseal(ckpt)
        return "weights", "missing h.2."
    m = orjson.loads((ckpt / "config.json").read_bytes())["recipe"]["model"]
    if kind == "n_embd":
        _edit_config(ckpt, "model", "n_embd", m["n_embd"] + 32)
        reseal(ckpt)
        return "weights", (f"shape mismatch (file != config.json): wte.weight [{m['vocab_size']}, {m['n_embd']}] != "
                           f"[{m['vocab_size']}, {m['n_embd'] + 32}]")
    if kind == "n_head":
        # Same shapes (heads split one matrix), different function: only the replays can tell.
        _edit_config(ckpt, "model", "n_head", m["n_head"] * 2)
        reseal(ckpt)
        return "logprobs", "replayed loss"
    if kind == "vocab_size":
        _edit_config(ckpt, "model", "vocab_size", m["vocab_size"] + 64)
        reseal(ckpt)
        return "tokenizer", (f"the embedding in model/ has {m['vocab_size']} rows but config.json says vocab_size "
                             f"{m['vocab_size'] + 64}")
    if kind == "tie_broken":
        _resave_model(ckpt, lambda sd: {**sd, "lm_head.weight": sd["wte.weight"].clone()})
        return "tied_weights", "separate output matrix lm_head.weight: the tie was broken"
    if kind == "fp16_weights":
        _resave_model(ckpt, lambda sd: {k: v.half() for k, v in sd.items()})
        return "weights", "weights stored as float16"
    if kind == "swapped_tokenizer":
        other = train_bpe(generate_stories(300, seed=5), 300, 2)
        (ckpt / "tokenizer.json").write_text(other.to_json())
        reseal(ckpt)
        return "tokenizer", "tokenizer.json fingerprint"
    if kind == "manifest_entry_deleted":
        meta = _read_meta(ckpt)
        del meta["files"]["reference.safetensors"]
        _write_meta(ckpt, meta)
        return "manifest", "reference.safetensors: unexpected file not in the manifest"
    if kind == "file_deleted":
        (ckpt / "rank_00000.pt").unlink()
        return "manifest", "rank_00000.pt: missing"
    if kind == "stray_file":
        (ckpt / "model" / "notes.txt").write_text("hello")
        return "manifest", "model/notes.txt: unexpected file"
    if kind == "reference_edited_unsealed":
        meta = _read_meta(ckpt)
        meta["reference"]["generations"][0]["tokens"][0] += 1
        (ckpt / "meta.json").write_bytes(orjson.dumps(meta))
        return "manifest", "meta.json: content does not match its own sha256"
    if kind == "reference_edited":
        gens = _read_meta(ckpt)["reference"]["generations"]
        g, i = max(((g, i) for g in range(len(gens)) for i in range(len(gens[g]["margins"]))),
                   key=lambda gi: gens[gi[0]]["margins"][gi[1]])
        assert gens[g]["margins"][i] >= MARGIN_TOLERANCE  # a confident token: no tolerance applies

        def edit(meta: dict[str, Any]) -> None:
            tokens = meta["reference"]["generations"][g]["tokens"]
            tokens[i] = (tokens[i] + 1) % m["vocab_size"]

        reseal(ckpt, edit)
        return "generations", f"token {i} is"
    if kind == "reference_too_long":
        def edit(meta: dict[str, Any]) -> None:  # would take minutes to replay if it were not refused
            g = meta["reference"]["generations"][0]
            g["tokens"], g["margins"] = [1] * 100_000, [1.0] * 100_000

        reseal(ckpt, edit)
        n = orjson.loads((ckpt / "config.json").read_bytes())["recipe"]["checkpoint"]["reference_tokens"]
        return "generations", f"is malformed in meta.json (expected {n} tokens"
    if kind == "adam_step":
        reseal(ckpt, lambda meta: meta["trainer"].update(skipped=3))
        return "optimizer", "AdamW step 20"
    if kind == "scheduler":
        reseal(ckpt, lambda meta: meta["scheduler"].update(last_epoch=19))
        return "scheduler", "scheduler last_epoch 19 != step 20"
    if kind == "tokens":
        reseal(ckpt, lambda meta: (meta.update(tokens=123), meta["trainer"].update(tokens=123)))
        return "scheduler", "tokens 123 is not a whole number of steps"
    if kind == "reference_batch":
        import safetensors.torch

        ref = safetensors.torch.load_file(str(ckpt / "reference.safetensors"))
        ref["logprobs"] = torch.log_softmax(torch.randn_like(ref["logprobs"]), dim=-1)
        (ckpt / "reference.safetensors").write_bytes(safetensors.torch.save(ref))
        reseal(ckpt)
        return "logprobs", "mean KL(recorded || replayed)"
    raise AssertionError(kind)


DAMAGE = ["flipped_weight_byte", "truncated_optimizer", "truncated_optimizer_resealed", "config_unsealed", "n_layer",
          "n_embd", "n_head", "vocab_size", "tie_broken", "fp16_weights", "swapped_tokenizer", "manifest_entry_deleted",
          "file_deleted", "stray_file", "reference_edited_unsealed", "reference_edited", "reference_too_long",
          "adam_step", "scheduler", "tokens", "reference_batch"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_is_caught_with_a_specific_message(ckpt: Path, kind: str) -> None:
    check, needle = _damage(ckpt, kind)
    report = verify(ckpt)
    _assert_fails(report, check, needle)
    assert report.format().splitlines()[-1].startswith("NOT SOUND")
    if check != "manifest":
        assert _status(report)["manifest"][0] == "pass"  # re-sealed: the deeper check caught it


def test_weights_changed_and_resealed_fail_the_replays(ckpt: Path) -> None:
    def nudge(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sd["h.0.mlp.c_fc.weight"] += 0.05 * torch.randn_like(sd["h.0.mlp.c_fc.weight"])
        return sd

    _resave_model(ckpt, nudge)
    report = verify(ckpt)
    status = _status(report)
    assert status["manifest"][0] == status["weights"][0] == "pass"
    _assert_fails(report, "logprobs", "replayed loss")


def test_near_tie_is_a_warning_and_strict_makes_it_fail(ckpt: Path) -> None:
    # A token recorded at a near-tie may flip on another machine: warn there, compare nothing after it.
    def edit(meta: dict[str, Any]) -> None:
        g = meta["reference"]["generations"][1]
        g["tokens"][2] = (g["tokens"][2] + 1) % 256
        g["tokens"][5] = (g["tokens"][5] + 1) % 256  # after the tie: must not be compared
        g["margins"][2] = MARGIN_TOLERANCE / 2

    reseal(ckpt, edit)
    report = verify(ckpt)
    assert report.sound, report.format()
    status, detail = _status(report)["generations"]
    assert status == "warn" and "token 2 differs" in detail and "were not compared" in detail
    strict = verify(ckpt, strict=True)
    _assert_fails(strict, "generations", "(--strict)")


def test_untied_checkpoint_must_hold_both_matrices(ckpt: Path) -> None:
    _edit_config(ckpt, "model", "tie_embeddings", False)
    reseal(ckpt)
    report = verify(ckpt)
    _assert_fails(report, "tied_weights", "tie_embeddings = false but model/ lacks lm_head.weight")
    _assert_fails(report, "weights", "missing lm_head.weight")


def test_pickled_code_in_dcp_metadata_is_refused_not_run(ckpt: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    import pickle

    (ckpt / "model" / ".metadata").write_bytes(pickle.dumps(Evil()))
    reseal(ckpt)
    report = verify(ckpt)
    _assert_fails(report, "weights", "refusing to load pathlib.Path.touch")
    assert not marker.exists()


# ------------------------------------------------------------------------------------- garbage (property)
def _files(final: Path) -> list[str]:
    return sorted(f.relative_to(final).as_posix() for f in final.rglob("*") if f.is_file())


def _verify_with(final: Path, rel: str, content: bytes) -> Report:
    tmp = Path(tempfile.mkdtemp(prefix="verify-garbage-"))
    try:
        ckpt = Path(shutil.copytree(final, tmp / final.name))
        (ckpt / rel).write_bytes(content)
        return verify(ckpt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _assert_refused(report: Report) -> None:
    assert not report.sound
    assert [c.name for c in report.checks] == CHECK_NAMES
    failed = [c for c in report.checks if c.status == "fail"]
    assert failed and all(c.detail.strip() for c in failed)


_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(
    max_size=20)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.text(max_size=10), inner, max_size=5), max_leaves=20)
# Derandomized: the same examples on every run, so a failure reproduces.
_garbage = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@_garbage
@given(data=st.data())
def test_random_bytes_over_any_file_never_pass_never_raise(final: Path, data: st.DataObject) -> None:
    rel = data.draw(st.sampled_from(_files(final)), label="file")
    content = data.draw(st.binary(max_size=2048), label="bytes")
    _assert_refused(_verify_with(final, rel, content))


@_garbage
@given(data=st.data())
def test_random_json_over_any_file_never_pass_never_raise(final: Path, data: st.DataObject) -> None:
    rel = data.draw(st.sampled_from(_files(final)), label="file")
    content = orjson.dumps(data.draw(_json, label="json"))
    _assert_refused(_verify_with(final, rel, content))


def test_verify_never_raises_on_non_directories(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "absent", tmp_path):
        _assert_refused(verify(path))


# ------------------------------------------------------------------------------------------- targets
def test_run_directory_resolves_to_latest_or_all(runs: dict[str, Path], tmp_path: Path) -> None:
    root = runs["fp32"] / "checkpoints"
    assert resolve_targets(runs["fp32"]) == [root / "step_00000020"]
    assert resolve_targets(root) == [root / "step_00000020"]
    assert resolve_targets(runs["fp32"], all_checkpoints=True) == [root / "step_00000010", root / "step_00000020"]
    # A dangling `latest` falls back to the newest step directory, and says so.
    run = Path(shutil.copytree(runs["fp32"], tmp_path / "run"))
    (run / "checkpoints" / "latest").write_text("step_00000099\n")
    told: list[str] = []
    assert resolve_targets(run, log=told.append) == [run / "checkpoints" / "step_00000020"]
    assert "step_00000099" in told[0]


@pytest.mark.parametrize("kind", ["absent", "file", "empty_run", "plain_dir"])
def test_bad_paths_are_usage_errors(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("x")
    elif kind == "empty_run":
        (path / "checkpoints").mkdir(parents=True)
        (path / "recipe.toml").write_text("")
    elif kind == "plain_dir":
        path.mkdir()
        (path / "notes.txt").write_text("x")
    with pytest.raises(UserError):
        resolve_targets(path)
    assert cli.main(["verify", str(path)]) == 2


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_in_process_report_and_all(runs: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(runs["fp32"])]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("verify ") and out[-1].startswith("SOUND")
    assert [line.split(":")[0] for line in out[1:-1]] == [f"PASS {n}" for n in CHECK_NAMES]
    assert cli.main(["verify", str(runs["fp32"]), "--all", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["sound"] is True and [Path(c["path"]).name for c in doc["checkpoints"]] == [
        "step_00000010", "step_00000020"]
    run = Path(shutil.copytree(runs["fp32"], tmp_path / "run"))
    (run / "checkpoints" / "step_00000010" / "tokenizer.json").write_text("{}")
    assert cli.main(["verify", str(run)]) == 0  # latest is intact
    capsys.readouterr()
    assert cli.main(["verify", str(run), "--all"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "NOT SOUND: 1 of 2 checkpoints (step_00000010)"


def test_cli_subprocess_exit_codes_and_json(runs: dict[str, Path], ckpt: Path) -> None:
    proc = run_cli("verify", str(runs["fp32"]), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["sound"] is True and doc["seconds"] > 0
    assert Path(doc["path"]).name == "step_00000020"
    assert [(c["name"], c["status"]) for c in doc["checks"]] == [(n, "pass") for n in CHECK_NAMES]

    _damage(ckpt, "fp16_weights")
    proc = run_cli("verify", str(ckpt), timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("NOT SOUND") and "weights" in lines[-1]
    assert any(line.startswith("FAIL weights: weights stored as float16") for line in lines)
