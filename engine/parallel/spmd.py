"""The command protocol of a multi-rank run: rank 0's controller drives, the other ranks follow.

Rank 0 runs the one controller loop (prompts, rollout, scoring, schedule) with a `TrainerGroup` in place of
its Trainer. Each micro-batch the schedule hands over is dealt to a rank; when every rank has one (a round)
each rank is sent its micro-batch and all ranks run forward/backward at once. A rank dealt nothing in the last,
partial round of an iteration takes a zero-weight backward so the FSDP2 collectives stay matched. Weight
sync, the optimizer step and checkpoints are commands too, so every rank makes the same collectives in the
same order. Commands travel over the control plane (engine/parallel/control.py), not collectives, so a rank
waiting for the next one is not stuck in a collective, and a failure on any rank stops them all:

    rank 0 (controller)              ranks 1..N-1 (follow)
    sync_weights  -> ("sync", k) ->  gather full weights layer by layer (rank 0 hands them to the rollout; when
                                     colocated, every rank's own engine copies them too: engine/rollout/fleet/ranks.py)
    rollout       -> ("generate") -> colocated: this rank's engine generates the prompts rank 0 deals it
    accumulate x N -> ("train", mb_rank)  ->   forward/backward of mb_rank (or zero-weight when None)
    step          -> ("step")   ->   reduce gradients once, clip, AdamW step on the local shards (per mini-batch)
    end of iter.  -> ("end")    ->   learning-rate schedule, policy version k -> k+1
    checkpoint    -> ("save", k) ->  torch.distributed.checkpoint, every rank its shards
    end           -> ("stop")   ->   return

Periodic asynchrony is unchanged: micro-batches are dealt as groups arrive, while the rollout engine
(split placement: a worker fleet on rank 0's side) generates the rest; every group still carries the version
the trainer ranks are at.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from engine.parallel.control import ControlPlane
from engine.trainer import Trainer
from engine.types import RolloutGroup

MicroBatch = list[RolloutGroup]


def train_micro_batch(trainer: Trainer, batch: MicroBatch | None) -> None:
    if batch:
        trainer.accumulate(batch)
    else:
        trainer.accumulate_idle()


class TrainerGroup:
    """Rank 0's handle on all trainer ranks, used by the controller exactly like a Trainer."""

    def __init__(self, trainer: Trainer, control: ControlPlane, world_size: int) -> None:
        self.trainer = trainer
        self.control = control
        self.world_size = world_size
        self._pending: list[MicroBatch] = []

    @property
    def version(self) -> int:
        return self.trainer.version

    @property
    def trimodel(self):
        return self.trainer.trimodel

    @property
    def precision(self):
        return self.trainer.precision

    def accumulate(self, batch: Sequence[RolloutGroup]) -> None:
        """Deal `batch` to the next rank; a full round is trained at once on all ranks."""
        self._pending.append(list(batch))
        if len(self._pending) == self.world_size:
            self._train_pending()

    def step(self) -> dict[str, float]:
        return {**self.step_mini_batch(), **self.end_iteration()}

    def step_mini_batch(self) -> dict[str, float]:
        if self._pending:
            self._train_pending()
        self.control.broadcast(("step", None))
        return self.trainer.step_mini_batch()

    def end_iteration(self) -> dict[str, float]:
        self.control.broadcast(("end", None))
        return self.trainer.end_iteration()

    def rollout_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every rank gathers each full tensor; the version lets a rank's own rollout engine load them."""
        self.control.broadcast(("sync", self.trainer.version))
        return self.trainer.rollout_weights()

    def command(self, name: str, payload: Any = None) -> None:
        """Announce a command the caller then runs on rank 0 itself (checkpoint save and load)."""
        self.control.broadcast((name, payload))

    def close(self) -> None:
        """After the run's last command: the other ranks return from `follow`; the reward worker stops."""
        self.control.broadcast(("stop", None))
        self.trainer.close()

    def _train_pending(self) -> None:
        """Send each rank its micro-batch of the round (None: a zero-weight backward), then train rank 0's."""
        round_ = self._pending + [None] * (self.world_size - len(self._pending))
        self._pending = []
        for rank in range(1, self.world_size):
            self.control.send(rank, ("train", round_[rank]))
        train_micro_batch(self.trainer, round_[0])


def follow(trainer: Trainer, control: ControlPlane, handlers: dict[str, Callable[[Any], None]]) -> None:
    """Ranks > 0: run rank 0's commands until it says stop. `handlers` adds the checkpoint commands. The wait
    for the next command has no deadline of its own (rank 0 may generate for long): the control plane ends
    this process if rank 0 fails, exits or stops sending heartbeats."""
    commands: dict[str, Callable[[Any], None]] = {
        "train": lambda batch: train_micro_batch(trainer, batch),
        "step": lambda _: trainer.step_mini_batch(),
        "end": lambda _: trainer.end_iteration(),
        "sync": lambda _: _drain(trainer.rollout_weights()),
        **handlers,
    }
    while True:
        name, payload = control.receive(0, "waiting for rank 0's next command")
        if name == "stop":
            return
        commands[name](payload)


def _drain(weights: Iterator) -> None:
    for _ in weights:  # each full_tensor() is a collective rank 0 makes too; the values are rank 0's to use
        pass
