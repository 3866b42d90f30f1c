"""CLI subcommands that use a finished checkpoint: verify, generate, eval. Thin: the work is in verify.py,
ckptload.py, evaluate.py and generate.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson

VERIFY_EPILOG = """exit codes: 0 sound | 1 not sound | 2 bad usage (no such checkpoint or run directory)
--json prints one object {"path", "sound", "checks": [{"name", "status", "detail", "seconds"}], "seconds"}
(status: pass | fail | warn | skip, skip when an earlier check it needs failed); with --all,
{"path", "sound", "checkpoints": [one such object per checkpoint], "seconds"}."""


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register verify, generate and eval on the `slmtrain` subparsers."""
    p = sub.add_parser("verify", help="check that a checkpoint is sound (exit 0) or not (exit 1)",
                       epilog=VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Rebuild the model from a checkpoint's own files on CPU in fp32 and check\n"
                       "everything: file checksums, config, weights (keys, shapes, dtype, strict load), tied\n"
                       "embeddings, tokenizer fingerprint, optimizer and scheduler state; replay the recorded\n"
                       "greedy generations and reference log-probabilities. One line per check, then SOUND or\n"
                       "NOT SOUND.")
    p.add_argument("path", help="a checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--strict", action="store_true",
                   help="also fail where a replayed token differs at a near-tie the tolerance allows")
    p.add_argument("--all", action="store_true", help="with a run directory: verify every checkpoint")

    p = sub.add_parser("generate", help="generate text from a checkpoint",
                       description="Load a checkpoint's weights (on CPU unless --device says otherwise) and stream "
                       "a continuation of the prompt to stdout; greedy at temperature 0. Diagnostics go to stderr.")
    p.add_argument("path", help="a checkpoint directory, or a run directory (its newest sound checkpoint)")
    p.add_argument("--prompt", default="", help="text to continue (default: none, a story from the start-of-text "
                   "token)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1] (1: off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    p.add_argument("--num-samples", type=int, default=1, help="samples, separated by a blank line")
    p.add_argument("--device", default="cpu", choices=("cpu", "auto"), help="cpu (default) or auto (GPU if any)")
    p.add_argument("--compile", action="store_true",
                   help="compile the one-token decode step (seconds up front; faster for long or many samples)")
    p.add_argument("--weights", default="fp32", choices=("fp32", "int8"),
                   help="fp32 (default, exact) or int8: decode with per-channel int8 copies of the weights on CPU "
                   "(with --compile ~1.3x faster here; greedy text may part from fp32's after a near-tie)")

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory or safetensors",
                       description="Export a checkpoint (or a run directory's newest sound one). --format hf "
                       "(default) writes config.json, model.safetensors, generation_config.json, the tokenizer "
                       "files and a README.md model card that transformers' AutoModelForCausalLM and "
                       "AutoTokenizer load offline (gpt2 flavour: GPT2LMHeadModel; llama: LlamaForCausalLM; "
                       "llama + QK-norm: Qwen3ForCausalLM). --format safetensors writes the bare weights in "
                       "slmtrain's names plus its config.json. OUT_DIR must not exist or be empty; it is written "
                       "in a temporary directory and renamed into place.")
    p.add_argument("path", help="a checkpoint directory, or a run directory (its newest sound checkpoint)")
    p.add_argument("out_dir", help="the directory to create")
    p.add_argument("--format", default="hf", choices=("hf", "safetensors"))

    p = sub.add_parser("plot", help="draw loss, bits per byte, LR and tokens/s curves of one or more runs",
                       description="Read the runs' metrics.jsonl and write one PNG with four panels (training and "
                       "validation loss, validation bits per byte, learning rate, tokens/s), one line per run, "
                       "with a legend. Headless: no display needed.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default: ./curves.png)")
    p.add_argument("--x", default="steps", choices=("steps", "tokens", "time"), help="the x axis")

    p = sub.add_parser("eval", help="validation loss, perplexity and bits per byte of a checkpoint",
                       description="Evaluate a checkpoint on its run's validation split (rebuilt from the saved "
                       "recipe, reusing the prepared-data cache) or on a text/jsonl/parquet file, in consecutive "
                       "windows of seq_len tokens, fp32.")
    p.add_argument("path", help="a checkpoint directory, or a run directory (its newest sound checkpoint)")
    p.add_argument("--data", default=None, metavar="FILE_OR_SOURCE",
                   help="a .txt (stories separated by <|endoftext|>), .jsonl/.json or .parquet file or directory, "
                   "or hf:DATASET (default: the run's validation split)")
    p.add_argument("--batches", type=int, default=0, help="at most this many batches (0: every window)")
    p.add_argument("--batch-size", type=int, default=0, help="windows per batch (0: the recipe's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "auto"))
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _cmd_plot(args: argparse.Namespace) -> int:
    from slmtrain.plot import plot

    out = plot(args.run_dirs, args.output, args.x)
    _err(f"wrote {out} ({len(args.run_dirs)} run{'s' if len(args.run_dirs) > 1 else ''}, x: {args.x})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from slmtrain.export import export

    started = time.perf_counter()
    out = export(args.path, args.out_dir, args.format, log=_err)
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    _err(f"{out}: {size / 1e6:.1f} MB in {time.perf_counter() - started:.2f}s")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from slmtrain.verify import resolve_targets, verify

    started = time.perf_counter()
    targets = resolve_targets(args.path, args.all, log=_err)
    reports = [verify(t, strict=args.strict) for t in targets]
    sound = all(r.sound for r in reports)
    if args.json:
        doc = reports[0].to_dict() if not args.all else {
            "path": str(args.path), "sound": sound, "checkpoints": [r.to_dict() for r in reports],
            "seconds": round(time.perf_counter() - started, 4)}
        print(orjson.dumps(doc).decode())
    else:
        print("\n\n".join(r.format() for r in reports))
        if args.all:
            bad = [Path(r.path).name for r in reports if not r.sound]
            print(f"NOT SOUND: {len(bad)} of {len(reports)} checkpoints ({', '.join(bad)})" if bad
                  else f"SOUND: all {len(reports)} checkpoints")
    return 0 if sound else 1


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from slmtrain.ckptload import load_model, resolve_checkpoint
    from slmtrain.dist import pick_device
    from slmtrain.errors import UserError
    from slmtrain.generate import generate
    from slmtrain.train import compiler_missing

    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    ckpt = resolve_checkpoint(args.path, _err)
    device = pick_device(args.device)
    if args.weights == "int8" and device.type != "cpu":
        raise UserError(f"--weights int8 decodes on CPU only (torch's int8 weight-only kernel), not on {device}: "
                        f"drop --device auto or use --weights fp32")
    model, cfg, tok = load_model(ckpt, device)
    missing = compiler_missing(device) if args.compile else None
    if missing:
        _err(f"--compile: {missing}; decoding eager")
    compiled = args.compile and not missing
    ids = tok.encode(args.prompt)
    # No prompt: start from the start-of-text token (EOS separates documents, so it also starts one), unprinted.
    feed = ids or [tok.eos_id]
    gen = torch.Generator(device=device)
    if args.seed is None:
        gen.seed()
    else:
        gen.manual_seed(args.seed)
    for i in range(args.num_samples):
        try:
            stream = generate(model, feed, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, eos_id=tok.eos_id, generator=gen, compiled=compiled,
                              weights=args.weights)
        except ValueError as e:
            raise UserError(f"cannot generate: {e}. Fix the option (e.g. --temperature 0 for greedy, --top-p in "
                            f"(0, 1]) and run again.") from None
        if i == 0:
            _err(f"{ckpt}: {model.param_summary()}, on {device}")
            if len(ids) > cfg.model.seq_len:
                _err(f"the prompt has {len(ids)} tokens; the model sees only the last {cfg.model.seq_len}")
        else:
            print("\n", flush=True)
        _stream_text(tok.decode, ids, stream)
    print(flush=True)
    return 0


def _stream_text(decode: Callable[[list[int]], str], prompt: list[int], stream: Iterable[int]) -> None:
    """Print the prompt, then each new piece of text as tokens arrive.

    A byte-level token can end inside a multi-byte character; such a piece decodes to U+FFFD and is held
    back until the character completes, so stdout ends as decode(prompt + tokens) exactly.
    """
    ids = list(prompt)
    shown = decode(ids)
    sys.stdout.write(shown)
    sys.stdout.flush()
    for token in stream:
        ids.append(token)
        text = decode(ids)
        if not text.endswith("\ufffd") and text.startswith(shown):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    text = decode(ids)
    if text != shown:
        sys.stdout.write(text[len(shown):] if text.startswith(shown) else "\n" + text)
        sys.stdout.flush()


def _cmd_eval(args: argparse.Namespace) -> int:
    from slmtrain.checkpoint import read_meta
    from slmtrain.ckptload import resolve_checkpoint
    from slmtrain.dist import pick_device
    from slmtrain.errors import UserError
    from slmtrain.evaluate import evaluate_checkpoint

    if args.batches < 0 or args.batch_size < 0:
        raise UserError("--batches and --batch-size must be >= 0 (0: every window / the recipe's batch size)")
    started = time.perf_counter()
    ckpt = resolve_checkpoint(args.path, _err)
    result, _cfg = evaluate_checkpoint(ckpt, args.data, args.batches, args.batch_size, pick_device(args.device),
                                       log=_err)
    step = read_meta(ckpt).get("step")
    if args.json:
        doc = {"checkpoint": str(ckpt), "step": step, **result.to_dict(),
               "seconds": round(time.perf_counter() - started, 4)}
        print(orjson.dumps(doc).decode())
    else:
        print(f"{ckpt} (step {step}) on {result.data}: {result.tokens:,} tokens in {result.windows} windows | "
              f"loss {result.loss:.4f} | ppl {result.perplexity:.2f} | bpb {result.bits_per_byte:.4f}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": _cmd_verify, "generate": _cmd_generate, "eval": _cmd_eval, "export": _cmd_export,
    "plot": _cmd_plot,
}
