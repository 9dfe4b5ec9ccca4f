"""The vLLM rollout engine (engine/rollout/vllm.py) on a tiny Qwen2: groups stream per prompt with G samples,
stop ids and stop strings end a sequence, log-probs match a float32 Hugging Face forward, a weight update
(tied embeddings included) shows in the next outputs, sampling is seeded per prompt, and LoRA adapters synced
as vLLM adapters (engine/rollout/vllm_lora.py) give a float32 peft forward's log-probs.

The engine tests need vllm (`make vllm-cpu-env test-vllm`, `.venv-vllm`); the pure helpers run everywhere.
At most one vLLM engine lives at a time (in-process engines share this process's distributed state).
"""
from __future__ import annotations

import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

from engine.rollout.base import SamplingParams
from engine.rollout.vllm import _check_one_policy, check_logprobs_mode, logprobs_mode_for, request_seed
from engine.rollout.vllm_lora import MAX_LORA_RANKS, adapter_tensor_name, check_adapter, max_lora_rank_for
from engine.types import PromptItem

# The conftest miniature has head size 8, which vLLM's CPU attention does not support (32 is its smallest).
PARITY_TOL = 1e-4


def prompts_of(*token_lists: list[int]) -> list[PromptItem]:
    return [PromptItem(index=i, prompt_ids=list(ids), reference="") for i, ids in enumerate(token_lists)]


PROMPTS = prompts_of([5, 6, 7, 8, 40], [9, 10, 11], [50, 51, 52, 53, 54, 55, 56], [60, 61])


# ---------------------------------------------------------------------- pure helpers (no vllm needed)
def test_importing_the_adapter_does_not_import_vllm():
    assert "engine.rollout.vllm" in sys.modules
    if "vllm" not in sys.modules:  # another test in this process may have started an engine
        assert all(not name.startswith("vllm.") for name in sys.modules)


@pytest.mark.parametrize("temperature, top_p, top_k, mode", [
    (1.0, 1.0, 0, "raw_logprobs"), (1.0, 0.9, 20, "raw_logprobs"), (0.0, 0.5, 5, "raw_logprobs"),
    (0.7, 1.0, 0, "processed_logprobs"), (1.3, 1.0, 0, "processed_logprobs")])
def test_logprobs_mode_records_the_tempered_untruncated_policy(temperature, top_p, top_k, mode):
    assert logprobs_mode_for(temperature, top_p, top_k) == mode
    check_logprobs_mode(SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k), mode)
    check_logprobs_mode(SamplingParams(temperature=0.0), mode)  # greedy evaluation works on either engine


@pytest.mark.parametrize("top_p, top_k", [(0.9, 0), (1.0, 20)])
def test_no_logprobs_mode_fits_tempered_and_truncated_sampling(top_p, top_k):
    with pytest.raises(ValueError, match="temperature=0.7"):
        logprobs_mode_for(0.7, top_p, top_k)
    with pytest.raises(ValueError, match="processed log-probs"):
        check_logprobs_mode(SamplingParams(temperature=0.7, top_p=top_p, top_k=top_k), "processed_logprobs")
    with pytest.raises(ValueError, match="raw"):
        check_logprobs_mode(SamplingParams(temperature=0.7), "raw_logprobs")


