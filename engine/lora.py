"""LoRA (model.lora): low-rank adapters, trained through peft, on a frozen base (docs/lora.md).

Each target linear layer computes

    y = W x + (alpha / r) * B (A x)        W: [out, in] frozen, A: [r, in], B: [out, r] trained (B starts at 0)

The mixed-precision contract (engine/precision.py) holds with a twist: only A and B are masters (float32,
with their optimizer state); W is loaded once, in the compute dtype, and never steps. Three consequences:

    reference policy   the actor with its adapters switched off (peft's `disable_adapter`): W x exactly, so no
                       reference copy is loaded and the KL is still exact
    weight sync        only A and B reach the rollout engine; its base is the same W (colocated: the same
                       tensors), so the base is never sent again
    checkpoints        the adapter in peft's folder format (adapter_config.json + adapter_model.safetensors);
                       `cadence export --merge` folds B A into W for a plain Hugging Face folder

peft is imported only by runs with model.lora.rank > 0 (the `lora` extra).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from engine.config import ConfigError, LoraConfig
from engine.console import log

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_lora(model: object) -> bool:
    """The model carries peft adapters (its trainable parameters are the adapters alone)."""
    return hasattr(model, "peft_config")


def default_targets(model: nn.Module) -> list[str]:
    """Leaf names of every linear layer of the transformer blocks (every attention and MLP projection), in
    first-seen order; the output head (and any linear layer named like it) is left out."""
    head = model.get_output_embeddings()
    head_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is head}
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and module is not head and leaf not in head_names:
            names[leaf] = None
    return list(names)


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Every name in `targets` must be the leaf name of a linear layer of `model`."""
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = [t for t in targets if t not in linear]
    if unknown:
        raise ConfigError(f"model.lora.target_modules: {unknown} name no linear layer of {type(model).__name__}; "
                          f"its linear layers are {sorted(linear)}")


def apply_lora(model: nn.Module, cfg: LoraConfig, folder: Path, master: torch.dtype) -> nn.Module:
    """`model` (the base, in the compute dtype) wrapped by peft with rank-`cfg.rank` adapters on the target
    layers; the base is frozen, the adapters are `master`-dtype parameters (A Kaiming-uniform, B zero, so the
    wrapped model computes exactly what the base does until the first step)."""
    try:
        import peft
    except ImportError as exc:
        raise ConfigError("model.lora.rank > 0 needs the peft package: pip install -e .[lora]") from exc

    targets = list(cfg.target_modules) or default_targets(model)
    check_targets(model, targets)
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                             bias="none", init_lora_weights=True)
    # no task type: the plain PeftModel, whose forward is the base model's own (logits_to_keep, packed kwargs)
    wrapped = peft.get_peft_model(model, config, autocast_adapter_dtype=False)
    for param in wrapped.parameters():
        if param.requires_grad:
            param.data = param.data.to(master)
    # absolute, so `cadence export --merge` finds the base from any working directory
    wrapped.peft_config["default"].base_model_name_or_path = str(Path(folder).resolve())
    return wrapped


def trainable_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, parameter) of the adapters: what the optimizer steps, the rollout side receives and a
    checkpoint's masters hold."""
    return ((name, p) for name, p in model.named_parameters() if p.requires_grad)


def synced_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The parameters a weight sync carries: every one, or under LoRA the adapters alone (the rollout side
    holds the same frozen base already)."""
    return trainable_parameters(model) if is_lora(model) else model.named_parameters()


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter entries of `model.state_dict()` (names as the module spells them)."""
    return {name: tensor for name, tensor in model.state_dict().items() if ".lora_" in name}


def frozen_bytes(model: nn.Module) -> int:
    """Bytes of the frozen base's parameters: what a separate reference copy (compute dtype) would hold."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)


def trainable_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for _, p in trainable_parameters(model))


class AdaptersOff:
    """The reference policy under LoRA: a call of the actor with its adapters switched off, i.e. the frozen
    base. Not a module of its own (it holds no parameters): the actor's module is the only copy."""

    def __init__(self, actor: nn.Module) -> None:
        self.actor = actor

    def __call__(self, *args, **kwargs):
        # peft's switch also clears the adapters' requires_grad while it is off and sets it back on exit; the
        # actor's graph of this micro-batch is already built by then, so its gradients are unaffected
        with self.actor.disable_adapter():
            return self.actor(*args, **kwargs)


def log_memory(actor: nn.Module, with_reference: bool) -> int:
    """Log what LoRA trains and, when the run has a reference policy (algorithm.kl_coef > 0), the parameter
    bytes its separate copy would have taken; return those bytes (0 without a reference)."""
    saved, trained = frozen_bytes(actor) if with_reference else 0, trainable_bytes(actor)
    log.info("LoRA: %d adapter parameters (%.3f MiB) trained over a frozen base of %.3f MiB%s",
             sum(p.numel() for _, p in trainable_parameters(actor)), trained / 2**20, frozen_bytes(actor) / 2**20,
             f"; reference = adapters off, no copy loaded ({saved / 2**20:.3f} MiB of parameters saved)"
             if with_reference else "")
    return saved


def load_adapter(folder: Path, model: nn.Module) -> None:
    """Copy the adapter of checkpoint `folder` (peft format) into `model`, strictly: the file's tensors and the
    model's adapters must be the same set with the same shapes."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    tensors = load_file(folder / ADAPTER_WEIGHTS, device="cpu")
    result = set_peft_model_state_dict(model, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
    if unexpected or missing:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS}: does not fit the model's adapters (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); was it written with other model.lora settings?")


def export_merged(checkpoint: Path, out: Path, base: Path | None = None) -> Path:
    """A Hugging Face folder at `out` whose weights are W + (alpha / r) B A: the base of the adapter in
    `checkpoint` (its adapter_config.json's base path, or `base`) with the adapter merged in, plus the
    checkpoint's tokenizer. The merge runs in float32 and the folder keeps the base's stored dtype."""
    import json

    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = json.loads((checkpoint / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = Path(base or config["base_model_name_or_path"])
    if not base.is_dir():
        raise FileNotFoundError(f"{checkpoint / ADAPTER_CONFIG}: base model folder {base} not found; pass --base")
    stored = AutoConfig.from_pretrained(base, local_files_only=True).dtype or torch.float32
    stored = getattr(torch, stored) if isinstance(stored, str) else stored
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    merged = PeftModel.from_pretrained(model, checkpoint, local_files_only=True).merge_and_unload()
    merged.to(stored).save_pretrained(out)
    AutoTokenizer.from_pretrained(checkpoint if (checkpoint / "tokenizer_config.json").is_file() else base,
                                  local_files_only=True).save_pretrained(out)
    return out
