"""Load a model, its recipe and its tokenizer from one checkpoint directory alone.

Shared by `slmtrain verify`, `generate` and `eval`: config.json gives the recipe, the model is rebuilt
from its `[model]` section in fp32, the weights come from the checkpoint's `model/` directory
(torch.distributed.checkpoint) and tokenizer.json gives the tokenizer. Nothing else is read: no recipe
file, no run directory, no data. Weights are always mapped to the requested device, whatever device the
run trained on.

Trust: DCP's `.metadata` files are pickles, which DCP unpickles without restriction. Everything here
reads them first with an unpickler that only builds DCP's own metadata types, and `load_flat` reads
non-tensor values with `weights_only`, so loading a checkpoint's metadata runs no code from it.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

import slmtrain.checkpoint as checkpoint
import slmtrain.config as config_mod
from slmtrain.checkpoint import find_resume, load_app_state
from slmtrain.data.tokenizer import Tokenizer
from slmtrain.errors import CheckpointError, DataError, UserError
from slmtrain.manifest import LATEST_FILE, META_FILE, MODEL_DIR, parse_step, verify_manifest
from slmtrain.model import GPT

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
_MAX_METADATA_BYTES = 256 << 20
# DCP keys of the weights are the model's state_dict keys under this prefix ({"model": state_dict}).
MODEL_PREFIX = "model."
_ERROR_CHARS = 600


def one_line(text: object, limit: int) -> str:
    """`str(text)` (a message or an exception) on one line, whitespace collapsed, at most `limit` characters."""
    return " ".join(str(text).split())[:limit]


# -------------------------------------------------------------------------------------------- locating
def is_checkpoint_dir(path: Path) -> bool:
    """True for a directory that looks like one checkpoint (sound or not): meta.json, config.json or model/."""
    path = Path(path)
    return path.is_dir() and (parse_step(path.name) is not None
                              or any((path / n).exists() for n in (META_FILE, CONFIG_FILE, MODEL_DIR)))


def step_dirs(root: Path) -> list[Path]:
    """The `step_N` directories under `root`, oldest first (sound or not; tmp and moved-aside ones excluded)."""
    return [path for _step, path in checkpoint.step_dirs(Path(root))]


def checkpoints_root(path: Path) -> Path | None:
    """Where a run directory (or a checkpoints directory given itself) keeps its `step_N/` checkpoints, else None."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        if root.is_dir() and ((root / LATEST_FILE).exists() or step_dirs(root)):
            return root
    return None


