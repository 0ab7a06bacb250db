"""The README's two commands are the ones that are run: CI runs the test command itself."""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    python3 -m venv")]


def test_readme_has_exactly_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("erniem-np demo")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert _readme_commands()[1] in lines, "'.ci/run' must run the README's test command verbatim"


def test_demo_command_works_from_the_package():
    from erniem_np.cli import main

    assert main(["demo"]) == 0


def test_cli_errors_are_one_line(capsys):
    from erniem_np.cli import main

    assert main(["demo", "--ids", "0 5 99999"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside the vocabulary" in err and "Traceback" not in err
    assert re.search(r"erniem-np: error: ", err)


def test_readme_python_example_runs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Use it from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})


def test_texts_may_follow_options(tmp_path, capsys):
    """TEXT arguments after options parse on every Python we support (argparse before 3.12 drops them unless
    the subcommand parsers are intermixed): the error below is about the tokenizer, not the arguments."""
    from erniem_np.bundled import TINY_MODEL
    from erniem_np.cli import main

    assert main(["classify", TINY_MODEL, "--max-length", "8", "hello", "world"]) == 1
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err and "tokenizer" in err
