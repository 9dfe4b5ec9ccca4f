"""The `cadence` command's surface: help without the optional packages, one spelling per option."""
from __future__ import annotations

import subprocess
import sys

import pytest

OPTIONAL = ("vllm", "wandb", "mlflow", "tensorboard", "datasets", "pyarrow", "pandas")
# Each optional package made unimportable (None in sys.modules makes `import x` raise ImportError).
GUARD = f"import sys; sys.modules.update(dict.fromkeys({OPTIONAL!r}))"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["train", "--help"]])
def test_cadence_help_works_without_the_optional_packages(argv):
    done = _python(f"{GUARD}\nfrom engine.cli import main\nmain({argv!r})")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_importing_engine_and_its_cli_loads_no_optional_package():
    code = ("import sys, engine, engine.cli, engine.runlog, engine.tracking, engine.data.sources, engine.controller\n"
            f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))")
    done = _python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_benchmarks_spell_the_iteration_count_iterations():
    from engine import cli
    from engine.bench import compare, e2e, pipeline, precision, ranks, rollout, shared_prompt

    for module in (cli, compare, e2e, pipeline, precision, ranks, rollout, shared_prompt):
        listed = [line for line in open(module.__file__) if "add_argument(" in line and "SUPPRESS" not in line]
        assert not [line for line in listed if any(f'"--{name}"' in line for name in ("iters", "steps", "num-iters"))]
    parser = __import__("argparse").ArgumentParser()
    shared_prompt.add_arguments(parser)
    assert parser.parse_args(["--iterations", "5"]).iters == 5
    assert parser.parse_args(["--iters", "6"]).iters == 6  # the old spelling still works, unlisted


def test_cadence_bench_compare_is_the_documented_name_and_compare_an_alias(tmp_path, capsys):
    from engine.cli import main

    for argv in (["bench", "compare", "--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        assert "usage: cadence bench compare" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "cadence bench compare" in out and "{train,bench,eval,export,build-default,fetch-model}" in out
