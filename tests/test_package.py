"""The package boundary: one installed name (`cogvlm`), no sys.path edits, console scripts, and scripts that run
the same code whatever folder they are started from."""
import ast
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import cogvlm

REPO_ROOT = Path(__file__).resolve().parent.parent
CAPTCHA = REPO_ROOT / "checkpoints" / "captcha-tiny"
ONE_SHOT = ["--image", str(CAPTCHA / "examples" / "3640.png"), "--query", "What text is written in the image?"]
DISTRIBUTION = "cogvlm-sat"


def project_python_files():
    skipped = {".git", "build", ".pytest_cache", ".hypothesis"}
    return [p for p in REPO_ROOT.rglob("*.py") if not skipped & set(p.relative_to(REPO_ROOT).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)]


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that change sys.path: sys.path.insert/append/extend/..., or assignment to sys.path."""
    lines = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if isinstance(t, ast.Attribute)), None)
        if (isinstance(target, ast.Attribute) and target.attr == "path"
                and isinstance(target.value, ast.Name) and target.value.id == "sys"):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_edits_sys_path():
    offenders = {str(p.relative_to(REPO_ROOT)): lines for p in project_python_files()
                 if (lines := sys_path_edits(ast.parse(p.read_text(), filename=str(p))))}
    assert offenders == {}


def test_the_sys_path_check_finds_an_edit():
    assert sys_path_edits(ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path = []\n")) == [2, 3]


def test_the_package_is_this_checkout_and_installs_no_top_level_utils_or_models(tmp_path):
    assert cogvlm.PACKAGE_ROOT == REPO_ROOT
    # From a neutral folder, the names the published repository used as top-level packages are not ours.
    probe = ("import importlib.util as u; "
             "print([(n, s.origin) for n in ('utils', 'models', 'basic_demo') if (s := u.find_spec(n))])")
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(REPO_ROOT) not in found.stdout


def foreign_packages(folder: Path) -> Path:
    """A project folder of a user's own with top-level `utils`, `models` and `cogvlm` folders that must never be
    imported by this package's scripts."""
    for name in ("utils", "models"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('the foreign {name} package was imported')\n")
    return folder


def test_a_folder_with_its_own_utils_and_models_does_not_change_what_runs(tmp_path):
    folder = foreign_packages(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "basic_demo" / "cli_demo_sat.py"), *ONE_SHOT],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "3640"
    assert "foreign" not in result.stderr


def console_scripts():
    return {ep.name: ep for ep in metadata.distribution(DISTRIBUTION).entry_points if ep.group == "console_scripts"}


def test_console_scripts_point_at_callable_entry_points():
    scripts = console_scripts()
    assert {"cogvlm-cli", "cogvlm-merge-model", "cogvlm-convert-hf-checkpoint", "cogvlm-evaluate",
            "cogvlm-split-dataset"} <= set(scripts)
    for ep in scripts.values():
        assert ep.value.startswith("cogvlm.")
        assert callable(ep.load()), ep


@pytest.mark.slow
def test_the_chat_console_script_answers(tmp_path):
    executable = shutil.which("cogvlm-cli")
    assert executable, "the console script cogvlm-cli is not installed (pip install -e .)"
    result = subprocess.run([executable, *ONE_SHOT], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "3640"


def make_checkout(root: Path) -> Path:
    (root / "basic_demo").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "setup.py").write_text("")
    return root / "basic_demo" / "script.py"


def test_a_script_of_another_checkout_is_warned_about(tmp_path, capsys):
    script = make_checkout(tmp_path / "other-clone")
    cogvlm.warn_if_other_checkout(str(script))
    warning = capsys.readouterr().err
    assert str(REPO_ROOT) in warning and f"pip install -e {tmp_path / 'other-clone'}" in warning


def test_a_script_of_this_checkout_is_not_warned_about(capsys):
    cogvlm.warn_if_other_checkout(str(REPO_ROOT / "basic_demo" / "cli_demo_sat.py"))
    assert capsys.readouterr().err == ""


def test_exact_pins_live_in_the_constraints_file_and_setup_keeps_ranges():
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    pinned = {line.split("==")[0].lower() for line in constraints.splitlines() if "==" in line}
    assert {"torch", "swissarmytransformer", "deepspeed"} <= pinned
    requirements = metadata.requires(DISTRIBUTION)
    assert not [r for r in requirements if "==" in r.split(";")[0]]
    assert "constraints.txt" in (REPO_ROOT / ".ci" / "run").read_text()


def test_setup_lists_every_subpackage():
    """A folder with an __init__.py that setup.py leaves out is missing from a regular (non-editable) install."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    listed = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "SUBPACKAGES")
    skipped = {"tests", "checkpoints", "build", ".git"}
    found = {".".join(init.parent.relative_to(REPO_ROOT).parts) for init in REPO_ROOT.rglob("__init__.py")
             if init.parent != REPO_ROOT and not skipped & set(init.relative_to(REPO_ROOT).parts)
             and not any(part.endswith(".egg-info") for part in init.parts)}
    assert found == set(listed)
