"""The README and docs/*.md cannot drift from the code: links, named files, make targets, commands and their flags.

Every page is read: README.md and whatever docs/*.md holds (a new page is checked as soon as it exists). A command
is a line of a ```bash block; a `make` command is expanded with `make -n`, so the scripts, configs and flags it
reaches are checked as well. Flags are checked against the `--help` of the script or module they go to (a recipe's
`--help-all`). The cheap commands of RUN_FOR_REAL run for real on a tiny fixture.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAKEFILE = (REPO / "Makefile").read_text()
# The first word of a documented command: `make`, the venv's own executables, or tools a user has outside it.
COMMAND_STARTS = ("make", ".venv/bin/python", ".venv/bin/accelerate", "sbatch", "source")
# Modules whose flags are their own business (pytest's options are not ours to check).
UNCHECKED_MODULES = {"pytest"}


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def commands(page: Path) -> list[list[str]]:
    """The commands of a page's ```bash blocks, as argv lists (continuations joined, comments dropped)."""
    out = []
    for block in fenced_blocks(page.read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


def code_text(page: Path) -> str:
    """What a page shows as code: its `spans` and fenced blocks."""
    text = page.read_text()
    return "\n".join(re.findall(r"`([^`\n]+)`", text)) + "\n" + "\n".join(fenced_blocks(text, r"\w*"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    return {slug(m) for m in re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)}


def make_targets() -> set[str]:
    targets = set()
    for names in re.findall(r"^([\w][\w\- ]*):(?!=)", MAKEFILE, flags=re.MULTILINE):
        targets.update(names.split())
    return targets


def make_variables() -> set[str]:
    return set(re.findall(r"^\s*(?:ifeq|ifneq)?\s*([A-Z_]+)\s*[?:+]?=", MAKEFILE, flags=re.MULTILINE)) | set(
        re.findall(r"\$\(([A-Z_]+)\)", MAKEFILE))


def split_commands(argv: list[str]) -> list[list[str]]:
    """`a && b || c ; d` -> [a, b, c, d]."""
    out, current = [], []
    for token in argv:
        if token in ("&&", "||", ";", "|"):
            out.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in out + [current] if c]


def without_env(argv: list[str]) -> list[str]:
    while argv and re.match(r"^[A-Z_]+=", argv[0]):
        argv = argv[1:]
    return argv


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_and_images_resolve(page):
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with the anchor #{anchor}")
    assert not problems, f"{page_id(page)}: " + "; ".join(problems)


def repo_paths(text: str) -> set[str]:
    """Repository paths named in `code` spans and code blocks: words whose first part is a top-level entry."""
    top = {p.name for p in REPO.iterdir() if not p.name.startswith(".")} - {"runs"}
    found = set()
    for word in re.findall(r"[\w.{},*/-]+", text):
        word = word.rstrip(".,:")
        if "/" not in word and word not in ("Makefile", "pyproject.toml", "constraints.txt"):
            continue
        if word.split("/")[0] not in top:
            continue
        found.update(expand_braces(word))
    return found


def expand_braces(word: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", word)
    if not match:
        return [word]
    return [w for part in match.group(1).split(",")
            for w in expand_braces(word[:match.start()] + part + word[match.end():])]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_named_repository_files_exist(page):
    missing = sorted(p for p in repo_paths(code_text(page))
                     if not (list(REPO.glob(p)) if "*" in p else (REPO / p.rstrip("/")).exists()))
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_make_targets_and_variables_exist(page):
    targets, variables = make_targets(), make_variables()
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", code_text(page)))
    assert named - targets == set(), f"{page_id(page)} names make targets the Makefile lacks: {named - targets}"
    for argv in commands(page):
        if argv[0] == "make":
            unknown = [a.split("=")[0] for a in argv[1:] if "=" in a and a.split("=")[0] not in variables]
            assert not unknown, f"{page_id(page)}: `{shlex.join(argv)}` sets unknown Makefile variables {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_commands_use_the_venv_or_make(page):
    bad = [shlex.join(a) for a in commands(page) if without_env(a) and without_env(a)[0] not in COMMAND_STARTS]
    assert not bad, (f"{page_id(page)}: commands that need an activated venv or an unknown tool: {bad}; write them "
                     f"as `make ...` or `.venv/bin/python ...`")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_snippets_compile_with_their_imports(page):
    for snippet in fenced_blocks(page.read_text(), "python"):
        compile(snippet, f"{page_id(page)} snippet", "exec")
        ruff = Path(sys.executable).parent / "ruff"
        result = subprocess.run([str(ruff), "check", "--select", "F821,F401", "--stdin-filename", "snippet.py", "-"],
                                input=snippet, capture_output=True, text=True)
        assert result.returncode == 0, f"{page_id(page)}: a Python snippet uses undefined names:\n{result.stdout}"


# --- commands: expand `make`, find the Python entry, check its flags against its help --------------------------------

def make_expansion(argv: list[str]) -> list[list[str]]:
    """The commands `make` would run for a documented `make ...` line (sub-makes expanded too)."""
    result = subprocess.run(["make", "-n", "--no-print-directory", *argv[1:]], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"`{shlex.join(argv)}` does not expand: {result.stderr}"
    out = []
    for line in result.stdout.replace("\\\n", " ").splitlines():
        try:
            out += split_commands(shlex.split(line, comments=True))
        except ValueError:
            continue
    return out


def python_entry(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, target, its arguments) of a Python command: ("script", path, args) or ("module", name, args)."""
    argv = without_env(argv)
    if not argv:
        return None
    exe = Path(argv[0]).name
    # `accelerate launch`, or the Makefile's quiet wrapper of it (`python -m rlhf_recipes.launch`), then the script.
    launcher = 2 if exe == "accelerate" and argv[1:2] == ["launch"] else \
        3 if exe.startswith("python") and argv[1:3] == ["-m", "rlhf_recipes.launch"] else 0
    if launcher:
        rest = argv[launcher:]
        for i, token in enumerate(rest):
            if token.endswith(".py"):
                config = rest[rest.index("--config_file") + 1] if "--config_file" in rest[:i] else None
                assert config is None or (REPO / config).is_file(), f"no accelerate config {config}"
                return "script", token, rest[i + 1:]
        return None
    if exe.startswith("python"):
        if argv[1:2] == ["-m"]:
            return "module", argv[2], argv[3:]
        if len(argv) > 1 and argv[1].endswith(".py"):
            return "script", argv[1], argv[2:]
    return None


_HELP: dict[tuple[str, str], str] = {}


def run_in_process(kind: str, target: str, args: list[str]) -> str:
    """Run a script or module in this process with `args`, as `__main__`; its stdout (SystemExit is caught)."""
    stdout = io.StringIO()
    old_argv = sys.argv
    sys.argv = [target, *args]
    try:
        with contextlib.redirect_stdout(stdout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(SystemExit):
                if kind == "module":
                    runpy.run_module(target, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(str(REPO / target), run_name="__main__")
    finally:
        sys.argv = old_argv
    return stdout.getvalue()


def help_text(kind: str, target: str) -> str:
    if (kind, target) not in _HELP:
        is_recipe = kind == "script" and target.startswith("recipes/")
        _HELP[kind, target] = run_in_process(kind, target, ["--help-all" if is_recipe else "--help"])
    return _HELP[kind, target]


def check_python_command(kind: str, target: str, args: list[str], where: str) -> list[str]:
    problems = []
    if kind == "script" and not (REPO / target).is_file():
        return [f"{where}: no script {target}"]
    if kind == "module":
        if importlib.util.find_spec(target) is None:
            return [f"{where}: no module {target}"]
        if target in UNCHECKED_MODULES:
            return []
    if "--config" in args and not (REPO / args[args.index("--config") + 1]).is_file():
        problems.append(f"{where}: no config file {args[args.index('--config') + 1]}")
    flags = {a.split("=")[0] for a in args if a.startswith("--")}
    if kind == "script" and target.startswith("recipes/"):
        flags.discard("--config")  # every recipe takes it (TrlParser's own), checked above
    if not flags:
        return problems
    text = help_text(kind, target)
    assert text.strip(), f"{target} --help printed nothing"
    for flag in sorted(flags):
        if not re.search(re.escape(flag) + r"(?![\w-])", text):
            problems.append(f"{where}: {target} has no flag {flag}")
    return problems


def documented_python_commands() -> list[tuple[str, str, str, list[str]]]:
    """(where, kind, target, args) for every Python command the pages run, `make` lines expanded."""
    out = []
    for page in PAGES:
        for argv in commands(page):
            where = f"{page_id(page)}: `{shlex.join(argv)}`"
            argv = without_env(argv)
            if argv and argv[0] == "make":
                expanded = make_expansion(argv)
            elif argv and argv[0] == "sbatch":
                expanded = []
                assert all((REPO / a).is_file() for a in argv[1:] if not a.startswith("-")), where
            else:
                expanded = [argv]
            for command in expanded:
                entry = python_entry(command)
                if entry:
                    out.append((where, *entry))
    return out


@pytest.mark.slow  # imports every recipe and tool once for its --help (about 45 s on 2 busy cores)
def test_every_documented_command_reaches_existing_scripts_configs_and_flags():
    problems = []
    for where, kind, target, args in documented_python_commands():
        problems += check_python_command(kind, target, args, where)
    assert not problems, "\n".join(problems)


def test_the_dry_run_catches_a_missing_config():
    """The check above would have caught `make eval MODEL=x` pointing at a recipe YAML that does not exist."""
    (kind, target, args), = [python_entry(c) for c in make_expansion(["make", "eval", "MODEL=no-such-model"])
                             if python_entry(c)]
    assert check_python_command(kind, target, args, "x") == ["x: no config file recipes/no-such-model/evaluate.yaml"]
    assert check_python_command("module", "rlhf_recipes.plots", ["runs/x", "--no_such_flag"], "y") == [
        "y: rlhf_recipes.plots has no flag --no_such_flag"]


# --- the cheap commands, for real, on a tiny fixture ------------------------------------------------------------------

def _ppo_run(root: Path, args: list[str]) -> None:
    run = root / "runs/demo/ppo"
    run.mkdir(parents=True)
    log = [{"episode": 8 * i, "step": i, "objective/scores": 0.1 * i, "objective/kl": 0.5 * i,
            "objective/rlhf_reward": 0.1 * i - 0.05 * i, "objective/kl_coef": 0.05} for i in range(1, 4)]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": log}))


def _reward_run(root: Path, args: list[str]) -> None:
    run = root / "runs/demo/reward"
    run.mkdir(parents=True)
    log = [{"step": i, "loss": 1.0 / i, "eval_loss": 1.2 / i, "eval_accuracy": 0.5 + 0.1 * i} for i in range(1, 4)]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": log}))


def _samples(root: Path, args: list[str]) -> None:
    samples = root / args[args.index("--samples_file") + 1]
    samples.parent.mkdir(parents=True)
    rows = [{"id": f"p{i}", "prompt": f"The film number {i} was", "responses": [" a joy.", " dull and flat.", " fine."],
             "rm_scores": None, "policy": "fixture"} for i in range(3)]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _finished_demo(root: Path, args: list[str]) -> None:
    for stage, metrics in {"sft": {"eval_loss_before": 1.6, "eval_loss_after": 1.3},
                           "reward": {"eval_accuracy": 0.9, "reward_bias": -2.0}}.items():
        (root / "runs/demo" / stage).mkdir(parents=True)
        (root / "runs/demo" / stage / "stage_metrics.json").write_text(json.dumps(metrics))


# (kind, target, first arguments as documented) -> (fixture builder, files the run must write, text it must print)
RUN_FOR_REAL = {
    ("module", "rlhf_recipes.plots", ("runs/demo/ppo",)): (_ppo_run, ["runs/demo/ppo/ppo_kl.png"], ""),
    ("module", "rlhf_recipes.plots", ("runs/demo/reward",)): (_reward_run, ["runs/demo/reward/accuracy.png"], ""),
    ("module", "rlhf_recipes.feedback.simulated", ("--samples_file",)): (
        _samples, [], "stored 3 rankings"),
    ("module", "rlhf_recipes.demo.summary", ("runs/demo",)): (_finished_demo, [], "| reward | held-out accuracy | 0.9 |"),
}


def test_cheap_commands_run_for_real(tmp_path, monkeypatch):
    found = {}
    for where, kind, target, args in documented_python_commands():
        for (k, t, first), spec in RUN_FOR_REAL.items():
            if (k, t) == (kind, target) and tuple(args[:len(first)]) == first and not any(
                    a in ("--check", "--output", "--readme") for a in args):
                found[(k, t, first)] = (where, args, spec)
    assert set(found) == set(RUN_FOR_REAL), f"not documented any more: {set(RUN_FOR_REAL) - set(found)}"
    for i, ((kind, target, _), (where, args, (fixture, written, printed))) in enumerate(sorted(found.items())):
        root = tmp_path / str(i)
        root.mkdir()
        fixture(root, args)
        monkeypatch.chdir(root)
        out = run_in_process(kind, target, args)
        assert all((root / f).is_file() for f in written), f"{where} did not write {written}: {out}"
        assert printed in out, f"{where} printed:\n{out}"


def test_readme_demo_block_is_the_short_form_of_the_committed_results():
    from rlhf_recipes.demo import summary

    committed = (REPO / "results/demo.md").read_text()
    assert summary.check_readme(REPO / "README.md", "results/demo.md", committed) == []


def test_fields_reference_is_current():
    spec = importlib.util.spec_from_file_location("docs_fields", REPO / "tools/docs_fields.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "docs/stages.md").read_text()
    block = text[text.index(module.BEGIN) + len(module.BEGIN) + 1: text.index(module.END)]
    assert block == module.fields_markdown(), "docs/stages.md's fields reference is out of date: run `make docs`"


def test_readme_is_a_short_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in text, f"the README's map of docs/ does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_internal_process_words(page):
    text = page.read_text()
    found = re.findall(r"\b(?:[Ii]ssues? \d+|where the issues? w(?:as|ere) silent)\b", text)
    assert not found, f"{page_id(page)} speaks of {found}"
