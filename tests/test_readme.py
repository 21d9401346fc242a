"""The README stays true: its settings table is the one the code generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_settings_table_is_current() -> None:
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_table.py")],
                           capture_output=True, text=True, check=True, cwd=ROOT).stdout
    readme = (ROOT / "README.md").read_text()
    assert table.strip() in readme, "regenerate: python scripts/settings_table.py"


def test_readme_names_the_two_commands_and_they_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert f"\n{target}:" in makefile
