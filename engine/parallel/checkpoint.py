"""Checkpoints of a multi-rank run: torch.distributed.checkpoint for the sharded state, plus the usual export.

A checkpoint folder is the one-process layout (engine/checkpoint.py: Hugging Face export in the compute
dtype, trainer_state.pt, manifest.json, published atomically by rank 0) with one more sub-folder, `dcp/`:
the float32 masters and AdamW state as written by `torch.distributed.checkpoint` from every rank's shards.
DCP reshards on load, so a run saved on N ranks resumes on M. All ranks write into rank 0's temporary folder
(same file system: one node, or a shared file system across nodes); rank 0 takes the manifest and renames.

Under LoRA (engine/parallel/lora.py) both hold the adapters alone: the export is peft's adapter folder (as in one
process, so `cadence export --merge` reads it), `dcp/` the float32 adapter masters and their AdamW state; the
frozen base is never written, and a resume reads it from model.path again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.checkpoint import (CheckpointError, latest_checkpoint, load_trainer_state, prune_checkpoints, save_checkpoint, snapshot,
                               tmp_checkpoint_dir)
from engine.lora import is_lora
from engine.parallel.spmd import TrainerGroup
from engine.trainer import Trainer

DCP_DIR = "dcp"


def _options(trainer: Trainer, **options):
    """StateDictOptions of this run: under LoRA the frozen base is left out (it never steps)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    lora = is_lora(trainer.trimodel.actor)
    return StateDictOptions(ignore_frozen_params=lora, **({"strict": False} if lora else {}), **options)


def _sharded_state(trainer: Trainer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(trainer.trimodel.actor, trainer.optimizer, options=_options(trainer))
    return {"model": model_state, "optim": optim_state}


def _full_export(trainer: Trainer) -> dict:
    """The whole model (LoRA: the adapters) on rank 0 (CPU), gathered tensor by tensor; empty on the other
    ranks. A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(trainer.trimodel.actor, options=_options(trainer, full_state_dict=True,
                                                                          cpu_offload=True))


def save_shards(trainer: Trainer, folder: Path) -> None:
    """Every rank: write this rank's shards of masters and optimizer state under `folder`/dcp."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_sharded_state(trainer), checkpoint_id=str(folder / DCP_DIR))


def load_shards(trainer: Trainer, folder: Path) -> None:
    """Every rank: read its shards (resharded to this run's ranks) and the schedule from checkpoint `folder`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _sharded_state(trainer)
    dcp.load(state, checkpoint_id=str(folder / DCP_DIR))
    set_state_dict(trainer.trimodel.actor, trainer.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_options(trainer))
    trainer.load_schedule_state(load_trainer_state(folder)["trainer"])


class ShardedCheckpoints:
    """Rank 0's side: the controller calls submit / wait / restore as on RunCheckpoints; each is announced
    to the other ranks, whose side is `follower_handlers`. Writes are synchronous (every rank writes)."""

    def __init__(self, ckpt_root: str | Path, group: TrainerGroup, tokenizer: Any, keep: int) -> None:
        self.root = Path(ckpt_root)
        self.group = group
        self.trainer = group.trainer
        self.tokenizer = tokenizer
        self.keep = keep

    def submit(self, iteration: int, run_state: dict) -> None:
        self.group.command("save", (iteration, os.getpid()))
        export = snapshot(_full_export(self.trainer), dtype=self.trainer.precision.compute)
        state = {"trainer": self.trainer.schedule_state(), **snapshot(run_state)}
        save_checkpoint(self.root, iteration, self.trainer.trimodel.actor, self.tokenizer, state,
                        model_state=export, write_extra=lambda tmp: save_shards(self.trainer, tmp))
        prune_checkpoints(self.root, self.keep)

    def wait(self) -> None:
        return None

    def restore(self) -> dict | None:
        path = latest_checkpoint(self.root)
        if path is not None and not (path / DCP_DIR).is_dir():
            raise CheckpointError(f"{path}: written by a single-process run (no {DCP_DIR}/); resume it with "
                                  f"python -m engine.train, not torchrun")
        self.group.command("load", None if path is None else str(path))
        if path is None:
            return None
        load_shards(self.trainer, path)
        return {**load_trainer_state(path), "path": str(path)}


def follower_handlers(trainer: Trainer, ckpt_root: str | Path) -> dict:
    """The other ranks' side of "save" and "load"."""

    def save(payload: tuple[int, int]) -> None:
        iteration, root_pid = payload
        _full_export(trainer)  # a collective: rank 0 keeps the result
        save_shards(trainer, tmp_checkpoint_dir(ckpt_root, iteration, root_pid))

    def load(path: str | None) -> None:
        if path is not None:
            load_shards(trainer, Path(path))

    return {"save": save, "load": load}