def test_request_seeds_are_distinct_non_negative_int64():
    seeds = {request_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and all(0 <= x < 2 ** 63 for x in seeds)
    assert request_seed(0, 7) == request_seed(0, 7)


def test_a_completion_sampled_under_two_weight_versions_is_refused():
    span = lambda version, start, end: SimpleNamespace(version=version, start=start, end=end)
    _check_one_policy(SimpleNamespace(weight_versions=[span("3", 0, 5)]), 3, 0)
    with pytest.raises(RuntimeError, match="mix policies"):
        _check_one_policy(SimpleNamespace(weight_versions=[span("2", 0, 2), span("3", 2, 5)]), 3, 0)
    with pytest.raises(RuntimeError, match="mix policies"):
        _check_one_policy(SimpleNamespace(weight_versions=[span("2", 0, 5)]), 3, 0)


def test_a_completion_without_weight_versions_is_refused_not_trusted():
    # A vLLM build that reports no per-token weight versions cannot show the group is on-policy.
    with pytest.raises(RuntimeError, match=r"prompt 7: this vLLM build reports no weight versions"):
        _check_one_policy(SimpleNamespace(weight_versions=None), 3, 7)


def test_adapter_tensors_get_peft_file_names_and_anything_else_is_refused():
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    assert adapter_tensor_name(f"{prefix}.lora_A.default.weight") == f"{prefix}.lora_A.weight"
    assert adapter_tensor_name(f"{prefix}.lora_B.default.weight") == f"{prefix}.lora_B.weight"
    assert adapter_tensor_name(f"{prefix}.lora_B.weight") == f"{prefix}.lora_B.weight"  # already a file name
    with pytest.raises(ValueError, match="is no LoRA adapter tensor"):
        adapter_tensor_name("model.layers.0.self_attn.q_proj.weight")  # the base is frozen: never synced


def test_max_lora_rank_is_the_smallest_vllm_accepts():
    from engine.config import VLLM_MAX_LORA_RANK

    assert [max_lora_rank_for(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    assert MAX_LORA_RANKS[-1] == VLLM_MAX_LORA_RANK  # the config check refuses what vLLM would
    with pytest.raises(ValueError, match="up to rank 512"):
        max_lora_rank_for(513)


def test_a_group_generated_with_another_adapter_is_refused():
    out = lambda lora_id: SimpleNamespace(lora_request=SimpleNamespace(lora_int_id=lora_id) if lora_id else None)
    check_adapter(out(3), 3, 0)
    check_adapter(out(None), None, 0)
    with pytest.raises(RuntimeError, match="prompt 4: vLLM generated it with LoRA adapter 2, expected 3"):
        check_adapter(out(2), 3, 4)
    with pytest.raises(RuntimeError, match="adapter None, expected 3"):
        check_adapter(out(None), 3, 4)


# ---------------------------------------------------------------------- engine fixtures
@pytest.fixture(scope="module")
def model_dir(vllm_model_dir):
    return vllm_model_dir


@pytest.fixture(scope="module")
def tied_model_dir(model_dir, tmp_path_factory):
    """The same model with tie_word_embeddings=True (lm_head = embed_tokens), saved as its own folder."""
    source = hf_model(model_dir)
    config = source.config
    config.tie_word_embeddings = True
    tied = type(source)(config)
    state = {k: v for k, v in source.state_dict().items() if k != "lm_head.weight"}
    tied.load_state_dict(state, strict=False)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    folder = tmp_path_factory.mktemp("vllm-tied")
    tied.save_pretrained(folder)
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "generation_config", "chat_template")):
            shutil.copy(f, folder)
    return folder


class Engines:
    """Hands out one engine at a time: asking for another closes the current one."""

    def __init__(self):
        self.key, self.engine = None, None

    def get(self, folder, **options):
        from engine.rollout.vllm import VllmOptions, VllmRolloutEngine

        key = (str(folder), tuple(sorted(options.items())))
        if key != self.key:
            self.close()
            base = dict(dtype="float32", kv_cache_memory_bytes=64 << 20, max_model_len=256, max_num_seqs=64)
            tokenizer_eos = hf_model(folder).config.eos_token_id
            self.engine = VllmRolloutEngine(folder, tokenizer_eos, VllmOptions(**{**base, **options}))
            self.key = key
        return self.engine

    def close(self):
        if self.engine is not None:
            self.engine.close()
        self.key, self.engine = None, None


@pytest.fixture(scope="module")
def engines():
    pool = Engines()
    yield pool
    pool.close()


@pytest.fixture
def engine(engines, model_dir):
    """The untied model in raw-logprobs mode, at its folder's weights."""
    return engines.get(model_dir)


def hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_logprobs(model, prompt_ids: list[int], tokens: list[int], temperature: float) -> list[float]:
    """float32 log_softmax(logits / T) at each sampled token (T = 1 when greedy), from one HF forward."""
    with torch.no_grad():
        logits_TV = model(torch.tensor([prompt_ids + tokens])).logits[0].float()
    logp_TV = torch.log_softmax(logits_TV / (temperature or 1.0), dim=-1)
    P = len(prompt_ids)
    return [logp_TV[P - 1 + i, t].item() for i, t in enumerate(tokens)]


def max_logprob_gap(groups, model, temperature: float) -> float:
    gap = 0.0
    for group in groups:
        for c in group.completions:
            ref = hf_logprobs(model, group.prompt.prompt_ids, c.token_ids, temperature)
            gap = max(gap, max(abs(a - b) for a, b in zip(c.logprobs, ref)))
    return gap


def perturbed(model, seed: int, scale: float = 0.5):
    """A copy of `model` with noise on every weight (the embeddings and lm_head included)."""
    import copy

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


def lora_model(folder, seed: int, targets: tuple[str, ...] = (), rank: int = 4, alpha: float = 16.0):
    """The folder's model with rank-`rank` peft adapters (engine.lora.apply_lora, as the trainer builds them)
    whose A and B are both noise, so the adapters change the policy."""
    from engine.config import LoraConfig
    from engine.lora import apply_lora, trainable_parameters

    model = apply_lora(hf_model(folder), LoraConfig(rank=rank, alpha=alpha, target_modules=list(targets)), folder,
                       torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def adapters_of(model) -> list[tuple[str, torch.Tensor]]:
    """What the trainer's weight sync hands a LoRA rollout engine (engine.lora.synced_parameters)."""
    from engine.lora import synced_parameters

    return list(synced_parameters(model))


def tokens_of(groups) -> dict[int, list[list[int]]]:
    return {g.prompt.index: [c.token_ids for c in g.completions] for g in groups}


# ---------------------------------------------------------------------- generation
@pytest.mark.vllm
def test_groups_stream_per_prompt_with_g_samples(engines, model_dir):
    # 4 sequences in flight with G = 2: prompts run two at a time, so the first group is handed over while
    # later prompts still wait, and a weight sync then must be refused.
    engine = engines.get(model_dir, max_num_seqs=4)
    params = SamplingParams(n=2, max_new_tokens=6, temperature=1.0, seed=3)
    stream = engine.generate(PROMPTS, params)
    first = next(stream)
    with pytest.raises(RuntimeError, match="in flight"):
        engine.load_weights([], version=99)
    groups = [first, *stream]
    assert sorted(g.prompt.index for g in groups) == [0, 1, 2, 3]
    for g in groups:
        assert g.version == engine.version == 0 and g.group_size == 2
        for c in g.completions:
            assert 1 <= len(c.token_ids) <= 6 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finished == (c.token_ids[-1] == engine.eos_token_id)
    stages = {s.stage for s in engine.pop_spans()}
    assert stages == {"generate"} and engine.pop_spans() == []


@pytest.mark.vllm
def test_closing_the_stream_early_aborts_its_requests(engine, model_dir):
    stream = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=4))
    next(stream)
    stream.close()
    engine.load_weights(hf_model(model_dir).named_parameters(), version=engine.version)  # nothing in flight
    assert len(list(engine.generate(PROMPTS[:1], SamplingParams(n=2, max_new_tokens=4)))) == 1


