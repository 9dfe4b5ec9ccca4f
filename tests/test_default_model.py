"""engine.default_model: a miniature build (same code path, tiny sizes) loads with Auto classes, is cached
by its stamp, is deterministic, and never leaves a complete-looking folder when the build fails."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine import default_model as dm
from engine.data.synthetic import format_prompt, make_split

TINY = dm.BuildSpec(tokenizer_problems=300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                    intermediate_size=64, sft_problems=200, sft_steps=3, batch_size=8, warmup_steps=1)


def _quiet(_: str) -> None:
    pass


def _build(cache: Path, seed: int = 0, builder=dm._build_folder) -> Path:
    return dm._ensure(cache, "tiny-math", TINY, seed, _quiet, builder)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("cache"))


def test_build_is_a_loadable_qwen2_folder(tiny_folder):
    assert tiny_folder.name == "tiny-math"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", dm.STAMP_FILE):
        assert (tiny_folder / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    assert model.config.model_type == "qwen2"
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)


def test_tokenizer_reloads_to_identical_ids_and_text(tiny_folder):
    reloaded = AutoTokenizer.from_pretrained(tiny_folder)
    raw = Tokenizer.from_file(str(tiny_folder / "tokenizer.json"))  # exactly what the build trained
    texts = [format_prompt(p.question) + p.solution for p in make_split("heldout", 20)]
    texts += ["Unseen words, ünïcode ≥ 3.5 and\ttabs"]
    for text in texts:
        ids = reloaded(text)["input_ids"]
        assert ids == raw.encode(text).ids
        assert reloaded.decode(ids) == text
    eos = reloaded.eos_token_id
    assert reloaded.decode([eos]) == dm.EOS_TOKEN and reloaded("x" + dm.EOS_TOKEN)["input_ids"][-1] == eos


def test_chat_template_renders_the_plain_prompt(tiny_folder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "How many?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == format_prompt("How many?")


def test_second_call_reuses_the_stamped_folder(tiny_folder):
    def must_not_build(*_):
        raise AssertionError("rebuilt although the stamp matches")

    assert _build(tiny_folder.parent, builder=must_not_build) == tiny_folder
    stamp = json.loads((tiny_folder / dm.STAMP_FILE).read_text())
    assert stamp["build_version"] == dm.BUILD_VERSION and stamp["seed"] == 0


def test_stale_stamp_is_rebuilt_in_place(tmp_path):
    calls = []

    def fake_builder(folder, spec, seed, log):
        calls.append(seed)
        (folder / "config.json").write_text("{}")

    _build(tmp_path, seed=0, builder=fake_builder)
    _build(tmp_path, seed=1, builder=fake_builder)
    _build(tmp_path, seed=1, builder=fake_builder)
    assert calls == [0, 1]
    assert json.loads((tmp_path / "tiny-math" / dm.STAMP_FILE).read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-math"]  # no temp or stale leftovers


def test_failed_build_leaves_no_folder(tmp_path):
    def failing_builder(folder, spec, seed, log):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="killed mid-build"):
        _build(tmp_path, builder=failing_builder)
    assert list(tmp_path.iterdir()) == []


def test_build_is_deterministic(tiny_folder, tmp_path):
    again = _build(tmp_path)
    first, second = load_file(tiny_folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tiny_folder / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_collate_masks_prompt_padding_and_unsupervised_format_token():
    examples = [dm._Example(ids=[5, 6, 7, 8], prompt_len=2, format_loss=True),
                dm._Example(ids=[5, 6, 7], prompt_len=2, format_loss=False)]
    input_ids_BT, labels_BT = dm._collate(examples, pad_id=1)
    assert input_ids_BT.tolist() == [[5, 6, 7, 8], [5, 6, 7, 1]]
    assert labels_BT.tolist() == [[-100, -100, 7, 8], [-100, -100, -100, -100]]


def test_resolve_model_path(tiny_folder, tmp_path, monkeypatch):
    assert dm.resolve_model_path(str(tiny_folder), tmp_path) == tiny_folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dm.resolve_model_path(str(tmp_path / "missing"), tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        dm.resolve_model_path(str(tmp_path), tmp_path)
    with pytest.raises(ValueError, match="tiny-math"):
        dm.resolve_model_path("embedded://huge-model", tmp_path)
    monkeypatch.setattr(dm, "DEFAULT_SPEC", TINY)
    built = dm.resolve_model_path("embedded://tiny-math", tmp_path / "cache", log=_quiet)
    assert built == tmp_path / "cache" / "tiny-math" and (built / "config.json").is_file()
