"""The `cadence` command: `cadence train RECIPE [k=v ...]`, `cadence eval ...`, `cadence build-default`,
`cadence bench <benchmark> ...`, `cadence compare A.json B.json ... --out DIR`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import ConfigError


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="greedy accuracy of a model folder or checkpoint on a held-out set")
    p.add_argument("--model", required=True, help="model folder, checkpoint folder, or embedded://tiny-math")
    p.add_argument("--data", choices=["synthetic", "gsm8k"], default="synthetic")
    p.add_argument("--data-path", default=None, help="GSM8K folder (with test.jsonl); default ../shared/data/gsm8k")
    p.add_argument("--n", type=int, default=200, help="held-out problems to score")
    p.add_argument("--prompt-format", choices=["plain", "chat"], default="plain")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop string (repeatable); generation also stops at the tokenizer's eos and every id of the "
                        "model's generation_config.eos_token_id")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default="auto")
    p.add_argument("--cache-dir", default=".cache/cadence")
    p.add_argument("--out", default="eval.json", help="where to write the JSON result")


def run_eval(args: argparse.Namespace) -> int:
    from backends import get_backend
    from engine.data.sources import load_examples, prompt_items
    from engine.config import DataConfig, EvalConfig, ModelConfig, RewardConfig
    from engine.default_model import resolve_model_path
    from engine.evaluate import evaluate, write_result
    from engine.models import load_causal_lm, load_tokenizer
    from engine.rewards import load_reward_fn
    from engine.rollout import build_rollout_engine
    from engine.rollout.stopping import load_generation_config, stop_token_ids

    if any(not s for s in args.stop):
        raise ConfigError("--stop: stop strings must be non-empty")
    backend = get_backend(args.backend)
    model_cfg = ModelConfig(path=args.model)
    data_cfg = DataConfig(source=args.data, path=args.data_path, prompt_format=args.prompt_format)
    folder = resolve_model_path(args.model, args.cache_dir)
    tokenizer = load_tokenizer(folder, model_cfg)
    model = load_causal_lm(folder, model_cfg, backend.device())
    _, heldout = load_examples(data_cfg, EvalConfig(heldout_size=args.n), seed=0)
    items = prompt_items(heldout, tokenizer, data_cfg)
    engine = build_rollout_engine("native", model, tokenizer, backend.device())
    result = evaluate(engine, items, lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                      load_reward_fn(RewardConfig().functions[0]),
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      stop_token_ids=stop_token_ids(tokenizer, load_generation_config(folder, model)),
                      stop_strings=tuple(args.stop))
    write_result(result, args.out, model=str(folder), data=args.data, backend=backend.name, stop=args.stop)
    print(f"accuracy {result.accuracy:.4f} on {result.n} problems ({result.truncated_frac:.0%} cut by "
          f"--max-new-tokens) -> {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from engine.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] in (["bench"], ["compare"]):  # benchmarks parse their own arguments (engine/bench/)
        from engine.bench.__main__ import main as bench_main

        return bench_main(argv[1:] if argv[0] == "bench" else argv)
    parser = argparse.ArgumentParser(prog="cadence", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run a recipe: cadence train RECIPE [key=value ...]")
    sub.add_parser("bench", help="benchmarks: cadence bench e2e RECIPE --out report.json, or another (engine/bench/)")
    sub.add_parser("compare", help="compare e2e bench reports: cadence compare A.json B.json ... --out DIR")
    _eval_parser(sub)
    build = sub.add_parser("build-default", help="build (or reuse) the embedded tiny model")
    build.add_argument("--cache-dir", default=".cache/cadence")
    args = parser.parse_args(argv)
    try:
        if args.command == "eval":
            return run_eval(args)
        from engine.default_model import ensure_default_model

        print(ensure_default_model(Path(args.cache_dir)))
        return 0
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
