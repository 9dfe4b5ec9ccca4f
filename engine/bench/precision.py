"""Does a bf16 run train what the float32 run trains? Mixed precision vs float32 vs pure bf16 parameters.

    python -m engine.bench precision [--json] [--iterations 5] [--lr 1e-6] [--hidden 256] [--layers 4]

A Qwen2-shaped model with random weights (HF init: N(0, 0.02)) is trained on the same fixed GRPO groups
(random prompts, responses and 0/1 rewards) for N iterations at a small learning rate, three ways:

    float32     parameters, optimizer state and compute in float32 (the reference)
    bfloat16    model.dtype=bfloat16 as Cadence runs it: float32 masters and AdamW state, bf16 forward/backward
    float16     model.dtype=float16 as Cadence runs it: float32 masters, fp16 forward/backward, dynamic loss
                scaling from 2^16 with the loss divided by a power of two near the token count
    pure_bf16   parameters and AdamW state in bf16 (what `model.dtype: bfloat16` did before): for contrast

Figures (updates are final - initial parameters, all tensors flattened together, in float32):
    update_rel_diff         ||update_bf16 - update_fp32|| / ||update_fp32||          (want <= 0.05)
    changed_frac_bf16       share of the elements the float32 run changed that the bf16 run changed too
                            (want >= 0.99; elements with no gradient, e.g. unseen embedding rows, are left out)
    changed_frac_pure_bf16  the same for pure bf16 parameters: at lr 1e-6 most updates round away
    update_rel_diff_pure_bf16
    update_rel_diff_fp16, changed_frac_fp16   the same figures for float16
    skipped_steps_fp16      overflowed float16 steps (each replayed at half the scale; want 0 at the defaults)
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from engine.config import AlgorithmConfig, OptimConfig, RewardConfig
from engine.precision import Precision
from engine.rewards.composite import build_rewards
from engine.trainer import Trainer
from engine.trimodel import TriModel, use_shared_prompt_attention
from engine.types import Completion, PromptItem, RolloutGroup

RUNS = {
    "float32": Precision(compute=torch.float32, master=torch.float32),
    "bfloat16": Precision(compute=torch.bfloat16, master=torch.float32),
    "float16": Precision(compute=torch.float16, master=torch.float32),
    "pure_bf16": Precision(compute=torch.bfloat16, master=torch.bfloat16),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.bench precision", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) on stdout")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--groups", type=int, default=8, help="B groups per iteration (G = 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["shared", "expanded"], default="shared",
                        help="trainer.layout (shared: the portable shared-prompt kernel, as on the CPU backend)")
    return parser.parse_args(argv)


def qwen2_model(args: argparse.Namespace) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True, attention_dropout=0.0)
    torch.manual_seed(args.seed)
    model = Qwen2ForCausalLM(config).float()
    if args.layout == "shared":
        use_shared_prompt_attention(model, "portable")
    return model


def fixed_groups(args: argparse.Namespace, iteration: int) -> list[RolloutGroup]:
    g = torch.Generator().manual_seed(args.seed * 1000 + iteration)
    groups = []
    for b in range(args.groups):
        prompt = PromptItem(index=b, prompt_ids=torch.randint(0, args.vocab, (32,), generator=g).tolist(), reference="")
        lengths = torch.randint(16, 64, (8,), generator=g).tolist()
        completions = [Completion(torch.randint(0, args.vocab, (R,), generator=g).tolist(), [0.0] * R, True)
                       for R in lengths]
        group = RolloutGroup(prompt, completions, version=iteration)
        group.rewards_G = torch.randint(0, 2, (8,), generator=g).float()
        groups.append(group)
    return groups


def train(args: argparse.Namespace, actor: Qwen2ForCausalLM, precision: Precision) -> tuple[torch.Tensor, int]:
    """The run's parameter update (final - initial), flattened, float32, and its skipped (overflowed, replayed)
    float16 steps; `actor` is trained in place."""
    actor.to(precision.master)
    start = torch.cat([p.detach().float().flatten() for p in actor.parameters()])
    trimodel = TriModel(actor, None, build_rewards(RewardConfig()), decode=lambda ids: "",
                        temperature=1.0, layout=args.layout, pad_id=0, precision=precision)
    # as engine.build sizes it: B x G x the responses' longest length
    trainer = Trainer(trimodel, AlgorithmConfig(), OptimConfig(lr=args.lr, grad_clip=0.0), torch.device("cpu"),
                      expected_normaliser=args.groups * 8 * 64)
    skipped = 0
    for k in range(args.iterations):
        trainer.accumulate(fixed_groups(args, k))
        skipped += int(trainer.step().get("optim/skipped_steps", 0))
    return torch.cat([p.detach().float().flatten() for p in actor.parameters()]) - start, skipped


def _clone(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    clone = copy.deepcopy(model)
    return clone


def compare(updates: dict[str, torch.Tensor]) -> dict[str, float]:
    ref = updates["float32"]
    moved = ref != 0
    out = {}
    for name, diff_key, changed_key in (("bfloat16", "update_rel_diff", "changed_frac_bf16"),
                                        ("float16", "update_rel_diff_fp16", "changed_frac_fp16"),
                                        ("pure_bf16", "update_rel_diff_pure_bf16", "changed_frac_pure_bf16")):
        out[diff_key] = ((updates[name] - ref).norm() / ref.norm()).item()
        out[changed_key] = (updates[name][moved] != 0).float().mean().item()
    out["elements_changed_by_float32"] = int(moved.sum())
    out["elements"] = ref.numel()
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    initial = qwen2_model(args)
    runs = {name: train(args, _clone(initial), precision) for name, precision in RUNS.items()}
    updates = {name: update for name, (update, _) in runs.items()}
    result = {"iterations": args.iterations, "lr": args.lr, "parameters": sum(p.numel() for p in initial.parameters()),
              **compare(updates), "skipped_steps_fp16": runs["float16"][1]}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")
    return result


if __name__ == "__main__":
    main()
