"""Installs: the wheel's contents and metadata, ranges that hold the tested versions, the wheel installed with
the resolver's newest allowed versions, a base install that needs no torch and no onnx, a runtime that needs
only onnxruntime and numpy, and missing extras in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import numpy as np
import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXPORT = ("torch", "onnxscript", "safetensors")
#: What the base install lacks: the export extra, every onnxruntime flavour and onnx (it has click and numpy).
BASE = (*EXPORT, "onnxruntime", "onnx")
#: What the runtime extra lacks: onnxruntime and numpy are all rnnexport.runtime imports (click: the CLI's).
RUNTIME = (*EXPORT, "onnx")
ORT_HINT = ("pip install 'rnnexport[onnxruntime]' (the CPU package) or 'rnnexport[onnxruntime-gpu]' "
            "(CUDA and TensorRT), never both")
#: Blocks imports as if the packages were not installed (raises ModuleNotFoundError, as a missing one does).
BLOCKER = """
import importlib.abc, os, sys
_BLOCKED = tuple(filter(None, os.environ.get("RNNEXPORT_TEST_BLOCK", "").split(",")))
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
if _BLOCKED:
    sys.meta_path.insert(0, _Block())
"""


def test_every_package_folder_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rnnexport").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert all((ROOT / folder).is_dir() for folder in mapped.values())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel .`` of a copy of the source tree (setuptools builds in the tree it is given)."""
    import shutil

    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    for name in ("rnnexport", "models", "docs"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(tree)], check=True, capture_output=True, timeout=600)
    return next(out.glob("rnnexport-*.whl"))


def test_wheel_ships_models_license_types_and_schema(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    models = sorted(p.parent.name for p in (ROOT / "models").glob("*/card.json"))
    for model in models:
        assert {f"rnnexport/models/{model}/card.json", f"rnnexport/models/{model}/weights.safetensors"} <= names
    schemas = {f"rnnexport/schemas/{p.name}" for p in (ROOT / "docs").glob("*.schema.json")}
    assert "rnnexport/py.typed" in names and len(schemas) >= 6 and schemas <= names, sorted(schemas - names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    js = {f"rnnexport/engines/js/{p.name}" for p in (ROOT / "rnnexport/engines/js").iterdir() if p.is_file()}
    assert "rnnexport/engines/js/engine.js" in js and js <= names, sorted(js - names)  # verify --engines node, browser
    assert not [n for n in names if "node_modules" in n]
    assert wheel.stat().st_size < 4 * 2**20


def test_convert_of_a_shipped_model_works_from_the_wheel(wheel, tmp_path):
    """The wheel's own package (not this checkout) converts lstm-charlm from its packaged models."""
    installed, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    zipfile.ZipFile(wheel).extractall(installed)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import rnnexport, rnnexport.source.sources as s; "
            "assert rnnexport.__file__.startswith(sys.argv[1]), rnnexport.__file__; "
            "print(s.models_dir()); from rnnexport.cli import main; main(['convert', 'lstm-charlm', '-o', 'lm.onnx'])")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RNNEXPORT_MODELS")}
    run = subprocess.run([sys.executable, "-c", code, str(installed)], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0] == str(installed / "rnnexport" / "models")
    info = rnnexport_info(work / "lm.onnx")
    assert info.origin == {"model": "lstm-charlm"}


def rnnexport_info(path: Path):
    import onnx

    from rnnexport.core.contract import GraphInfo

    info = GraphInfo.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    assert info is not None
    return info


def test_base_install_needs_neither_torch_nor_an_onnxruntime_flavour(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta = Parser().parsestr(zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode())
    requires = meta.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in base if r.split()[0].split(">")[0].split("<")[0] in (*EXPORT, "onnxruntime",
                                                                              "onnxruntime-gpu")], base
    libraries = [r.split(";")[0] for r in requires if not r.startswith("rnnexport")]  # test names other extras
    assert all(any(op in r for op in (">=", "<", "~=")) and "==" not in r for r in libraries), libraries
    assert meta["License-Expression"] == "MIT"
    extras = set(meta.get_all("Provides-Extra"))
    assert {"export", "onnxruntime", "onnxruntime-gpu", "test"} <= extras


def _pins() -> dict[str, str]:
    return {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1].strip()
            for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#")}


def _requirements() -> list[str]:
    named = [*PYPROJECT["project"]["dependencies"]]
    for deps in PYPROJECT["project"]["optional-dependencies"].values():
        named += [d for d in deps if not d.startswith("rnnexport")]
    return named


def test_constraints_pin_torch_and_every_library_dependency():
    pins = _pins()
    assert pins["torch"] == "2.13.0"  # an unpinned torch pulls a multi-GB CUDA build
    for requirement in _requirements():
        name = requirement.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower().replace("_", "-")
        assert name in pins, f"{name} has no exact pin in constraints.txt"


def test_every_range_is_the_tested_minor_release():
    """Each range holds its pin and no other minor release: the newest allowed is the tested one up to patches."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = _pins()
    for text in _requirements():
        requirement = Requirement(text)
        pin = Version(pins[requirement.name.lower().replace("_", "-")])
        major, minor = pin.release[:2]
        assert requirement.specifier == f">={major}.{minor},<{major}.{minor + 1}", \
            f"{text}: expected >={major}.{minor},<{major}.{minor + 1} around the tested {pin}"
        assert requirement.specifier.contains(pin)


#: What pip prints when it cannot reach the package index at all (not a resolution failure).
_OFFLINE = ("NewConnectionError", "Max retries exceeded", "Network is unreachable", "Temporary failure in name")


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["manylinux_2_28_aarch64", "macosx_14_0_arm64"])
def test_base_install_resolves_on_arm_boards_and_macs(wheel, tmp_path, platform):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
         "--platform", platform, "--python-version", "3.11", "--target", str(tmp_path / "t"),
         "-c", str(ROOT / "constraints.txt"), f"{wheel}[onnxruntime]"],
        capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and any(sign in proc.stdout + proc.stderr for sign in _OFFLINE):
        pytest.skip("the package index is not reachable, so wheels for another platform cannot be resolved")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    would = proc.stdout.rsplit("Would install", 1)[-1]
    assert "onnxruntime-1." in would and "torch" not in would and "onnxruntime-gpu" not in would


@pytest.fixture(scope="module")
def edge(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with ``wheel[onnxruntime]`` as pip resolves it today (no constraints)."""
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "--only-binary=:all:", f"{wheel}[onnxruntime]"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and any(sign in proc.stdout + proc.stderr for sign in _OFFLINE):
        pytest.skip("the package index is not reachable, so the newest allowed versions cannot be installed")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return venv


@pytest.mark.slow
def test_the_wheel_with_the_newest_allowed_versions_runs_the_edge_commands(edge, packaged):
    """pip's own pick within the ranges: the tested minor releases, and run, inspect, verify BUNDLE work."""
    python, script = edge / "bin" / "python", edge / "bin" / "rnnexport"
    listed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "list", "--format", "json"],
                            capture_output=True, text=True, check=True, timeout=300).stdout
    import json

    installed = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed)}
    assert not {"torch", "onnxruntime-gpu"} & set(installed), installed
    pins = _pins()
    for name in ("onnxruntime", "onnx", "numpy", "click", "ml-dtypes"):
        assert installed[name].split(".")[:2] == pins[name].split(".")[:2], (name, installed[name], pins[name])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RNNEXPORT_MODELS")}
    for args, says in ((["run", "b.zip", "-i", "x.npy", "-o", "edge-y.npy"], "ran 3 steps x 1 stream(s)"),
                       (["inspect", "b.zip"], "bundle rnnexport.bundle/2"), (["verify", "b.zip"], "PASS")):
        proc = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=packaged.parent, env=env,
                              timeout=300)
        assert proc.returncode == 0 and says in proc.stdout, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    where = subprocess.run([str(python), "-c", "import rnnexport; print(rnnexport.__file__)"], capture_output=True,
                           text=True, env=env, cwd=packaged.parent, check=True).stdout
    assert where.startswith(str(edge)), where  # the wheel's package, not this checkout


