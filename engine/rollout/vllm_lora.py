"""LoRA adapters served by vLLM as LoRA requests (model.lora with rollout.engine=vllm; docs/lora.md).

vLLM keeps the frozen base it loaded from the model folder; each weight sync carries the adapters alone (A and
B of every target layer, in the compute dtype) and becomes a NEW vLLM adapter with its own id:

    trainer sync k                       vLLM worker (CadenceWorkerExtension.load_adapter)
    A, B tensors  ------------------->   LoRAModel.from_lora_tensors (cloned: vLLM folds alpha / r into B in place)
    (in process: the tensors;            remove the adapter of sync k-1, add and activate the new one, check that
     multi-process: shared memory)       every adapter module found a vLLM layer; return the loaded ids
    generate at version k  ---------->   every request carries LoRARequest(id_k); every output is checked for it

Why a new id per sync rather than vLLM's `load_inplace`: a request names the adapter it was sampled with, so
`check_adapter` can tie each group to the sync it was generated after (the weight-version tags say the same of
the engine as a whole). Ids are never reused and the old adapter is removed, so a request for version k cannot
run on adapter k-1: were adapter k ever missing from the worker, vLLM would try to load it from the request's
path, which is an absolute path that never exists (`IN_MEMORY_PATH`), and fail loudly instead.

Adapters go in from memory, never through a file: vLLM's own loading path (`LoRARequest.lora_path`, then
`WorkerLoRAManager._load_adapter`) reads a peft folder, so the worker extension builds the `LoRAModel` from the
tensors itself and hands it to the worker's LoRA manager (`lora_manager._adapter_manager`: vLLM 0.32 internals,
the same calls `LRUCacheWorkerLoRAManager.add_adapter` makes after reading the folder).
"""
from __future__ import annotations

import re

import torch

# vLLM 0.32's LoRAConfig.max_lora_rank must be one of these (its MaxLoRARanks)
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# lora_path of every request: absolute (vLLM then never looks it up on a hub) and never existing, so an adapter
# missing from the worker fails to load instead of being fetched or silently replaced
IN_MEMORY_PATH = "/nonexistent/cadence-lora-in-memory"
_ADAPTER_TENSOR = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])(?:\.[^.]+)?\.weight$")


def max_lora_rank_for(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds a rank-`rank` adapter (vLLM zero-pads the rest)."""
    for allowed in MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"vLLM serves LoRA adapters up to rank {MAX_LORA_RANKS[-1]}, got rank {rank}")


def adapter_tensor_name(name: str) -> str:
    """The peft file name of an adapter tensor, which vLLM parses: peft's module attribute names carry the
    adapter's name (`...q_proj.lora_A.default.weight`), its saved files do not (`...q_proj.lora_A.weight`).
    A tensor that is no adapter's is an error: a LoRA engine's base is frozen and never reloaded."""
    match = _ADAPTER_TENSOR.match(name)
    if match is None:
        raise ValueError(f"load_weights: {name!r} is no LoRA adapter tensor; a vLLM engine serving adapters "
                         f"(lora_rank > 0) receives lora_A / lora_B weights only")
    return f"{match['module']}.{match['ab']}.weight"


def lora_request(version: int, lora_id: int):
    """The LoRARequest every generation request at policy `version` carries (vLLM's adapter `lora_id`)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=f"cadence-v{version}-id{lora_id}", lora_int_id=lora_id,
                       lora_path=f"{IN_MEMORY_PATH}/{lora_id}")


def check_adapter(out, lora_id: int | None, index: int) -> None:
    """The finished request `out` ran with vLLM adapter `lora_id` (None: with no adapter)."""
    used = getattr(out.lora_request, "lora_int_id", None)
    if used != lora_id:
        raise RuntimeError(f"prompt {index}: vLLM generated it with LoRA adapter {used}, expected {lora_id}: the "
                           f"group would not be the synced policy's")


def load_adapter(worker, lora_id: int, tensors: dict[str, torch.Tensor], rank: int, alpha: float) -> list[int]:
    """Worker side: make `tensors` (peft file names -> A or B) vLLM adapter `lora_id`, the only one loaded.
    Returns the ids the worker holds afterwards (the caller checks it is [lora_id])."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    workers = worker.model_runner.lora_manager  # LRUCacheWorkerLoRAManager
    manager = workers._adapter_manager
    helper = PEFTHelper.from_dict({"r": rank, "lora_alpha": alpha, "target_modules": [],
                                   "vllm_max_position_embeddings": workers.max_position_embeddings})
    helper.validate_legal(workers.lora_config)
    mapper = getattr(manager.model, "hf_to_vllm_mapper", None)
    lora = LoRAModel.from_lora_tensors(
        lora_id, {name: t.clone() for name, t in tensors.items()},  # optimize() scales B in place: never ours
        helper, device="cpu", dtype=workers.lora_config.lora_dtype, model_vocab_size=workers.vocab_size,
        weights_mapper=mapper.get_rename_mapper() if mapper is not None else None)
    workers.remove_all_adapters()  # the previous sync's adapter: no request may use it again
    manager.add_adapter(lora)  # packs q/k/v and gate/up into vLLM's fused layers
    unplaced = sorted(set(lora.loras) - set(manager.modules))
    if unplaced:  # activate_adapter would skip them silently: another policy than the trainer's
        raise ValueError(f"LoRA adapter modules {unplaced[:4]} match no LoRA layer of vLLM's model (its LoRA layers: "
                         f"{sorted(manager.modules)[:8]}...); adapt other model.lora.target_modules")
    manager.activate_adapter(lora_id)
    return sorted(workers.list_adapters())