@pytest.mark.vllm
def test_prompt_and_response_must_fit_max_model_len(engine):
    assert engine.max_model_len == 256
    too_long = prompts_of([5, 6], [7] * 250)  # vLLM alone would cut this response at 6 tokens, silently
    with pytest.raises(ValueError, match="prompt 1: 250 prompt tokens"):
        engine.generate(too_long, SamplingParams(n=2, max_new_tokens=10))
    assert sorted(g.prompt.index for g in engine.generate(too_long, SamplingParams(n=2, max_new_tokens=6))) == [0, 1]


@pytest.mark.vllm
def test_stop_token_ids_end_a_sequence_with_the_token_kept(engine):
    greedy = SamplingParams(n=1, max_new_tokens=12, temperature=0.0)
    free = tokens_of(engine.generate(PROMPTS, greedy))
    stop = free[0][0][2]  # the third token prompt 0 samples when nothing stops it
    stopped = {g.prompt.index: g.completions[0] for g in engine.generate(
        PROMPTS, SamplingParams(n=1, max_new_tokens=12, temperature=0.0, stop_token_ids=(stop,)))}
    for index, [tokens] in free.items():
        c = stopped[index]
        if stop in tokens:
            assert c.token_ids == tokens[:tokens.index(stop) + 1] and c.finished
        else:
            assert c.token_ids == tokens and c.finished == (tokens[-1] == engine.eos_token_id)
    assert stopped[0].token_ids[-1] == stop and len(stopped[0].token_ids) <= 3


