"""Benchmarks: `python -m engine.bench <command> [options]`; `<command> -h` shows its options."""
from __future__ import annotations

import sys

from engine.bench import pipeline, precision, shared_prompt

COMMANDS = {"shared-prompt": shared_prompt, "pipeline": pipeline, "precision": precision}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m engine.bench {{{','.join(COMMANDS)}}} [options]")
    COMMANDS[argv[0]].main(argv[1:])


if __name__ == "__main__":
    main()
