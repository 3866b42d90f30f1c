"""The Hugging Face `transformers` layouts our models map onto, both ways, without importing transformers.

gpt2 flavour  -> GPT2LMHeadModel: Conv1D weights are (in, out), so every Linear is transposed; GPT-2 always
                 has biases, so a bias-free model exports zero biases (the same function).
llama flavour -> LlamaForCausalLM: `c_attn` splits into q/k/v_proj, `c_fc` into gate/up_proj; with QK-norm
                 the layout is Qwen3ForCausalLM's (q_norm / k_norm over the head dimension, before RoPE).

`hf_config` refuses (UserError naming the option) what no standard class computes: logit soft-capping,
and QK-norm in the gpt2 flavour.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slmtrain.config import ModelConfig
from slmtrain.errors import UserError


def _swiglu_hidden(cfg: ModelConfig) -> int:
    # The model's rule (slmtrain.model.swiglu_hidden), restated to keep this module free of the model.
    return max(32, 32 * round(2 / 3 * cfg.mlp_ratio * cfg.n_embd / 32))


def architecture(cfg: ModelConfig) -> str | None:
    """The transformers class a model exports to, or None when one of its options has no standard layout."""
    if cfg.logit_softcap:
        return None
    if cfg.flavour == "gpt2":
        return None if cfg.qk_norm else "GPT2LMHeadModel"
    return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"


def refusal(cfg: ModelConfig) -> str:
    """Why `architecture(cfg)` is None, as advice."""
    if cfg.logit_softcap:
        return (f"model.logit_softcap = {cfg.logit_softcap} has no counterpart in GPT-2, Llama or Qwen3: export "
                f"with --format safetensors, or train with model.logit_softcap = 0")
    return ("model.qk_norm = true in the gpt2 flavour has no counterpart in GPT-2: export with --format safetensors, "
            "or use the llama flavour (llama + QK-norm is Qwen3's layout)")


def hf_config(cfg: ModelConfig, eos_id: int) -> dict[str, Any]:
    """config.json for `transformers`; raises UserError for a model no standard class computes."""
    arch = architecture(cfg)
    if arch is None:
        raise UserError(f"cannot export to Hugging Face: {refusal(cfg)}")
    common = {"architectures": [arch], "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "bos_token_id": eos_id, "eos_token_id": eos_id, "torch_dtype": "float32"}
    if arch == "GPT2LMHeadModel":
        return {**common, "model_type": "gpt2", "n_positions": cfg.seq_len, "n_ctx": cfg.seq_len,
                "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_inner": round(cfg.mlp_ratio * cfg.n_embd),
                "activation_function": "relu2" if cfg.relu2 else "gelu_pytorch_tanh",
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "use_cache": True}
    head_dim = cfg.n_embd // cfg.n_head
    out = {**common, "model_type": "qwen3" if cfg.qk_norm else "llama", "hidden_size": cfg.n_embd,
           "intermediate_size": _swiglu_hidden(cfg), "num_hidden_layers": cfg.n_layer,
           "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head, "head_dim": head_dim,
           "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
           "hidden_act": "relu2" if cfg.relu2 else "silu", "attention_bias": False, "attention_dropout": 0.0,
           "mlp_bias": False, "use_cache": True}
    if cfg.qk_norm:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return out


def _gpt2_pairs(cfg: ModelConfig) -> list[tuple[str, str, bool]]:
    """(our name, HF name, transposed) for every tensor of a gpt2-flavour model."""
    pairs = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False),
             ("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias", "transformer.ln_f.bias", False)]
    for i in range(cfg.n_layer):
        ours, theirs = f"h.{i}.", f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            pairs += [(ours + norm + ".weight", theirs + norm + ".weight", False),
                      (ours + norm + ".bias", theirs + norm + ".bias", False)]
        for lin in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            pairs += [(ours + lin + ".weight", theirs + lin + ".weight", True),
                      (ours + lin + ".bias", theirs + lin + ".bias", False)]
    if not cfg.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight", False))
    return pairs


def to_hf(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our state dict in the exported class's names and shapes (contiguous copies, fp32)."""
    out: dict[str, Tensor] = {}
    if cfg.flavour == "gpt2":
        for ours, theirs, transpose in _gpt2_pairs(cfg):
            if ours in sd:
                t = sd[ours]
            elif ours.endswith(".bias"):  # a bias-free model: zeros compute the same
                t = torch.zeros(sd[ours[:-5] + ".weight"].shape[0])
            else:
                continue  # wpe etc. always exist; nothing else is optional
            out[theirs] = (t.T if transpose else t).contiguous().float()
        return out
    d, h = cfg.n_embd, _swiglu_hidden(cfg)
    out["model.embed_tokens.weight"] = sd["wte.weight"]
    out["model.norm.weight"] = sd["ln_f.weight"]
    for i in range(cfg.n_layer):
        o, t = f"h.{i}.", f"model.layers.{i}."
        q, k, v = sd[o + "attn.c_attn.weight"].split(d, dim=0)
        gate, up = sd[o + "mlp.c_fc.weight"].split(h, dim=0)
        out.update({t + "input_layernorm.weight": sd[o + "ln_1.weight"],
                    t + "post_attention_layernorm.weight": sd[o + "ln_2.weight"],
                    t + "self_attn.q_proj.weight": q, t + "self_attn.k_proj.weight": k,
                    t + "self_attn.v_proj.weight": v, t + "self_attn.o_proj.weight": sd[o + "attn.c_proj.weight"],
                    t + "mlp.gate_proj.weight": gate, t + "mlp.up_proj.weight": up,
                    t + "mlp.down_proj.weight": sd[o + "mlp.c_proj.weight"]})
        if cfg.qk_norm:
            out[t + "self_attn.q_norm.weight"] = sd[o + "attn.q_norm.weight"]
            out[t + "self_attn.k_norm.weight"] = sd[o + "attn.k_norm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous().float() for k, v in out.items()}


def from_hf(hf: dict[str, Tensor], cfg: ModelConfig, ours: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """An HF state dict in our names, checked against our model's shapes (`ours`); UserError on any mismatch."""
    want = to_hf(ours, cfg)
    missing = [k for k in want if k not in hf and not (k == "lm_head.weight" and cfg.tie_embeddings)]
    wrong = [f"{k} {list(hf[k].shape)} != {list(want[k].shape)}" for k in want if k in hf and hf[k].shape != want[k].shape]
    if missing or wrong:
        problems = ([f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"] if missing else []) + \
                   ([f"shapes {'; '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}"] if wrong else [])
        raise UserError(f"model.init_from = {source!r} does not fit this recipe's model ({'; '.join(problems)}): "
                        f"make [model] match the source's architecture (layers, width, heads, vocabulary, flavour "
                        f"and options)")
    out: dict[str, Tensor] = {}
    if cfg.flavour == "gpt2":
        for o, t, transpose in _gpt2_pairs(cfg):
            if o in ours:
                out[o] = (hf[t].T if transpose else hf[t]).contiguous()
        return out
    out["wte.weight"], out["ln_f.weight"] = hf["model.embed_tokens.weight"], hf["model.norm.weight"]
    for i in range(cfg.n_layer):
        o, t = f"h.{i}.", f"model.layers.{i}."
        a = t + "self_attn."
        out[o + "ln_1.weight"] = hf[t + "input_layernorm.weight"]
        out[o + "ln_2.weight"] = hf[t + "post_attention_layernorm.weight"]
        out[o + "attn.c_attn.weight"] = torch.cat([hf[a + "q_proj.weight"], hf[a + "k_proj.weight"],
                                                   hf[a + "v_proj.weight"]], dim=0)
        out[o + "attn.c_proj.weight"] = hf[a + "o_proj.weight"]
        out[o + "mlp.c_fc.weight"] = torch.cat([hf[t + "mlp.gate_proj.weight"], hf[t + "mlp.up_proj.weight"]], dim=0)
        out[o + "mlp.c_proj.weight"] = hf[t + "mlp.down_proj.weight"]
        if cfg.qk_norm:
            out[o + "attn.q_norm.weight"] = hf[a + "q_norm.weight"]
            out[o + "attn.k_norm.weight"] = hf[a + "k_norm.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = hf["lm_head.weight"]
    return out


# Keys of config.json that change what a model computes beyond its tensor shapes.
_FUNCTION_KEYS = ("model_type", "activation_function", "hidden_act", "rope_theta", "layer_norm_epsilon",
                  "rms_norm_eps", "tie_word_embeddings")


def check_hf_config(source_cfg: dict[str, Any], cfg: ModelConfig, eos_id: int, source: str) -> None:
    """UserError when a transformers config.json describes another function than our model (shapes aside)."""
    want = hf_config(cfg, eos_id)
    diffs = [f"{k} {source_cfg.get(k)!r} (this recipe: {want[k]!r})" for k in _FUNCTION_KEYS
             if k in want and source_cfg.get(k, want[k]) != want[k]]
    if diffs:
        raise UserError(f"model.init_from = {source!r} is another architecture than this recipe's model: "
                        f"{'; '.join(diffs)}. Make [model] match it (flavour, relu2, qk_norm, rope_theta, "
                        f"norm_eps, tie_embeddings).")