@pytest.mark.vllm
def test_stop_strings_end_a_sequence_at_the_completing_token(engine, model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    greedy = SamplingParams(n=1, max_new_tokens=16, temperature=0.0)
    [free] = tokens_of(engine.generate(PROMPTS[2:3], greedy))[2]
    text = decode(free)
    assert len(text) >= 4, text
    string = text[len(text) // 2:len(text) // 2 + 2]
    expected = next(k for k in range(1, len(free) + 1) if string in decode(free[:k]))
    [group] = engine.generate(PROMPTS[2:3], SamplingParams(n=1, max_new_tokens=16, temperature=0.0,
                                                           stop_strings=(string,)))
    assert group.completions[0].token_ids == free[:expected] and group.completions[0].finished


@pytest.mark.vllm
def test_sampling_is_seeded_per_prompt(engine):
    params = SamplingParams(n=3, max_new_tokens=8, temperature=1.0, seed=11)
    together = tokens_of(engine.generate(PROMPTS, params))
    again = tokens_of(engine.generate(PROMPTS, params))
    alone = tokens_of(engine.generate(PROMPTS[1:2], params))
    other_seed = tokens_of(engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8, seed=12)))
    assert together == again
    assert alone[1] == together[1]  # a prompt's samples do not depend on its batch
    assert other_seed != together
    assert len({tuple(t) for t in together[0]}) > 1  # the G samples of one prompt differ


# ---------------------------------------------------------------------- log-probs and weights
@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logprobs_match_a_float32_hf_forward(engine, model_dir, temperature):
    groups = list(engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=10, temperature=temperature)))
    if temperature == 0:  # vLLM refuses greedy n > 1: the adapter repeats the one greedy sample
        assert all(g.completions[0] == g.completions[1] for g in groups)
    assert max_logprob_gap(groups, hf_model(model_dir), temperature) < PARITY_TOL


@pytest.mark.vllm
def test_weight_update_shows_in_the_next_outputs(engine, model_dir):
    original = hf_model(model_dir)
    engine.pop_spans()
    greedy = SamplingParams(n=1, max_new_tokens=10, temperature=0.0)
    before = tokens_of(engine.generate(PROMPTS, greedy))
    new = perturbed(original, seed=0)
    engine.load_weights(new.named_parameters(), version=1)
    groups = list(engine.generate(PROMPTS, greedy))  # same prompts: a stale prefix cache would show here
    assert engine.version == 1 and all(g.version == 1 for g in groups)
    assert tokens_of(groups) != before
    assert max_logprob_gap(groups, new, 0.0) < PARITY_TOL
    engine.load_weights(original.named_parameters(), version=2)
    assert tokens_of(engine.generate(PROMPTS, greedy)) == before
    assert [s.stage for s in engine.pop_spans()].count("load_weights") == 2


@pytest.mark.vllm
def test_tempered_logprobs_and_shared_memory_hand_over(engines, model_dir):
    """processed_logprobs at T = 0.7 after a weight update through shared memory (multiprocess's path)."""
    engine = engines.get(model_dir, logprobs_mode="processed_logprobs", weights_via_shm=True)
    new = perturbed(hf_model(model_dir), seed=1, scale=0.2)
    engine.load_weights(new.named_parameters(), version=5)
    params = SamplingParams(n=3, max_new_tokens=10, temperature=0.7, seed=4)
    groups = list(engine.generate(PROMPTS, params))
    assert all(g.version == 5 for g in groups)
    assert max_logprob_gap(groups, new, 0.7) < PARITY_TOL
    with pytest.raises(ValueError, match="truncate"):
        engine.generate(PROMPTS, SamplingParams(temperature=0.7, top_p=0.9))


@pytest.mark.vllm
def test_a_multiprocess_weight_sync_writes_no_weight_file(engines, model_dir, monkeypatch, tmp_path):
    """vLLM in its own process gets the weights through shared memory: saving a safetensors file fails this
    test, nothing new appears in the temp folder, and the log-probs are the new weights' (within PARITY_TOL)."""
    import safetensors.torch
    import tempfile

    def no_file(*args, **kwargs):
        raise AssertionError("a weight sync wrote a safetensors file")

    engine = engines.get(model_dir, multiprocess=True)
    monkeypatch.setattr(safetensors.torch, "save_file", no_file)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp/mkstemp during the sync would land here
    new = perturbed(hf_model(model_dir), seed=3, scale=0.2)
    engine.load_weights(new.named_parameters(), version=1)
    engine.load_weights(new.named_parameters(), version=2)  # the second sync rewrites the same blocks
    assert list(tmp_path.iterdir()) == []
    groups = list(engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=10, temperature=1.0, seed=6)))
    assert all(g.version == 2 for g in groups)
    assert max_logprob_gap(groups, new, 1.0) < PARITY_TOL


