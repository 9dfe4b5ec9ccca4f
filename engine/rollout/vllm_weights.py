"""How the policy's weights reach a running vLLM engine, both sides of the hand-over.

Trainer side, `VllmWeights`: the full model through vLLM's layer-wise `reload_weights`, or under LoRA the
adapters as a new vLLM adapter each sync. In-process the tensors go straight to the worker; with vLLM's worker
in its own process(es) they travel in memory, never through a file: `SharedWeights` packs them into one POSIX
shared-memory block per dtype, and the RPC carries only its manifest (names, shapes, offsets).

Worker side, `CadenceWorkerExtension`: the methods vLLM mixes into its workers (EngineArgs.worker_extension_cls)
that map those blocks and load from views of them, and rebuild a tied lm_head's kernel after a reload.
"""
from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from collections.abc import Iterable, Sequence

import torch

from engine.rollout.vllm_lora import adapter_tensor_name, lora_request


class VllmWeights:
    """Weight syncs into one vLLM engine (`engine`: its LLMEngine; `options`: engine.rollout.vllm.VllmOptions)."""

    def __init__(self, engine, options) -> None:
        self.engine = engine
        self.options = options
        self._shared: SharedWeights | None = None  # the shared-memory hand-over (multiprocess mode)
        self._lora_ids = itertools.count(1)  # vLLM adapter ids: one per sync, never reused (0 is not an id)

    def load(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int):
        """Hand over one sync's tensors; returns the LoRARequest of `version` under LoRA, else None."""
        if self.options.lora_rank:
            return self._load_adapter(named_tensors, version)
        self._reload(named_tensors)
        return None

    def close(self) -> None:
        """Free the shared blocks (idempotent)."""
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.close()

    def _via_shm(self) -> bool:
        return self.options.multiprocess if self.options.weights_via_shm is None else self.options.weights_via_shm

    def _reload(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Every given weight of the model, reloaded in place (the full-model sync)."""
        if self._via_shm():
            self._reload_from_shared_memory(named_tensors)
        else:
            detached = ((name, t.detach()) for name, t in named_tensors)  # no graph into vLLM's copy
            self.engine.collective_rpc("reload_weights", kwargs={"weights_iterator": detached})
        self.engine.collective_rpc("refresh_tied_kernels")  # CadenceWorkerExtension, in every worker

    def _load_adapter(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int):
        """The adapters as vLLM's next adapter (a new id), the previous one removed in every worker; returns
        the LoRARequest of `version`."""
        tensors = [(adapter_tensor_name(name), t.detach()) for name, t in named_tensors]
        if not tensors:
            raise ValueError("load_weights: a vLLM engine serving LoRA adapters got no adapter tensors")
        lora_id = next(self._lora_ids)
        spec = {"lora_id": lora_id, "rank": self.options.lora_rank, "alpha": self.options.lora_alpha}
        if self._via_shm():
            if self._shared is None:
                self._shared = SharedWeights(tensors)
            self._shared.write(tensors)
            loaded = self.engine.collective_rpc("load_shared_adapter", kwargs={"manifest": self._shared.manifest,
                                                                                **spec})
        else:
            loaded = self.engine.collective_rpc("load_adapter", kwargs={"tensors": dict(tensors), **spec})
        if any(ids != [lora_id] for ids in loaded):
            raise RuntimeError(f"vLLM workers hold LoRA adapters {loaded} after loading adapter {lora_id}")
        return lora_request(version, lora_id)

    def _reload_from_shared_memory(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Write the weights into the shared blocks, then have every vLLM worker reload from views of them."""
        named_tensors = [(name, t.detach()) for name, t in named_tensors]
        if self._shared is None:
            self._shared = SharedWeights(named_tensors)
        self._shared.write(named_tensors)
        self.engine.collective_rpc("load_shared_weights", kwargs={"manifest": self._shared.manifest})


class SharedWeights:
    """Named tensors in POSIX shared memory (/dev/shm is RAM), one block per dtype, laid out once by the first
    sync's names, shapes and dtypes (engine/rollout/fleet/transports.py plan_slots) and rewritten in place by
    every later sync. `manifest` is all a vLLM worker needs to map them: plain lists and strings, so it crosses
    any collective_rpc (vLLM's msgpack or pickle) at a few bytes per tensor."""

    def __init__(self, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        from multiprocessing.shared_memory import SharedMemory

        from engine.rollout.fleet.transports import plan_slots, slot_views

        slots, totals = plan_slots(named_tensors)
        self._blocks = {dtype: SharedMemory(create=True, size=max(1, n * dtype.itemsize))
                        for dtype, n in totals.items()}
        flat = {dtype: torch.frombuffer(self._blocks[dtype].buf, dtype=dtype, count=n) for dtype, n in totals.items()}
        self._views = slot_views(slots, flat)
        self.manifest = {"blocks": [[_dtype_name(d), b.name, totals[d]] for d, b in self._blocks.items()],
                         "slots": [[s.name, _dtype_name(s.dtype), list(s.shape), s.offset] for s in slots]}

    def write(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy each tensor into its slot (a name or shape not in the first sync's layout is an error)."""
        from engine.rollout.fleet.transports import pack_into

        pack_into(self._views, ((name, t.to("cpu")) for name, t in named_tensors))

    def close(self) -> None:
        """Free the blocks: drop the tensors mapping them first (a mapped block cannot be closed)."""
        self._views = {}
        for block in self._blocks.values():
            with contextlib.suppress(BufferError):  # a view still referenced elsewhere: the OS frees it at exit
                block.close()
            block.unlink()
        self._blocks = {}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class CadenceWorkerExtension:
    """Methods vLLM mixes into its worker class (EngineArgs.worker_extension_cls), called by name through
    collective_rpc: a name, unlike a function, crosses to a worker process without pickling code."""

    def refresh_tied_kernels(self) -> list[str]:
        """After a reload: rebuild the kernel of every embedding module whose weight is another module's (a tied
        lm_head). vLLM's layer-wise reload skips such aliases, so their processed form (on CPU a packed GEMM
        closure over the old matrix) would keep computing with the previous weights. Returns their names."""
        from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

        owner: dict[int, int] = {}  # id(weight) -> id(the first module holding it)
        refreshed = []
        for name, module in self.model_runner.model.named_modules():
            weight = module._parameters.get("weight") if isinstance(module, VocabParallelEmbedding) else None
            if weight is not None and owner.setdefault(id(weight), id(module)) != id(module):
                module.quant_method.process_weights_after_loading(module)
                refreshed.append(name)
        return refreshed

    def load_shared_weights(self, manifest: dict) -> None:
        """Reload the model in place from the blocks of a SharedWeights `manifest` (vLLM's reload_weights on
        views of them: the values are copied into vLLM's own parameters)."""
        self.reload_weights(weights_iterator=iter(self._shared_views(manifest).items()))

    def load_adapter(self, lora_id: int, tensors: dict, rank: int, alpha: float) -> list[int]:
        """LoRA: `tensors` (A and B, peft file names) become adapter `lora_id`, the only one loaded."""
        from engine.rollout.vllm_lora import load_adapter

        return load_adapter(self, lora_id, tensors, rank, alpha)

    def load_shared_adapter(self, manifest: dict, lora_id: int, rank: int, alpha: float) -> list[int]:
        """load_adapter from the blocks of a SharedWeights `manifest` (the tensors are copied out of them)."""
        return self.load_adapter(lora_id, self._shared_views(manifest), rank, alpha)

    def _shared_views(self, manifest: dict) -> dict[str, torch.Tensor]:
        """Views of the tensors of a SharedWeights `manifest`. The blocks are mapped once and kept for later
        syncs. The trainer owns and unlinks them, so they are mapped from /dev/shm directly: Python < 3.13's
        SharedMemory(name=...) would register them with the resource tracker, which vLLM's processes share
        with the trainer, and undoing that would drop the trainer's own registration."""
        from engine.rollout.fleet.transports import TensorSlot, slot_views

        mapped = self.__dict__.setdefault("_cadence_shared", {})  # block name -> (mapping, flat tensor)
        flat = {}
        for dtype_name, block_name, count in manifest["blocks"]:
            if block_name not in mapped:
                block = _map_shared_block(block_name)
                mapped[block_name] = (block, torch.frombuffer(block, dtype=getattr(torch, dtype_name), count=count))
            flat[getattr(torch, dtype_name)] = mapped[block_name][1]
        slots = [TensorSlot(name, getattr(torch, dtype), tuple(shape), offset)
                 for name, dtype, shape, offset in manifest["slots"]]
        return slot_views(slots, flat)


def _map_shared_block(name: str) -> mmap.mmap:
    """A POSIX shared-memory block of another process, mapped read-write without the resource tracker."""
    fd = os.open(f"/dev/shm/{name.lstrip('/')}", os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)  # the mapping keeps the block
