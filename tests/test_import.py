"""`import flexops` where the source folder shadows the installed package says what to do."""

import pathlib
import shutil
import subprocess
import sys

import flexops


def _import_in(folder):
    return subprocess.run([sys.executable, "-c", "import flexops"], cwd=folder, capture_output=True, text=True)


def test_import_from_a_checkout_says_where_to_start_python(tmp_path):
    # A checkout: setup.py beside a flexops/ folder that has no compiled extension.
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "flexops").mkdir()
    shutil.copy(pathlib.Path(flexops.__file__), tmp_path / "flexops" / "__init__.py")
    result = _import_in(tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: flexops was imported from its source folder")
    assert "start Python outside the checkout" in last
    assert "circular import" not in result.stderr


def test_installed_package_without_extension_says_to_reinstall(tmp_path):
    (tmp_path / "flexops").mkdir()
    shutil.copy(pathlib.Path(flexops.__file__), tmp_path / "flexops" / "__init__.py")
    result = _import_in(tmp_path)
    assert "installed without its compiled extension" in result.stderr.strip().splitlines()[-1]
