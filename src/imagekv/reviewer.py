"""Share a finished run through DVC, and take it up in another clone without recomputing it.

Snakemake schedules; DVC only versions (there is no dvc.yaml). Two DVC files per run record the
outputs worth sharing: `data.dvc` (the datasets under data/) and `outputs/{run}.dvc` (the features,
probe results and tables under results/{run}/, the figures and the paper tables).

    python -m imagekv.reviewer record  [--configfile config/paper.yaml]   # after a complete run
    python -m imagekv.reviewer restore [--configfile config/paper.yaml]   # in a fresh clone

`record` refuses unless Snakemake has nothing left to do, so a committed DVC file always describes
outputs that are up to date for the code and config committed beside it; then it runs `dvc commit`.
`restore` runs `dvc pull`, which checks every file against those hashes, then `snakemake --touch`:
pulled files carry checkout-time modification times in no particular order and the clone has no
.snakemake metadata, so without the touch Snakemake would rerun every job. Touching is sound only
because of the check at record time; `restore` ends by asserting that nothing is left to do.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path("config/config.yaml")
NOTHING_TO_DO = "Nothing to be done"


class ReviewerError(RuntimeError):
    pass


def run_name(configfile: Path) -> str:
    try:
        return yaml.safe_load(configfile.read_text())["run"]
    except (OSError, KeyError, TypeError) as error:
        raise ReviewerError(f"{configfile}: cannot read the key `run` ({error})") from error


def versioned_outputs(run: str) -> list[str]:
    """The folders of one run that DVC versions, relative to the project root."""
    return [f"results/{run}", f"figures/{run}", f"paper_tables/{run}"]


def dvc_files(run: str) -> list[str]:
    return ["data.dvc", f"outputs/{run}.dvc"]


def _tool(module: str, args: list[str], root: Path) -> subprocess.CompletedProcess:
    """Run `python -m <module>` from this interpreter, so Snakemake and DVC come from its environment."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=root, capture_output=True, text=True)


def _checked(module: str, args: list[str], root: Path) -> str:
    result = _tool(module, args, root)
    if result.returncode != 0:
        raise ReviewerError(f"`{module} {' '.join(args)}` failed in {root}:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr


def pending_jobs_report(root: Path, configfile: Path) -> str | None:
    """Snakemake's dry-run report if any job would run, None when everything is up to date."""
    output = _checked("snakemake", ["--dry-run", "--configfile", str(configfile)], root)
    return None if NOTHING_TO_DO in output else output


def _write_dvc_file(root: Path, file: str, outputs: list[str]) -> None:
    """A DVC file listing `outputs` (relative to `root`) without hashes; `dvc commit` fills them in."""
    path = root / file
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(os.path.relpath(root / out, path.parent)).as_posix() for out in outputs]
    path.write_text("outs:\n" + "".join(f"- path: {out}\n" for out in paths))


def record(root: Path, configfile: Path = DEFAULT_CONFIG) -> list[str]:
    """`dvc commit` the run's data and outputs; returns the DVC files to add to git."""
    pending = pending_jobs_report(root, configfile)
    if pending is not None:
        raise ReviewerError(f"{root}: the run of {configfile} is not complete; run Snakemake first:\n{pending[-3000:]}")
    run = run_name(root / configfile)
    files = dvc_files(run)
    for file, outputs in zip(files, (["data"], versioned_outputs(run))):
        if not (root / file).exists():
            _write_dvc_file(root, file, outputs)
    _checked("dvc", ["commit", "--force", "--quiet", *files], root)
    return files


# Seen with Snakemake 9.27.1: one `--touch` pass may touch a dataset folder after the feature stores
# read from it (the preflight, an ancient() input of extraction, reads every dataset); a second pass
# then leaves nothing to do.
TOUCH_PASSES = 2


def restore(root: Path, configfile: Path = DEFAULT_CONFIG) -> None:
    """Pull the run's data and outputs and mark them up to date for Snakemake."""
    files = dvc_files(run_name(root / configfile))
    missing = [file for file in files if not (root / file).exists()]
    if missing:
        raise ReviewerError(f"{root}: no {', '.join(missing)}; this run was never recorded (`record`)")
    _checked("dvc", ["pull", "--quiet", *files], root)
    for _ in range(TOUCH_PASSES):
        _checked("snakemake", ["--touch", "--cores", "1", "--configfile", str(configfile)], root)
        pending = pending_jobs_report(root, configfile)
        if pending is None:
            return
    raise ReviewerError(f"{root}: jobs would still run after the pull:\n{pending[-3000:]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imagekv.reviewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["record", "restore"])
    parser.add_argument("--configfile", type=Path, default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if args.command == "record":
            files = record(root, args.configfile)
            print(f"recorded; now: git add {' '.join(files)} && git commit && dvc push")
        else:
            restore(root, args.configfile)
            print("restored; `snakemake --cores all` has nothing to do")
    except ReviewerError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
