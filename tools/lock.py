"""Write constraints.txt: the exact version of every package that `pip install -e ".[EXTRAS]"` pulls in.

    python tools/lock.py dev,deepspeed,quantization > constraints.txt      (what `make lock` runs)

The versions are read from the current environment, not resolved anew, so the file records the environment the
tests and the README's numbers were produced in. Only the dependency closure of rlhf-recipes with those extras is
written (a package installed by hand for an experiment is left out), sorted by name, so that the same environment
always gives the same file. torch is left out with everything only it needs: `make install` keeps the torch already
installed (a CUDA build, say) and installs `TORCH` otherwise.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "rlhf-recipes"
UNPINNED = {"torch", PROJECT}
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _project_requirements() -> list[str]:
    """The project's requirements as Requires-Dist lines, from pyproject.toml itself (an installed copy of the
    metadata can be older than the file)."""
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = list(project.get("dependencies", []))
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for requirement in requirements:
            spec, _, marker = requirement.partition(";")
            lines.append(f"{spec}; ({marker}) and extra == '{extra}'" if marker else f"{spec}; extra == '{extra}'")
    return lines


def closure(extras: list[str]) -> dict[str, str]:
    """Canonical name -> installed version, for every package reached from PROJECT[extras]."""
    environment = default_environment()
    pinned: dict[str, str] = {}
    todo = [(PROJECT, tuple(extras))]
    seen: set[tuple[str, str]] = set()
    while todo:
        name, wanted_extras = todo.pop()
        for extra in wanted_extras or ("",):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            if name == PROJECT:
                requires = _project_requirements()
            else:
                try:
                    dist = metadata.distribution(name)
                except metadata.PackageNotFoundError as err:
                    raise SystemExit(f"{name} is required but not installed: run `make install` first.") from err
                requires = dist.requires or []
                if canonicalize_name(name) not in UNPINNED:
                    pinned[canonicalize_name(name)] = dist.version
            for line in requires:
                req = Requirement(line)
                if req.marker and not req.marker.evaluate({**environment, "extra": extra}):
                    continue
                if canonicalize_name(req.name) in UNPINNED:
                    continue
                todo.append((req.name, tuple(req.extras)))
    return pinned


def main(argv: list[str]) -> None:
    extras = [e for e in (argv[0] if argv else "").split(",") if e]
    lines = [f"# Written by `make lock` (tools/lock.py) from the environment the tests passed in; extras: "
             f"{','.join(extras) or 'none'}.",
             f"# Python {sys.version_info.major}.{sys.version_info.minor}; torch is not pinned here (see Makefile)."]
    lines += [f"{name}=={version}" for name, version in sorted(closure(extras).items())]
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
