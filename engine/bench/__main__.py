"""Benchmarks: `python -m engine.bench <command> [options]`; `<command> -h` shows its options.

`e2e` runs a recipe end to end and writes one JSON report; `compare` sets reports side by side (also
`cadence bench e2e ...` and `cadence bench compare ...`; docs/benchmarks.md)."""
from __future__ import annotations

import sys

from engine.bench import compare, e2e, fleet, pipeline, precision, ranks, rollout, shared_prompt, tool_use

COMMANDS = {"shared-prompt": shared_prompt, "pipeline": pipeline, "precision": precision, "ranks": ranks, "rollout": rollout,
            "e2e": e2e, "compare": compare, "fleet": fleet, "tool-use": tool_use}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m engine.bench {{{','.join(COMMANDS)}}} [options]")
    result = COMMANDS[argv[0]].main(argv[1:])
    return result if isinstance(result, int) else 0  # some commands return their figures, not an exit code


if __name__ == "__main__":
    sys.exit(main())
