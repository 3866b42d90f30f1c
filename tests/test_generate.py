"""Contracts of slmtrain.generate: cache equals no cache, seeded sampling, filtering, stops, validation."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import torch

from slmtrain.config import ModelConfig
from slmtrain import decodegraph
from slmtrain.generate import _Decoder, _filter, generate, greedy_with_margins, next_token_logprobs
from slmtrain.model import GPT

FLAVOURS = ("gpt2", "llama")
SEQ = 24


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch at 2 intra-op threads for the test, the previous count put back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def model_for(flavour: str = "gpt2", seed: int = 0) -> GPT:
    # A larger init_std than training uses, so greedy continuations of a random model are not
    # one repeated token and the comparisons below have something to disagree about.
    cfg = ModelConfig(flavour=flavour, n_layer=2, n_head=4, n_embd=32, seq_len=SEQ, vocab_size=96, init_std=0.3)
    torch.manual_seed(seed)
    return GPT(cfg)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("prompt", [[5], [5, 17, 3, 88, 41, 2, 9]], ids=["one-token", "seven-tokens"])
def test_cached_greedy_equals_uncached_greedy(flavour: str, prompt: list[int]) -> None:
    model = model_for(flavour)
    cached = list(generate(model, prompt, 100))
    uncached = list(generate(model, prompt, 100, use_cache=False))
    # With the cache generation stops when the context is full; without, it slides on.
    assert len(cached) == SEQ - len(prompt) + 1
    assert len(uncached) == 100
    assert cached == uncached[:len(cached)]
    assert len(set(cached)) > 3


def test_prompt_longer_than_seq_len_is_cropped() -> None:
    model = model_for()
    long_prompt = [i % 96 for i in range(40)]
    assert list(generate(model, long_prompt, 5, use_cache=False)) == \
        list(generate(model, long_prompt[-SEQ:], 5, use_cache=False))
    assert list(generate(model, long_prompt, 5)) == list(generate(model, long_prompt[-SEQ:], 1))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_seeded_sampling_is_reproducible(flavour: str) -> None:
    model = model_for(flavour)

    def sample(seed: int, **kw: float) -> list[int]:
        return list(generate(model, [1, 2, 3], 20, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                             **kw))  # type: ignore[arg-type]

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)
    assert sample(11, top_k=5, top_p=0.9) == sample(11, top_k=5, top_p=0.9)
    assert sample(11) != list(generate(model, [1, 2, 3], 20))  # sampling is not greedy here


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_top_k_1_and_tiny_top_p_equal_greedy(flavour: str) -> None:
    model = model_for(flavour)
    greedy = list(generate(model, [4, 8], 15))
    gen = torch.Generator().manual_seed(0)
    assert list(generate(model, [4, 8], 15, temperature=1.5, top_k=1, generator=gen)) == greedy
    assert list(generate(model, [4, 8], 15, temperature=1.5, top_p=1e-6, generator=gen)) == greedy


def test_filter_keeps_the_top_k_and_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15]))
    kept = lambda out: torch.isfinite(out).nonzero().flatten().tolist()  # noqa: E731
    assert kept(_filter(logits, top_k=2, top_p=1.0)) == [1, 3]
    assert kept(_filter(logits, top_k=0, top_p=0.7)) == [1, 3]  # 0.4 + 0.3 reaches 0.7
    assert kept(_filter(logits, top_k=0, top_p=0.71)) == [1, 3, 4]
    assert kept(_filter(logits, top_k=0, top_p=0.01)) == [1]
    assert kept(_filter(logits, top_k=0, top_p=1.0)) == [0, 1, 2, 3, 4]
    assert kept(_filter(logits, top_k=2, top_p=0.3)) == [1]


def test_sampling_never_leaves_the_top_k() -> None:
    model = model_for()
    logits = next_token_logprobs(model, torch.tensor([[7]]))[0, -1]
    allowed = set(torch.topk(logits, 3).indices.tolist())
    for seed in range(30):
        first = next(generate(model, [7], 1, temperature=5.0, top_k=3, generator=torch.Generator().manual_seed(seed)))
        assert first in allowed


def test_stops_before_eos_and_after_max_new_tokens() -> None:
    model = model_for()
    greedy = list(generate(model, [3, 1], 12))
    cut = next(i for i, t in enumerate(greedy) if t not in greedy[:i] and i >= 2)
    assert list(generate(model, [3, 1], 12, eos_id=greedy[cut])) == greedy[:cut]
    assert list(generate(model, [3, 1], 4)) == greedy[:4]
    assert list(generate(model, [3, 1], 0)) == []


def test_streams_lazily_and_restores_training_mode(two_threads: None) -> None:
    model = model_for(seed=3)
    model.train()
    stream = generate(model, [2, 2], 10)
    assert next(stream) == list(generate(model, [2, 2], 1))[0]
    next(stream)  # the first token through the decode step
    # Between tokens the caller sees its own modes and threads: training on, gradients on, 2 threads.
    assert model.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert torch.get_num_threads() == 2
    assert len(list(stream)) == 8
    assert model.training
    model.eval()
    list(generate(model, [2], 3))
    assert not model.training


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_model_in_training_mode_decodes_without_dropout(flavour: str) -> None:
    cfg = ModelConfig(flavour=flavour, n_layer=2, n_head=4, n_embd=32, seq_len=SEQ, vocab_size=96, init_std=0.3,
                      dropout=0.5)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    want = list(generate(model, [5, 17, 3], 15))
    assert len(set(want)) > 3
    model.train()
    assert list(generate(model, [5, 17, 3], 15)) == want
    # Same for sampling: the decode steps drop nothing, so only the seed decides.
    sampled = [list(generate(model, [5, 17, 3], 15, temperature=1.0, generator=torch.Generator().manual_seed(1)))
               for _ in range(2)]
    model.eval()
    assert sampled[0] == sampled[1] == \
        list(generate(model, [5, 17, 3], 15, temperature=1.0, generator=torch.Generator().manual_seed(1)))


def test_decoding_threads_change_no_token_and_the_caller_keeps_its_count(two_threads: None) -> None:
    model = model_for("llama")
    seen: list[int] = []  # the thread count each forward and decode step ran with
    model.ln_f.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    stream = generate(model, [9, 4, 1], 20)
    one = [next(stream), next(stream)]  # the second through the decode step
    assert torch.get_num_threads() == 2  # between tokens, the caller's count
    one += list(stream)
    assert seen == [1] * 20
    seen.clear()
    assert list(generate(model, [9, 4, 1], 20, threads=None)) == one
    assert seen == [2] * 20
    assert greedy_with_margins(model, [9, 4, 1], 20)[0] == one
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")),
    dict(top_p=0.0), dict(top_p=1.01), dict(top_p=-0.5), dict(top_k=-1), dict(max_new_tokens=-1),
    dict(prompt_ids=[]), dict(prompt_ids=[96]), dict(prompt_ids=[-1]), dict(threads=0),
])
def test_bad_arguments_raise_at_call_time(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = dict(prompt_ids=[1], max_new_tokens=5) | kwargs
    with pytest.raises(ValueError):
        generate(model_for(), **args)  # type: ignore[arg-type]  # no iteration: checks are eager


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_greedy_with_margins_matches_generate_and_reports_margins(flavour: str) -> None:
    model = model_for(flavour)
    toks, margins = greedy_with_margins(model, [9, 8, 7], 12)
    assert toks == list(generate(model, [9, 8, 7], 12))
    assert len(margins) == 12 and all(m >= 0 for m in margins)
    first = next_token_logprobs(model, torch.tensor([[9, 8, 7]]))[0, -1]
    # log-softmax shifts all logits equally, so the top-2 gap is the logit margin.
    top2 = torch.topk(first, 2).values
    assert margins[0] == pytest.approx((top2[0] - top2[1]).item(), abs=1e-5)
    # Ignores EOS: it returns exactly n tokens even when the first one would be EOS.
    assert len(greedy_with_margins(model, [9, 8, 7], 3)[0]) == 3


def test_greedy_with_margins_runs_past_the_context() -> None:
    model = model_for()
    toks, margins = greedy_with_margins(model, [1, 2, 3], 2 * SEQ)
    assert len(toks) == len(margins) == 2 * SEQ
    assert toks == list(generate(model, [1, 2, 3], 2 * SEQ, use_cache=False))


def test_next_token_logprobs_is_fp32_log_softmax_of_the_logits() -> None:
    model = model_for(seed=5)
    model.train()
    idx = torch.randint(0, 96, (3, 10), generator=torch.Generator().manual_seed(0))
    lp = next_token_logprobs(model, idx)
    assert lp.shape == (3, 10, 96) and lp.dtype == torch.float32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 10), atol=1e-5)
    assert model.training and not lp.requires_grad
    model.eval()
    assert torch.allclose(lp, torch.log_softmax(model(idx)[0], -1), atol=1e-6)


def test_a_compiled_decode_step_gives_the_same_tokens() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(flavour="llama", n_layer=2, n_head=2, n_embd=32, seq_len=48, vocab_size=64)).eval()
    prompt = [1, 5, 9, 3]
    eager = list(generate(model, prompt, 30))
    assert list(generate(model, prompt, 30, compiled=True)) == eager
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert list(generate(model, prompt, 30, temperature=0.9, top_k=10, generator=gen_a, compiled=True)) == \
        list(generate(model, prompt, 30, temperature=0.9, top_k=10, generator=gen_b))


@pytest.mark.parametrize("options", [
    dict(flavour="gpt2", bias=True, tie_embeddings=False, logit_softcap=15.0),
    dict(flavour="llama", qk_norm=True, relu2=True),
], ids=["gpt2-bias-untied-softcap", "llama-qknorm-relu2"])
def test_the_compiled_step_gives_the_eager_fp32_tokens_across_options(options: dict[str, object]) -> None:
    # Compiled, attention is written out as products and sums instead of SDPA: the tokens must not change.
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=32, seq_len=SEQ, vocab_size=96, init_std=0.3, **options)  # type: ignore[arg-type]
    model = GPT(cfg).eval()
    for prompt in ([5], [5, 17, 3, 88, 41, 2, 9]):
        eager = list(generate(model, prompt, 100, use_cache=False))
        assert list(generate(model, prompt, 100, compiled=True)) == eager[:SEQ - len(prompt) + 1]


def teacher_forced(model: GPT, prompt: list[int], n: int, weights: str) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and logits of `weights`' decode steps, each fed the fp32 greedy token before it."""
    want = list(generate(model, prompt, n))
    decoder = _Decoder(model, prompt, use_cache=True, weights=weights)
    tokens, logits = [], []
    for token in want:
        logits.append(decoder.next_logits())
        tokens.append(int(logits[-1].argmax()))
        decoder.push(token)
    return tokens, logits


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_int8_decoding_stays_close_to_fp32_and_leaves_the_model_alone(flavour: str) -> None:
    model = model_for(flavour)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = [5, 17, 3]
    fp32_tokens, fp32_logits = teacher_forced(model, prompt, SEQ - 3, "fp32")
    int8_tokens, int8_logits = teacher_forced(model, prompt, SEQ - 3, "int8")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Every step's logits (the prompt's too: its keys and values are kept in bf16) within 6 % of their range
    # (measured on these random models: 1.6 % gpt2, 3.5 % llama; the head's output is bf16).
    for a, b in zip(int8_logits, fp32_logits):
        assert (a - b).abs().max() <= 0.06 * (b.max() - b.min())
    assert sum(a == b for a, b in zip(int8_tokens, fp32_tokens)) >= 0.8 * len(fp32_tokens)
    streamed = list(generate(model, prompt, 100, weights="int8"))
    assert len(streamed) == SEQ - 2 and all(0 <= t < 96 for t in streamed)


