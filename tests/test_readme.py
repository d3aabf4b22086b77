"""The README opens with exactly the two commands a user runs, and CI runs the second verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_two_commands():
    text = (ROOT / "README.md").read_text()
    first_prose = text.index("The first command")
    assert text[:first_prose].count("```bash") == 2
    run_cmd, test_cmd = readme_commands()
    assert run_cmd.endswith("snakemake --cores all") and "\n" not in run_cmd
    assert "pytest" in test_cmd and "\n" not in test_cmd


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines
