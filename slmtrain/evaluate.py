"""Load a model from a checkpoint alone, and measure it: loss, perplexity and bits per byte.

Loading (shared by `slmtrain verify`, `generate` and `eval`): config.json gives the recipe, the model
is rebuilt from its `[model]` section in fp32, the weights come from the checkpoint's `model/`
directory (torch.distributed.checkpoint) and tokenizer.json gives the tokenizer. Nothing else is
read: no recipe file, no run directory, no data. Weights are always mapped to the requested device,
whatever device the run trained on.

Evaluation walks a token stream in consecutive, non-overlapping windows of `seq_len + 1` tokens (each
predicts `seq_len` targets), from the start of the stream, in fp32 without autocast. The windows are a
pure function of the stream, so two checkpoints evaluated on the same data see the same tokens. Bits
per byte use the tokens-per-byte ratio of the whole stream (EOS counted as one byte per document, as
in data preparation), so they compare across tokenizers.
"""

from __future__ import annotations

import io
import pickle
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch.distributed.checkpoint.metadata import Metadata

from slmtrain import config as config_mod
from slmtrain.checkpoint import find_resume, load_app_state
from slmtrain.data.tokenizer import Tokenizer
from slmtrain.errors import CheckpointError, DataError, UserError
from slmtrain.manifest import LATEST_FILE, META_FILE, MODEL_DIR, verify_manifest
from slmtrain.model import GPT
from slmtrain.train import bits_per_byte, perplexity

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
_STEP_DIR = re.compile(r"step_\d{8,}")
_MAX_METADATA_BYTES = 256 << 20
# DCP keys of the weights are the model's state_dict keys under this prefix ({"model": state_dict}).
MODEL_PREFIX = "model."
_DATA_KINDS = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


# -------------------------------------------------------------------------------------------- locating
def is_checkpoint_dir(path: Path) -> bool:
    """True for a directory that looks like one checkpoint (sound or not): meta.json, config.json or model/."""
    path = Path(path)
    return path.is_dir() and (bool(_STEP_DIR.fullmatch(path.name))
                              or any((path / n).exists() for n in (META_FILE, CONFIG_FILE, MODEL_DIR)))


def step_dirs(root: Path) -> list[Path]:
    """The `step_N` directories under `root`, oldest first (sound or not; tmp and moved-aside ones excluded)."""
    root = Path(root)
    found = [c for c in root.iterdir() if _STEP_DIR.fullmatch(c.name) and c.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda c: int(c.name[5:]))


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
        why = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{f.parent.name}/.metadata is not DCP metadata ({type(e).__name__}: {why})") from None
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise CheckpointError(f"{f.parent.name}/.metadata holds a {type(md).__name__}, not DCP metadata")
    return md


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