def _blocked(tmp_path: Path, blocked: tuple[str, ...], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(BLOCKER)
    code = textwrap.dedent(f"""
        import sys
        sys.argv = ["rnnexport", *{args!r}]
        try:
            from rnnexport.cli import main
            main()
        finally:
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in {EXPORT!r})
            print("LOADED", loaded, file=sys.stderr)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]),
           "RNNEXPORT_TEST_BLOCK": ",".join(blocked), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def packaged(exports, tmp_path_factory) -> Path:
    """A zip bundle of seed_lstm (both graphs, fp16), x.npy and the step graph alone, in one folder."""
    from rnnexport.packaging import package

    folder = tmp_path_factory.mktemp("torchless")
    result = package(exports.export("seed_lstm").path, folder / "b", step_path=exports.export("seed_lstm", form="step").path,
                     variants=["fp16"], archive=True)
    np.save(folder / "x.npy", np.zeros((3, 1, 10), np.float32))
    shutil.copyfile(exports.export("seed_lstm", form="step").path, folder / "step.onnx")  # a graph on its own
    assert result.archive is not None
    return result.archive


@pytest.mark.parametrize("args", [["--help"], ["inspect", "b.zip"], ["verify", "b.zip"],
                                  ["run", "b.zip", "--input", "x.npy", "-o", "y.npy"]],
                         ids=["help", "inspect", "verify-bundle", "run"])
def test_torch_free_commands_run_without_torch(tmp_path, packaged, args):
    proc = _blocked(tmp_path, EXPORT, args, cwd=packaged.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stderr


@pytest.mark.parametrize(("blocked", "args", "says"), [
    (EXPORT, ["convert", "lstm"], "rnnexport convert needs torch, which is not installed: pip install 'rnnexport[export]'"),
    (EXPORT, ["package", "b.zip", "-o", "c"], "pip install 'rnnexport[export]'"),
    (("onnxruntime",), ["run", "b.zip", "--input", "x.npy"],
     "rnnexport run needs onnxruntime, which is not installed: pip install 'rnnexport[onnxruntime]'"),
    (BASE, ["run", "b.zip", "--input", "x.npy"], f"rnnexport run needs onnxruntime, which is not installed: {ORT_HINT}"),
    (BASE, ["verify", "b.zip"], "rnnexport verify needs onnx"),  # onnx or onnxruntime: both extras bring both
    (BASE, ["verify", "b.zip"], f", which is not installed: {ORT_HINT}"),
], ids=["convert", "package", "run-without-onnxruntime", "base-run", "base-verify-bundle", "base-verify-hint"])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, packaged, blocked, args, says):
    proc = _blocked(tmp_path, blocked, args, cwd=packaged.parent)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("LOADED")]
    assert proc.returncode == 2 and lines == [f"error: {lines[0][7:]}"] and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["verify", "--help"], ["run", "--help"], ["inspect", "--help"],
                                  ["convert", "--help"], ["package", "--help"], ["triton", "--help"]])
def test_the_base_install_gives_every_help(tmp_path, packaged, args):
    """Neither torch, onnx nor onnxruntime: every command's help."""
    proc = _blocked(tmp_path, BASE, args, cwd=packaged.parent)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Usage: rnnexport" in proc.stdout, proc.stdout


@pytest.mark.parametrize(("blocked", "args"), [(BASE, ["inspect", "b.zip"]), (RUNTIME, ["inspect", "b.zip"]),
                                               (RUNTIME, ["verify", "b.zip"])],
                         ids=["base-inspect", "runtime-inspect", "runtime-verify"])
def test_commands_that_read_graphs_name_the_extra_that_brings_onnx(tmp_path, packaged, blocked, args):
    proc = _blocked(tmp_path, blocked, args, cwd=packaged.parent)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("LOADED")]
    says = f"error: rnnexport {args[0]} needs onnx, which is not installed: {ORT_HINT}"
    assert proc.returncode == 2 and lines == [says], proc.stderr


def test_help_without_onnxruntime_names_the_extra(tmp_path, packaged):
    proc = _blocked(tmp_path, BASE, ["--help"], cwd=packaged.parent)
    assert proc.returncode == 0, proc.stderr
    assert "run      (needs pip install 'rnnexport[onnxruntime]')" in proc.stdout
    assert "verify   (needs pip install 'rnnexport[onnxruntime]')" in proc.stdout
    assert "inspect  (needs pip install 'rnnexport[onnxruntime]')" in proc.stdout
    proc = _blocked(tmp_path, EXPORT, ["--help"], cwd=packaged.parent)
    assert "inspect  Show the I/O contract" in proc.stdout, proc.stdout


def test_help_imports_no_onnx(tmp_path):
    """The command list is built without onnx (nor onnxruntime, torch): --help stays fast."""
    code = ("import sys; from rnnexport.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'torch', 'ml_dtypes')),"
            " file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stderr.strip() == "[]", proc.stderr


def test_the_runtime_and_run_need_only_onnxruntime_and_numpy(tmp_path, packaged):
    """What rnnexport[runtime] installs is enough: onnx, torch (and click, for the library) blocked.

    The library runs a bundle and a graph on its own; the command runs the bundle.
    """
    proc = _blocked(tmp_path, RUNTIME, ["run", "b.zip", "--input", "x.npy", "-o", "y.npy"], cwd=packaged.parent)
    assert proc.returncode == 0 and "LOADED []" in proc.stderr, proc.stderr[-3000:]
    hook = tmp_path / "hook"
    code = ("import numpy as np; from rnnexport.runtime import StatefulSession\n"
            "s = StatefulSession.load('b.zip'); y = s.run(np.load('x.npy')); print(y.shape)\n"
            "g = StatefulSession.load('step.onnx', batch=2); print(g.step(np.ones((2, 10), np.float32)).shape)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]),
           "RNNEXPORT_TEST_BLOCK": ",".join((*RUNTIME, "click"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=packaged.parent, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["(3, 1, 7)", "(2, 7)"], proc.stdout  # bundle (T, B, Q), graph (B, Q)


def test_the_library_names_the_missing_extra_too(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKER)
    code = ("import rnnexport\ntry:\n    rnnexport.convert\nexcept ImportError as e:\n"
            "    print(type(e).__name__, e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]), "RNNEXPORT_TEST_BLOCK": "torch"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "MissingExtraError rnnexport.convert needs torch" in proc.stdout, proc.stdout + proc.stderr
    assert "pip install 'rnnexport[export]'" in proc.stdout
