"""The dependency direction of docs/design: recipes -> stage packages -> data, models, config; the data loader and the
PPO math import no trainer."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "rlhf_recipes"
STAGE_PACKAGES = ("sft", "reward", "ppo", "online", "dpo", "feedback")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the rlhf_recipes modules (and top-level third-party packages) a file imports."""
    package = ".".join(("rlhf_recipes", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_imported_modules_resolves_relative_imports(tmp_path):
    # The helper the rules below rest on: a relative import inside data/ is resolved to its absolute name.
    modules = imported_modules(PACKAGE / "data" / "formats.py")
    assert "rlhf_recipes.config" in modules and "rlhf_recipes.data.reading" in modules


@pytest.mark.parametrize("path", sorted((PACKAGE / "data").glob("*.py")), ids=lambda p: p.name)
def test_data_package_imports_no_stage_or_trainer(path):
    for module in imported_modules(path):
        assert not any(module.startswith(f"rlhf_recipes.{stage}") for stage in STAGE_PACKAGES), (path, module)
        assert not module.startswith("trl"), (path, module)
        assert module not in ("transformers.Trainer",), (path, module)


def test_ppo_core_imports_torch_only():
    third_party = {m.split(".")[0] for m in imported_modules(PACKAGE / "ppo" / "core.py")}
    assert third_party <= {"torch", "__future__", "math", "dataclasses", "typing", "collections"}, third_party


def test_stages_do_not_import_each_other():
    stages = ("sft", "reward", "ppo", "online", "dpo")
    for stage in stages:
        paths = [PACKAGE / f"{stage}.py"] if (PACKAGE / f"{stage}.py").exists() else list((PACKAGE / stage).glob("*.py"))
        assert paths, stage
        for path in paths:
            for other in set(stages) - {stage}:
                assert not any(m.startswith(f"rlhf_recipes.{other}") for m in imported_modules(path)), (path, other)