def test_int8_weights_follow_changes_to_the_model() -> None:
    model = model_for("llama")
    first = list(generate(model, [4, 8], 15, weights="int8"))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # in place: the int8 copy is stale and is made again
    assert list(generate(model, [4, 8], 15, weights="int8")) != first


def test_a_compiled_int8_step_gives_the_eager_int8_tokens() -> None:
    model = model_for("gpt2")
    assert list(generate(model, [1, 5, 9], 20, weights="int8", compiled=True)) == \
        list(generate(model, [1, 5, 9], 20, weights="int8"))
    with pytest.raises(ValueError):
        generate(model, [1], 5, weights="bf16")


def test_compiled_greedy_blocks_stop_where_single_steps_stop() -> None:
    # Blocks of GREEDY_BLOCK tokens: a count that is no multiple of it, an EOS inside a block, and the last
    # positions of the cache, where no block fits and single steps finish.
    model = model_for("llama")
    prompt = [5, 17, 3]
    eager = list(generate(model, prompt, 100))
    assert len(eager) == SEQ - len(prompt) + 1
    assert list(generate(model, prompt, 100, compiled=True)) == eager
    for n in (1, decodegraph.GREEDY_BLOCK - 1, decodegraph.GREEDY_BLOCK + 1, 2 * decodegraph.GREEDY_BLOCK + 3):
        assert list(generate(model, prompt, n, compiled=True)) == eager[:n]
    eos = eager[decodegraph.GREEDY_BLOCK + 2]
    assert list(generate(model, prompt, 100, eos_id=eos, compiled=True)) == eager[:eager.index(eos)]


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_a_compiled_graph_follows_changed_and_replaced_weights_without_compiling_again(weights: str) -> None:
    model = model_for("gpt2")
    prompt = [4, 8]
    first = list(generate(model, prompt, 15, compiled=True, weights=weights))
    assert first == list(generate(model, prompt, 15, weights=weights))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # in place, as an optimizer step changes them
    changed = list(generate(model, prompt, 15, weights=weights))
    assert changed != first and list(generate(model, prompt, 15, compiled=True, weights=weights)) == changed
    torch.manual_seed(1)
    model.load_state_dict({k: torch.randn_like(v) * 0.3 for k, v in model.state_dict().items()}, assign=True)
    replaced = list(generate(model, prompt, 15, weights=weights))
    assert replaced != changed and list(generate(model, prompt, 15, compiled=True, weights=weights)) == replaced
    assert len(decodegraph._GRAPHS[model]) == 1  # one greedy graph, compiled once, fed the tensors of the day


def test_a_model_moved_to_another_dtype_gets_its_own_compiled_graph() -> None:
    model = model_for("llama")
    prompt = [4, 8]
    assert list(generate(model, prompt, 10, compiled=True)) == list(generate(model, prompt, 10))
    model.double()  # the same Parameter objects, now holding float64
    assert list(generate(model, prompt, 10, compiled=True)) == list(generate(model, prompt, 10))
    assert len(decodegraph._GRAPHS[model]) == 2


def test_compiled_graphs_do_not_keep_their_model_alive() -> None:
    model = model_for("llama")
    list(generate(model, [4, 8], 10, compiled=True))
    assert len(decodegraph._GRAPHS[model]) == 1
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the graphs take the weights as inputs and hold none of them