@pytest.mark.vllm
def test_tied_embeddings_reload(engines, tied_model_dir):
    engine = engines.get(tied_model_dir)
    original = hf_model(tied_model_dir)
    assert original.lm_head.weight is original.model.embed_tokens.weight
    new = perturbed(original, seed=2)
    assert "lm_head.weight" not in dict(new.named_parameters())  # the trainer sends the tied matrix once
    engine.load_weights(new.named_parameters(), version=1)
    groups = list(engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=10, temperature=1.0, seed=5)))
    assert max_logprob_gap(groups, new, 1.0) < PARITY_TOL


# ---------------------------------------------------------------------- LoRA adapters as vLLM LoRA requests
@pytest.mark.vllm
def test_lora_adapters_match_a_float32_peft_forward_and_each_sync_replaces_the_adapter(engines, model_dir):
    """In process: every attention and MLP projection adapted (vLLM packs q/k/v and gate/up), alpha / r = 4.
    A second sync's outputs are the second adapters' (never the first's), and vLLM holds only its adapter."""
    engine = engines.get(model_dir, lora_rank=4, lora_alpha=16.0)
    params = SamplingParams(n=2, max_new_tokens=10, temperature=1.0, seed=7)
    with pytest.raises(RuntimeError, match="only after load_weights"):
        engine.generate(PROMPTS, params)  # no adapter yet: it would sample the bare base
    first, second = lora_model(model_dir, seed=0), lora_model(model_dir, seed=1)
    engine.load_weights(adapters_of(first), version=1)
    groups = list(engine.generate(PROMPTS, params))
    assert all(g.version == 1 for g in groups)
    assert max_logprob_gap(groups, first, 1.0) < PARITY_TOL
    assert max_logprob_gap(groups, hf_model(model_dir), 1.0) > 100 * PARITY_TOL  # the adapters are in use
    engine.load_weights(adapters_of(second), version=2)
    assert engine._engine.collective_rpc("list_loras") == [{2}]  # the first sync's adapter is gone
    groups = list(engine.generate(PROMPTS, params))
    assert all(g.version == 2 for g in groups)
    assert max_logprob_gap(groups, second, 1.0) < PARITY_TOL
    assert max_logprob_gap(groups, first, 1.0) > 100 * PARITY_TOL
    with pytest.raises(ValueError, match="is no LoRA adapter tensor"):
        engine.load_weights(hf_model(model_dir).named_parameters(), version=3)


@pytest.mark.vllm
def test_lora_adapters_reach_a_multiprocess_engine_through_shared_memory(engines, model_dir, monkeypatch):
    """vLLM in its own process, adapters on some projections only (q and v without k: a partly filled packed
    qkv layer), greedy and sampled: no adapter file is written, and the log-probs are the peft model's."""
    import safetensors.torch

    def no_file(*args, **kwargs):
        raise AssertionError("an adapter sync wrote a safetensors file")

    monkeypatch.setattr(safetensors.torch, "save_file", no_file)
    engine = engines.get(model_dir, multiprocess=True, lora_rank=8, lora_alpha=8.0)
    for version in (1, 2):
        model = lora_model(model_dir, seed=10 + version, targets=("q_proj", "v_proj", "down_proj"), rank=8, alpha=8.0)
        engine.load_weights(adapters_of(model), version=version)
        for temperature in (0.0, 1.0):
            groups = list(engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=8, temperature=temperature,
                                                                  seed=version)))
            assert all(g.version == version for g in groups)
            assert max_logprob_gap(groups, model, temperature) < PARITY_TOL


def test_in_process_engine_refuses_an_existing_process_group(monkeypatch, tmp_path):
    """Checked before vllm is imported, so this runs without it too."""
    from engine.rollout.vllm import VllmOptions, VllmRolloutEngine

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match="multiprocess=True"):
        VllmRolloutEngine(tmp_path, 0, VllmOptions())


@pytest.mark.vllm
def test_close_is_idempotent_and_final(engines, tied_model_dir):
    engine = engines.get(tied_model_dir)
    engine.close()
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(PROMPTS, SamplingParams())
    with pytest.raises(RuntimeError, match="closed"):
        engine.load_weights([], version=1)
    engines.close()