def resolve_checkpoint(path: str | Path, log: Callable[[str], None]) -> Path:
    """A checkpoint directory as given, or the newest sound checkpoint of a run directory.

    Raises:
        UserError: `path` is neither, or the run has no checkpoint yet.
        CheckpointError: the run has checkpoints but none is sound.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a checkpoint directory (runs/NAME/checkpoints/step_N) or a "
                        f"run directory (runs/NAME)")
    if is_checkpoint_dir(path):
        return path
    root = checkpoints_root(path)
    if root is None:
        raise UserError(f"{path} is neither a checkpoint nor a run directory with checkpoints: pass "
                        f"runs/NAME or runs/NAME/checkpoints/step_N (a run saves its first checkpoint at "
                        f"checkpoint.every_steps or at the end)")
    chosen = find_resume(root, log)
    if chosen is None:
        raise CheckpointError(f"no sound checkpoint under {root}; `slmtrain verify {path} --all` shows what is "
                              f"wrong with each")
    return chosen


# --------------------------------------------------------------------------------------------- loading
def read_config(ckpt: Path) -> tuple[dict[str, Any], config_mod.Config]:
    """config.json of a checkpoint, raw and as a validated Config (model.vocab_size resolved).

    Raises:
        CheckpointError: unreadable, not JSON, or its recipe does not validate.
    """
    f = Path(ckpt) / CONFIG_FILE
    try:
        raw = orjson.loads(f.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{f} is missing") from None
    except (OSError, orjson.JSONDecodeError) as e:
        raise CheckpointError(f"{f} is unreadable or not JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("recipe"), dict):
        raise CheckpointError(f"{f} holds no 'recipe' object")
    if raw.get("schema") != config_mod.SCHEMA_VERSION:
        raise CheckpointError(f"{f}: recipe schema {raw.get('schema')!r:.40} unsupported (this slmtrain reads "
                              f"schema {config_mod.SCHEMA_VERSION})")
    try:
        cfg = config_mod.from_dict(raw["recipe"], origin=str(f))
    except UserError as e:
        raise CheckpointError(str(e)) from None
    if cfg.model.vocab_size <= 0:
        raise CheckpointError(f"{f}: model.vocab_size is {cfg.model.vocab_size}; a checkpoint's config records the "
                              f"resolved embedding size")
    return raw, cfg


def build_model(mcfg: config_mod.ModelConfig, device: str | torch.device = "cpu") -> GPT:
    """The fp32 model of `mcfg` on `device`, with UNINITIALISED weights: only for a strict load right after.

    Built on the meta device first, so no time goes into a random init that the load overwrites.
    """
    with torch.device("meta"):
        model = GPT(mcfg)
    return model.to_empty(device=device).float()


_ALLOWED_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                    *(("pathlib", n) for n in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"))}
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata objects only: any other global in the pickle is refused, so no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module in _DCP_MODULES and isinstance(obj := super().find_class(module, name), type):
            return obj  # DCP's metadata dataclasses
        if module == "torch" and isinstance(obj := super().find_class(module, name), _TORCH_VALUES):
            return obj  # dtypes, layouts, memory formats
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint's DCP metadata")


def read_dcp_metadata(directory: Path) -> Metadata:
    """The `.metadata` of a DCP directory, unpickled safely: DCP's metadata types only, so no code runs.

    DCP itself unpickles `.metadata` without restriction; reading it here first keeps a crafted pickle
    from running when a checkpoint is verified or loaded for generation.

    Raises:
        CheckpointError: missing, oversized, or not a pickle of DCP metadata.
    """
    f = Path(directory) / ".metadata"
    try:
        size = f.stat().st_size
        if size > _MAX_METADATA_BYTES:
            raise CheckpointError(f"{f.parent.name}/.metadata is {size} bytes, not DCP metadata")
        md = _MetadataUnpickler(io.BytesIO(f.read_bytes())).load()
    except FileNotFoundError:
        raise CheckpointError(f"{f.parent.name}/.metadata is missing") from None
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - unpickling garbage raises almost any type
        raise CheckpointError(f"{f.parent.name}/.metadata is not DCP metadata ({type(e).__name__}: "
                              f"{one_line(e, 300)})") from None
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise CheckpointError(f"{f.parent.name}/.metadata holds a {type(md).__name__}, not DCP metadata")
    return md


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return read_dcp_metadata(Path(self.path))


class _SafePlanner(DefaultLoadPlanner):
    """Loads flat keys; non-tensor values are unpickled with weights_only and collected in `objects`."""

    def __init__(self) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.objects: dict[str, Any] = {}

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        self.objects[read_item.dest_index.fqn] = torch.load(value, weights_only=True)


def load_flat(directory: Path, md: Metadata, keys: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The values of `keys` (flat DCP keys) of one DCP directory: (tensors, other objects).

    `md` is the directory's metadata as `read_dcp_metadata` returned it; the reader never unpickles
    `.metadata` again, and non-tensor values are unpickled with weights_only.

    Raises:
        CheckpointError: DCP cannot read the values.
    """
    state: dict[str, Any] = {}
    for k in keys:
        m = md.state_dict_metadata[k]
        state[k] = torch.empty(m.size, dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
    planner = _SafePlanner()
    no_dist = not (dist.is_available() and dist.is_initialized())
    try:
        dcp.load(state, storage_reader=_SafeReader(directory), planner=planner, no_dist=no_dist)
    except CheckpointException as e:
        failures = [f"{type(err).__name__}: {one_line(err, _ERROR_CHARS)}" for err, *_ in (e.failures or {}).values()]
        why = "; ".join(failures) or one_line(e, _ERROR_CHARS)
        raise CheckpointError(f"cannot read {directory.name}/: {why}") from None
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, planner.objects


def tensor_entries(md: Metadata) -> dict[str, tuple[tuple[int, ...], torch.dtype] | None]:
    """{key: (shape, dtype)} of a DCP directory; None for a non-tensor (bytes) entry."""
    return {k: (tuple(v.size), v.properties.dtype) if isinstance(v, TensorStorageMetadata) else None
            for k, v in md.state_dict_metadata.items()}


def load_weights(ckpt: Path, model: GPT) -> None:
    """Fill `model` from the checkpoint's model/ strictly (missing, unexpected or misshapen keys raise).

    Raises:
        CheckpointError: unsafe or unreadable metadata, DCP cannot load it, or the strict load fails.
    """
    read_dcp_metadata(Path(ckpt) / MODEL_DIR)
    state = {"model": model.state_dict()}
    load_app_state(Path(ckpt), state)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt}: the weights do not fit the model of config.json: {e}") from None


def load_tokenizer(ckpt: Path) -> Tokenizer:
    """tokenizer.json of a checkpoint. Raises CheckpointError when it is missing or not a tokenizer."""
    try:
        return Tokenizer.from_file(Path(ckpt) / TOKENIZER_FILE)
    except DataError as e:
        raise CheckpointError(str(e)) from None


def load_model(ckpt: str | Path, device: str | torch.device = "cpu",
               check_files: bool = True) -> tuple[GPT, config_mod.Config, Tokenizer]:
    """The model (fp32, eval mode, on `device`), recipe and tokenizer of one checkpoint.

    Args:
        ckpt: a checkpoint directory (not a run directory: see `resolve_checkpoint`).
        device: where the weights go, whatever device the run trained on.
        check_files: verify sizes and checksums against meta.json first (refuse a damaged checkpoint).

    Raises:
        CheckpointError: the files do not verify, or config/weights/tokenizer cannot be loaded.
    """
    ckpt = Path(ckpt)
    if check_files and (problems := verify_manifest(ckpt)):
        raise CheckpointError(f"{ckpt} is not sound: {'; '.join(problems[:5])}. Run `slmtrain verify {ckpt}` for a "
                              f"full report")
    _raw, cfg = read_config(ckpt)
    model = build_model(cfg.model, device)
    load_weights(ckpt, model)
    return model.eval(), cfg, load_tokenizer(ckpt)