def pick_device(name: str) -> torch.device:
    """"auto": CUDA, else MPS, else CPU; any other name as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    return torch.device(name)


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


# ------------------------------------------------------------------------------------------ evaluating
@dataclass
class EvalResult:
    """Mean next-token loss (nats per token) over `tokens` targets in `windows` windows, and derived figures."""

    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    windows: int
    tokens_per_byte: float
    data: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _windows(tokens: np.ndarray, seq_len: int) -> tuple[int, int]:
    """(count, targets per window): consecutive windows of seq_len+1 tokens, or one shorter one for a short stream."""
    n = int(tokens.shape[0])
    if n < 2:
        raise DataError(f"the evaluation data holds {n} token(s): at least 2 are needed (one input, one target)")
    if n >= seq_len + 1:
        return (n - 1) // seq_len, seq_len
    return 1, n - 1


def batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_batches: int = 0) -> Iterator[torch.Tensor]:
    """(B, T+1) int64 windows of `tokens`, in order; at most `max_batches` batches (0: every window)."""
    count, t = _windows(tokens, seq_len)
    if max_batches:
        count = min(count, max_batches * batch_size)
    for start in range(0, count, batch_size):
        rows = [np.asarray(tokens[i * t: i * t + t + 1], dtype=np.int64)
                for i in range(start, min(count, start + batch_size))]
        yield torch.from_numpy(np.stack(rows))


@torch.no_grad()
def mean_loss(model: GPT, tokens: np.ndarray, batch_size: int, max_batches: int = 0) -> tuple[float, int, int]:
    """(mean loss in nats per target, targets, windows) of `model` over `tokens`, fp32, eval mode."""
    device = model.wte.weight.device
    was_training = model.training
    model.eval()
    total, targets, windows = 0.0, 0, 0
    try:
        for batch in batches(tokens, model.cfg.seq_len, batch_size, max_batches):
            batch = batch.to(device)
            _, loss = model(batch[:, :-1], batch[:, 1:])
            n = batch[:, 1:].numel()
            total += float(loss.double()) * n
            targets += n
            windows += batch.shape[0]
    finally:
        model.train(was_training)
    return total / targets, targets, windows


def tokenize_documents(tok: Tokenizer, docs: list[str]) -> tuple[np.ndarray, int]:
    """One token stream (EOS after each document) and its byte count (UTF-8 bytes + 1 per EOS, as prepare counts)."""
    ids = tok.encode_batch(docs)
    flat = np.fromiter((t for doc in ids for t in (*doc, tok.eos_id)), dtype=np.int64,
                       count=sum(len(d) + 1 for d in ids))
    return flat, sum(len(d.encode("utf-8")) for d in docs) + len(docs)


def data_config(spec: str, text_key: str) -> config_mod.DataConfig:
    """A `[data]` section reading `spec` (a .txt/.jsonl/.json/.parquet file or directory, or hf:NAME) as validation.

    Raises:
        UserError: the kind of `spec` cannot be told from its name, or it does not exist.
    """
    if spec.startswith("hf:"):
        return config_mod.DataConfig(source=spec, text_key=text_key)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"--data {spec!r} does not exist: pass a .txt (stories separated by <|endoftext|>), .jsonl, "
                        f".json or .parquet file or directory, or hf:DATASET")
    kinds = {_DATA_KINDS[p.suffix.lower()] for p in ([path] if path.is_file() else path.rglob("*"))
             if p.suffix.lower() in _DATA_KINDS}
    if len(kinds) != 1:
        found = "no" if not kinds else "mixed (" + ", ".join(sorted(kinds)) + ")"
        raise UserError(f"--data {spec!r}: {found} .txt/.jsonl/.json/.parquet files; pass one kind of file")
    return config_mod.DataConfig(source=kinds.pop(), train=str(path), valid=str(path), text_key=text_key)


def _split_tokens(cfg: config_mod.Config, tok: Tokenizer, log: Callable[[str], None]) -> tuple[np.ndarray, float, str]:
    from slmtrain.data.prepare import open_tokens, prepare_data

    prepared = prepare_data(cfg, log=log)
    if prepared.tokenizer.fingerprint != tok.fingerprint:
        raise CheckpointError(f"the validation data prepared from the checkpoint's recipe ({prepared.dir}) uses "
                              f"another tokenizer than the checkpoint's tokenizer.json; pass --data FILE to evaluate "
                              f"on a file instead")
    valid = prepared.meta["splits"]["valid"]
    return open_tokens(prepared.valid_path), float(valid["tokens_per_byte"]), f"valid split of {cfg.data.source}"


def evaluate_checkpoint(ckpt: Path, data: str | None = None, max_batches: int = 0, batch_size: int = 0,
                        device: str | torch.device = "cpu",
                        log: Callable[[str], None] = lambda _m: None) -> tuple[EvalResult, config_mod.Config]:
    """Evaluate one checkpoint on the run's validation split (rebuilt from its recipe) or on `data`.

    Args:
        ckpt: a checkpoint directory.
        data: None for the recipe's validation split (prepared data are reused from the cache); else a
            file, directory or hf:NAME read with the checkpoint's tokenizer.
        max_batches: at most this many batches (0: every window of the data).
        batch_size: windows per batch (0: the recipe's eval.batch_size, else train.batch_size).
        device: where to evaluate.
        log: receives progress lines (data preparation).

    Returns:
        The result and the checkpoint's recipe.
    """
    model, cfg, tok = load_model(ckpt, device)
    if data is None:
        tokens, tokens_per_byte, desc = _split_tokens(cfg, tok, log)
    else:
        from slmtrain.data.sources import load_documents

        docs = load_documents(data_config(data, cfg.data.text_key), "valid")
        tokens, n_bytes = tokenize_documents(tok, docs)
        tokens_per_byte, desc = tokens.shape[0] / n_bytes, data
    bs = batch_size or cfg.eval.batch_size or cfg.train.batch_size
    started = time.perf_counter()
    loss, targets, windows = mean_loss(model, tokens, bs, max_batches)
    log(f"eval: {windows} windows of {model.cfg.seq_len} tokens in {time.perf_counter() - started:.2f}s")
    return EvalResult(loss, perplexity(loss), bits_per_byte(loss, tokens_per_byte), targets, windows,
                      tokens_per_byte, desc), cfg
