"""Pytest plugin of the matrix's wheel leg (``-p presence_ci_installed_check``).

The tests run from a copy of tests/ outside the checkout; this makes sure the
``presence_kit`` they import is the installed wheel in the leg's venv
(``PRESENCE_CI_VENV``), and says where it came from in the report header.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest


def _where() -> tuple[Path, Path]:
    import presence_kit

    return Path(presence_kit.__file__).resolve(), Path(sysconfig.get_paths()["purelib"]).resolve()


def pytest_configure(config: pytest.Config) -> None:
    module, purelib = _where()
    venv = Path(os.environ.get("PRESENCE_CI_VENV", purelib)).resolve()
    if not (module.is_relative_to(purelib) and purelib.is_relative_to(venv)):
        raise pytest.UsageError(
            f"presence_kit was imported from {module}, not the installed wheel in {purelib}"
        )


def pytest_report_header(config: pytest.Config) -> str:
    import presence_kit

    return f"presence_kit {presence_kit.__version__} (installed): {_where()[0]}"
