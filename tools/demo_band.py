"""The band the demo's numbers span: `make demo-band`.

    python tools/demo_band.py                                   # seeds 42 43 44 + seed 42 on AVX2 kernels
    python tools/demo_band.py --seeds 42 43 --isa none          # fewer variants, no forced ISA
    python tools/demo_band.py --summary amd=path/to/summary.md  # add a run made elsewhere to the band

Each variant is `make demo` in its own folder (WORK_DIR/<variant>/, whose runs/demo the recipes write to): the
committed demo at seed 42, the same demo with the training seed (SFT, sampling, reward model, PPO) set to each other
seed, and seed 42 with torch's CPU kernels forced to another instruction set (ATEN_CPU_CAPABILITY, as
`make demo-avx2-results`), which changes every sum's rounding as another CPU does. A variant whose summary already
exists is reused (--rerun runs it again). The spread of every number of the summaries (min, max, mean, and each
variant's value) goes to OUTPUT.json, which `make check-demo` reads in another environment, and OUTPUT.md, which
shows the committed value beside its band and the range a run elsewhere is accepted in.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rlhf_recipes.demo.summary import BAND_MARGIN, accepted_range, measure_band, numbers  # noqa: E402

COMMITTED_SEED = 42  # the seed of the committed results/demo.md (the recipes' own seeds)
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
           "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
           "default": {"ATEN_CPU_CAPABILITY": "default"}}


def variants(seeds: list[int], isa: str) -> dict[str, tuple[int, dict[str, str]]]:
    found = {f"seed{seed}": (seed, {}) for seed in seeds}
    if isa != "none":
        found[f"{isa}-seed{COMMITTED_SEED}"] = (COMMITTED_SEED, ISA_ENV[isa])
    return found


def run_variant(work: Path, name: str, seed: int, env_extra: dict[str, str], rerun: bool) -> Path:
    """`make demo` for one variant in WORK/<name>; returns its summary.md."""
    folder = work / name
    summary = folder / "runs" / "demo" / "summary.md"
    if summary.is_file() and not rerun:
        print(f"{name}: reusing {summary}", flush=True)
        return summary
    shutil.rmtree(folder / "runs", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    # The recipes write to runs/demo relative to the folder make runs in: each variant gets its own.
    for item in ("Makefile", "recipes", "accelerate_configs", "pyproject.toml", "constraints.txt"):
        target = folder / item
        if target.is_dir():
            shutil.rmtree(target)
        (shutil.copytree if (REPO / item).is_dir() else shutil.copy2)(REPO / item, target)
    venv = folder / ".venv"
    if not venv.exists():
        venv.symlink_to((REPO / ".venv").resolve())
    # Seed 42 is the committed demo (each recipe's own seeds, sampling's 0); another seed replaces all of them.
    command = ["make", "demo"] + ([] if seed == COMMITTED_SEED else [f"ARGS=--seed {seed}"])
    start = time.time()
    with open(folder / "demo.log", "w") as log:
        # A fresh make: no variables of the make that may have started this one (ARGS, DEMO_DIR, ...).
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        done = subprocess.run(command, cwd=folder, env={**env, **env_extra}, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not summary.is_file():
        raise SystemExit(f"{name}: `{' '.join(command)}` failed (exit {done.returncode}); see {folder}/demo.log")
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)
    return summary


def write_band(output: Path, band: dict, committed: Path, command: str) -> None:
    band = {"written_by": command, **band}
    output.with_suffix(".json").write_text(json.dumps(band, indent=1) + "\n")
    committed_numbers = numbers(committed.read_text()) if committed.is_file() else {}
    kernels = ", ".join(f"{name}: {v.get('torch CPU kernels', '?')} kernels" for name, v in band["variants"].items())
    lines = [f"Written by `{command}`: the demo's summary numbers over {len(band['variants'])} runs ({kernels}).",
             "",
             f"In the environment of {committed.name} `make check-demo` wants every number exactly; anywhere else each "
             f"must lie in *accepted*: the band widened by {BAND_MARGIN['width']:g} x its width on each side, plus "
             f"{BAND_MARGIN['rtol']:g} x the value and {BAND_MARGIN['atol']:g} (`BAND_MARGIN` in "
             "rlhf_recipes/demo/summary.py); the counts the configuration fixes (`EXACT_NUMBERS`) must be equal.",
             "",
             "| number | committed | min | mean | max | accepted elsewhere |",
             "| --- | --- | --- | --- | --- | --- |"]
    for key, entry in band["numbers"].items():
        low, high = accepted_range(entry, key=key)
        committed_value = f"{committed_numbers[key]:g}" if key in committed_numbers else "-"
        lines.append(f"| {key} | {committed_value} | {entry['min']:.6g} | {entry['mean']:.6g} | {entry['max']:.6g} | "
                     f"{low:.6g} .. {high:.6g} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--isa", default="avx2", choices=[*ISA_ENV, "none"],
                        help=f"also run seed {COMMITTED_SEED} with torch's kernels forced to this ISA")
    parser.add_argument("--work_dir", default="runs/demo-band", help="one folder per variant")
    parser.add_argument("--output", default="results/demo-band", help="writes OUTPUT.json and OUTPUT.md")
    parser.add_argument("--committed", default="results/demo.md", help="the committed summary shown beside the band")
    parser.add_argument("--summary", action="append", default=[], metavar="NAME=PATH",
                        help="add an existing summary.md (e.g. from another machine) as a variant")
    parser.add_argument("--jobs", type=int, default=1, help="variants run at once (each is one process)")
    parser.add_argument("--rerun", action="store_true", help="run variants whose summary already exists again")
    parser.add_argument("--finished_only", action="store_true",
                        help="run nothing: the band of the variants already finished in WORK_DIR (and --summary)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir).resolve()
    todo = variants(args.seeds, args.isa)
    if args.finished_only:
        done = {name: work / name / "runs/demo/summary.md" for name in todo}
        for name in [name for name, path in done.items() if not path.is_file()]:
            print(f"{name}: not finished in {work / name}, left out")
        summaries = {name: path.read_text() for name, path in done.items() if path.is_file()}
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {name: pool.submit(run_variant, work, name, seed, env, args.rerun)
                       for name, (seed, env) in todo.items()}
            summaries = {name: future.result().read_text() for name, future in futures.items()}
    for item in args.summary:
        name, _, path = item.partition("=")
        summaries[name] = Path(path).read_text()
    command = "python tools/demo_band.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_band(Path(args.output), measure_band(summaries), Path(args.committed), command.strip())
    print(f"wrote {args.output}.json and {args.output}.md from {len(summaries)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
