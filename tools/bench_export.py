"""Export figures: time and size of `slmtrain export`, and greedy generation speed in transformers vs slmtrain.

    python tools/bench_export.py runs/quickstart            # a finished run (or a checkpoint)
    python tools/bench_export.py runs/quickstart --tokens 200 --repeats 3

Exports the newest sound checkpoint to a temporary directory (hf format), then generates the same greedy
continuation with transformers' `generate(do_sample=False)` and with slmtrain (eager, and with the compiled
decode step), and prints tokens/s (best of --repeats) and whether the tokens agree. Asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="a run directory or a checkpoint")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import transformers

    from slmtrain.ckptload import load_model, resolve_checkpoint
    from slmtrain.export import export
    from slmtrain.generate import generate

    ckpt = resolve_checkpoint(args.path, lambda _m: None)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "hf"
        t0 = time.perf_counter()
        export(ckpt, out)
        seconds = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"export {ckpt.name}: {seconds:.2f}s, {size / 1e6:.1f} MB ({', '.join(sorted(f.name for f in out.iterdir()))})")
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        ours, cfg, tok = load_model(ckpt)
        prompt = tok.encode("Once upon a time")
        n = min(args.tokens, cfg.model.seq_len - len(prompt))

        def hf_gen() -> list[int]:
            with torch.no_grad():
                ids = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                                  pad_token_id=tok.eos_id)
            return ids[0, len(prompt):].tolist()

        def ours_gen(compiled: bool) -> list[int]:
            return list(generate(ours, prompt, n, temperature=0.0, compiled=compiled))

        results = {}
        for name, fn in (("transformers", hf_gen), ("slmtrain", lambda: ours_gen(False)),
                         ("slmtrain compiled", lambda: ours_gen(True))):
            fn()  # warm-up (and compilation)
            best, tokens = 0.0, []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                tokens = fn()
                best = max(best, len(tokens) / (time.perf_counter() - t0))
            results[name] = (best, tokens)
        ref = results["transformers"][1]
        for name, (rate, tokens) in results.items():
            print(f"{name:18s} {rate:8.0f} tokens/s greedy ({len(tokens)} tokens), same tokens as transformers: "
                  f"{tokens[:len(ref)] == ref[:len(tokens)]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
