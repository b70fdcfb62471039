#!/usr/bin/env python3
"""Declared = tested: the compatibility matrix of pyproject.toml (issue 11).

`make test` runs the whole suite on the default python3 with the latest dependencies.
This script runs the tests that touch a dependency (``DEPS_TESTS``) in a few more
environments, each a venv of its own, and a packaging check:

  packaging     python -m build (sdist, then the wheel from it), twine check --strict,
                a second wheel built by the declared backend floor (hatchling>=X → ==X),
                both with Metadata-Version 2.4 and License-Expression MIT, the package
                data (lua/*.lua, py.typed) and the console script in the wheel
  floors        oldest Python, every declared floor (``>=X`` becomes ``==X``, read from
                pyproject.toml) + mypy of the package against them
  floors-core   oldest Python, the floors without the demo extra, with
                typing-extensions at its own floor (fastapi's floor needs a newer one)
  redis6        the latest redis-py 6.x, without hiredis
  redis7        the latest redis-py 7.x, with hiredis
  latest-wheel  newest Python, the latest of everything, installed from the built wheel
                and tested from a copy of tests/ (the checkout is not importable there)
  smoke-3.X     any Python the classifiers name that no leg above nor `make test` runs

Venvs are cached in ${PRESENCE_CI_CACHE:-~/.cache/presence-kit-ci}/<leg>-<hash>; the
hash covers the leg, its Python, its pins, pyproject.toml's dependency tables and the
ISO week (so floating "latest" versions are re-resolved weekly). The package itself is
installed again on every run (editable, or the freshly built wheel) without its deps.

Usage: python3 .ci/matrix.py [--legs floors,redis6,...] [--list]   (or `make matrix`)
Under CI=true a Python the matrix needs but the machine lacks is a failure; elsewhere
its leg is skipped with a notice. Pythons come from pyenv (highest patch of each minor).
Environment: PRESENCE_CI_CACHE (the venv cache), PRESENCE_CI_JOBS (legs at a time, 2),
PRESENCE_CI_LEG_TIMEOUT (seconds per leg's pytest, 600), PRESENCE_CI_MYPY_BLOCKS=1 (the
floors' mypy errors fail the leg; by default they are reported only). Installs use pip,
from wheels only.
The last line is pytest-style: "matrix: N passed, N failed, N skipped".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

if sys.version_info < (3, 11):
    sys.exit("matrix.py needs Python >= 3.11 (tomllib) to run; the legs use their own")
import tomllib

ROOT = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CACHE = Path(
    os.environ.get("PRESENCE_CI_CACHE") or Path.home() / ".cache" / "presence-kit-ci"
).expanduser()
LEG_TIMEOUT = float(os.environ.get("PRESENCE_CI_LEG_TIMEOUT", "600"))
# Legs run this many at a time (their tests mostly wait on sockets and timers).
JOBS = int(os.environ.get("PRESENCE_CI_JOBS", "2"))
PRINT_LOCK = threading.Lock()
SCHEMA = "1"  # bump to rebuild every cached venv
# mypy --strict of the package against the floors' inline types. Advisory by default: its
# errors are about presence_kit's own annotations against older redis-py ones (which a
# user's mypy does not report), not about what runs. PRESENCE_CI_MYPY_BLOCKS=1 fails on them.
MYPY_BLOCKS = os.environ.get("PRESENCE_CI_MYPY_BLOCKS", "0") == "1"

# ---------------------------------------------------------------------------------------
# The tests that touch a dependency: the one list every leg runs (less a leg's exclusions).
DEPS_TESTS = [
    "tests/test_store_contract.py",
    "tests/test_redis_store.py",
    "tests/test_socketio_adapter.py",
    "tests/test_socketio_partition.py",
    "tests/test_integration_sync.py",
    "tests/test_integration_async.py",
    "tests/test_examples.py",
    "tests/test_mixpanel.py",
    "tests/test_server_modes.py",
    "tests/test_sentinel.py",
]
SMOKE_TESTS = ["tests/test_store_contract.py"]

# The optional-dependency tables whose floors are the package's promise (the others,
# test/docs/dev/bench, are tools).
FLOOR_TABLES = ("socketio", "hiredis", "flask", "demo")
# Shown in the summary table, in this order (distribution name → short label).
KEY_DISTS = {
    "redis": "redis",
    "hiredis": "hiredis",
    "python-socketio": "sio",
    "python-engineio": "eio",
    "flask-socketio": "flask-sio",
    "simple-websocket": "simple-ws",
    "mixpanel": "mixpanel",
    "typing-extensions": "te",
    "aiohttp": "aiohttp",
    "uvicorn": "uvicorn",
    "fastapi": "fastapi",
    "flask": "flask",
}
SHORT_DISTS = (
    "redis",
    "hiredis",
    "python-socketio",
    "flask-socketio",
    "mixpanel",
    "typing-extensions",
)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def vtuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:4])


def load_pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


REQ_RE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def floor_pins(
    py: dict, tables: tuple[str, ...], override: dict[str, str], drop: frozenset[str] = frozenset()
) -> list[str]:
    """``name==X`` for every ``name>=X`` in the runtime deps and ``tables`` (highest X wins)."""
    reqs = list(py["project"]["dependencies"])
    opt = py["project"].get("optional-dependencies", {})
    for table in tables:
        reqs += opt.get(table, [])
    floors: dict[str, tuple[str, str]] = {}
    for req in reqs:
        m = REQ_RE.match(req)
        if not m:
            raise SystemExit(f"matrix: cannot read requirement {req!r}")
        name, spec, marker = canon(m[1]), m[3], (m[4] or "")
        if name == canon(py["project"]["name"]):
            continue
        low = re.search(r">=\s*([0-9][^,\s]*)", spec)
        if not low:
            raise SystemExit(f"matrix: {req!r} declares no floor (>=): the floors leg needs one")
        if name not in floors or vtuple(low[1]) > vtuple(floors[name][0]):
            floors[name] = (low[1], marker)
    pins = []
    for name, (version, marker) in sorted(floors.items()):
        if name in drop:
            continue
        pins.append(f"{name}=={override.get(name, version)}{marker}")
    return pins


@dataclasses.dataclass
class Leg:
    name: str
    python: str  # minor version, e.g. "3.10"
    extras: tuple[str, ...]
    reqs: tuple[str, ...] = ()  # pins or ranges installed beside the package
    wheel: bool = False  # install the built wheel and test from a copy of tests/
    mypy: bool = False
    exclude: tuple[str, ...] = ()
    tests: tuple[str, ...] | None = None  # None: DEPS_TESTS (+ the optional ones present)
    hiredis: bool | None = None  # assert redis-py does (not) use hiredis
    note: str = ""


def define_legs(py: dict) -> list[Leg]:
    opt = py["project"].get("optional-dependencies", {})
    tools = tuple(r for r in opt.get("test", []) if canon(REQ_RE.match(r)[1]) != "presence-kit")
    oldest = min_python(py)
    newest = max(classifier_pythons(py), key=vtuple)
    return [
        Leg(
            "floors",
            oldest,
            ("test", "hiredis"),
            tuple(floor_pins(py, FLOOR_TABLES, {"typing-extensions": "4.8.0"})),
            mypy=True,
            hiredis=True,
            note="typing-extensions 4.8.0: fastapi's floor (0.110.0) requires >=4.8.0; "
            "4.6 is tested by floors-core",
        ),
        Leg(
            "floors-core",
            oldest,
            ("socketio", "flask", "hiredis"),
            tuple(floor_pins(py, FLOOR_TABLES, {}, drop=frozenset({"fastapi"}))) + tools,
            exclude=(
                "tests/test_examples.py",
                "tests/test_server_modes.py",
                "tests/test_sentinel.py",
            ),
            hiredis=True,
            note="every floor but fastapi's, typing-extensions at its own floor; without "
            "test_examples (needs fastapi) and the server-mode/Sentinel tests (in floors)",
        ),
        Leg("redis6", "3.11", ("test",), ("redis>=6,<7",), hiredis=False),
        Leg("redis7", "3.12", ("test", "hiredis"), ("redis>=7,<8",), hiredis=True),
        Leg("latest-wheel", newest, ("test", "hiredis"), wheel=True, hiredis=True),
    ]


def classifier_pythons(py: dict) -> list[str]:
    out = []
    for c in py["project"].get("classifiers", []):
        m = re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c)
        if m:
            out.append(m[1])
    return sorted(out, key=vtuple)


def min_python(py: dict) -> str:
    m = re.search(r">=\s*(3\.\d+)", py["project"]["requires-python"])
    if not m:
        raise SystemExit("matrix: requires-python has no >=3.X floor")
    return m[1]


def smoke_legs(py: dict, legs: list[Leg]) -> list[Leg]:
    full_suite = f"{sys.version_info.major}.{sys.version_info.minor}"  # `make test`'s python3
    covered = {leg.python for leg in legs} | {full_suite}
    return [
        Leg(f"smoke-{v}", v, ("test",), tests=tuple(SMOKE_TESTS), note="classifier smoke")
        for v in classifier_pythons(py)
        if v not in covered
    ]


# ---------------------------------------------------------------------------------------
def log(msg: str) -> None:
    with PRINT_LOCK:
        print(f"[matrix] {msg}", flush=True)


def find_python(minor: str) -> tuple[Path, str] | None:
    """The highest patch release of ``minor`` that pyenv has (or python3.X on PATH)."""
    candidates: list[Path] = []
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True)
        versions = [v for v in out.stdout.split() if re.fullmatch(rf"{re.escape(minor)}\.\d+", v)]
        for version in sorted(versions, key=vtuple, reverse=True):
            prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True)
            if prefix.returncode == 0:
                candidates.append(Path(prefix.stdout.strip()) / "bin" / "python")
    if exe := shutil.which(f"python{minor}"):
        candidates.append(Path(exe))
    for exe in candidates:
        probe = subprocess.run(
            [str(exe), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
        )
        full = probe.stdout.strip()
        if probe.returncode == 0 and full.startswith(minor + "."):
            return exe, full
    return None


def run_logged(
    cmd: list[str],
    logfile: Path,
    cwd: Path = ROOT,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> None:
    with open(logfile, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(
            cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=env
        )
    if proc.returncode != 0:
        tail = "".join(
            line
            for line in logfile.read_text(errors="replace").splitlines(True)[-40:]
            if "is ignored: it is neither a file nor a directory" not in line
        )
        raise SetupError(f"`{' '.join(cmd[:6])} ...` exited {proc.returncode}:\n{tail}")


class SetupError(Exception):
    pass


PIP = ["-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check"]


def cached_venv(
    name: str, python: tuple[Path, str], key_data: dict, install, logfile: Path
) -> tuple[Path, bool]:
    """A venv at CACHE/<name>-<hash>; ``install(vpy)`` fills a new one. -> (venv, reused)."""
    week = datetime.date.today().isocalendar()
    key_data = {
        **key_data,
        "python": python[1],
        "schema": SCHEMA,
        "week": f"{week[0]}-W{week[1]:02d}",
    }
    digest = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    venv = CACHE / f"{name}-{digest}"
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob(f"{name}-*"):
        if old != venv and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    vpy = venv / "bin" / "python"
    if (venv / ".complete").exists() and vpy.exists():
        return venv, True
    shutil.rmtree(venv, ignore_errors=True)
    run_logged([str(python[0]), "-m", "venv", str(venv)], logfile)
    run_logged([str(vpy), *PIP, "--upgrade", "pip"], logfile)
    install(vpy)
    (venv / ".complete").write_text(json.dumps(key_data, sort_keys=True, indent=1))
    return venv, False


def dependency_tables(py: dict) -> dict:
    return {
        "build-system": py.get("build-system"),
        "dependencies": py["project"].get("dependencies"),
        "optional-dependencies": py["project"].get("optional-dependencies"),
        "requires-python": py["project"].get("requires-python"),
    }


# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    leg: str
    python: str = "-"
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    status: str = "?"  # pass, FAIL, skip
    detail: str = ""
    setup_s: float = 0.0
    test_s: float = 0.0
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in {"pass", "skip"}


def installed_versions(vpy: Path) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        f"for d in {list(KEY_DISTS)!r}:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    out = subprocess.run([str(vpy), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@dataclasses.dataclass
class Built:
    wheel: Path
    version: str


def packaging_check(py: dict, workdir: Path, logdir: Path) -> tuple[Result, Built | None]:
    """build + twine check --strict, and a wheel from the declared backend floor."""
    res = Result("packaging")
    t0 = time.monotonic()
    logfile = logdir / "packaging.log"
    notes = []
    built = None
    try:
        host = (Path(sys.executable), ".".join(map(str, sys.version_info[:3])))
        res.python = host[1]
        tools = ["build>=1.2", "twine>=6.1"]
        tool_venv, _ = cached_venv(
            "tools",
            host,
            {"reqs": tools},
            lambda vpy: run_logged([str(vpy), *PIP, *tools], logfile),
            logfile,
        )
        backend = py["build-system"]["requires"]
        floor = floor_pins(
            {"project": {"name": py["project"]["name"], "dependencies": backend}}, (), {}
        )
        floor_venv, _ = cached_venv(
            "backend-floor",
            host,
            {"reqs": [*floor, "build>=1.2"]},
            lambda vpy: run_logged(
                [str(vpy), *PIP, "--only-binary=:all:", *floor, "build>=1.2"], logfile
            ),
            logfile,
        )
        dist = workdir / "dist"
        run_logged(
            [str(tool_venv / "bin" / "python"), "-m", "build", "--outdir", str(dist), str(ROOT)],
            logfile,
        )
        artefacts = sorted(dist.iterdir())
        run_logged(
            [
                str(tool_venv / "bin" / "python"),
                "-m",
                "twine",
                "check",
                "--strict",
                *map(str, artefacts),
            ],
            logfile,
        )
        wheels = [p for p in artefacts if p.suffix == ".whl"]
        if len(wheels) != 1 or not any(p.name.endswith(".tar.gz") for p in artefacts):
            names = [p.name for p in artefacts]
            raise SetupError(f"expected one wheel and one sdist, got {names}")
        floor_dist = workdir / "dist-backend-floor"
        run_logged(
            [
                str(floor_venv / "bin" / "python"),
                "-m",
                "build",
                "--no-isolation",
                "--wheel",
                "--outdir",
                str(floor_dist),
                str(ROOT),
            ],
            logfile,
        )
        floor_wheels = sorted(floor_dist.glob("*.whl"))
        problems = []
        contents = {}
        for label, whl in (("build", wheels[0]), (floor[0], floor_wheels[0])):
            problems += check_wheel(whl, label)
            with zipfile.ZipFile(whl) as zf:
                contents[label] = sorted(n for n in zf.namelist() if not n.endswith("RECORD"))
        a, b = contents.values()
        if a != b:
            problems.append(
                f"{floor[0]} builds other files than the current backend: "
                f"{sorted(set(a) ^ set(b))}"
            )
        if problems:
            raise SetupError("\n".join(problems))
        version = wheels[0].name.split("-")[1]
        built = Built(wheels[0], version)
        notes.append(f"{wheels[0].name}, sdist; twine --strict ok; {floor[0]} wheel identical")
        res.status = "pass"
    except (SetupError, subprocess.TimeoutExpired) as exc:
        res.status = "FAIL"
        res.failures.append(str(exc))
        log(f"packaging FAILED:\n{exc}")
    res.detail = "; ".join(notes)
    res.setup_s = time.monotonic() - t0
    return res, built


def check_wheel(whl: Path, label: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            return [f"{label}: no METADATA in {whl.name}"]
        meta = zf.read(meta_name).decode()
        headers = meta.split("\n\n", 1)[0].splitlines()
        for want in ("Metadata-Version: 2.4", "License-Expression: MIT"):
            if want not in headers:
                problems.append(f"{label}: METADATA lacks {want!r}")
        lua = sorted(p.name for p in (ROOT / "presence_kit" / "lua").glob("*.lua"))
        in_wheel = sorted(
            n.rsplit("/", 1)[1]
            for n in names
            if n.startswith("presence_kit/lua/") and n.endswith(".lua")
        )
        if lua != in_wheel:
            problems.append(f"{label}: wheel lua/ has {in_wheel}, the checkout {lua}")
        if "presence_kit/py.typed" not in names:
            problems.append(f"{label}: wheel lacks presence_kit/py.typed")
        eps = next(
            (zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), ""
        )
        if not re.search(r"^presence-kit\s*=\s*presence_kit\._cli:main$", eps, re.M):
            problems.append(f"{label}: no presence-kit console script in entry_points.txt")
        if not any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names):
            problems.append(f"{label}: no licenses/LICENSE in the dist-info")
    return problems


# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    venv: Path
    python: str
    reused: bool
    setup_s: float
    test_root: Path = ROOT


def prepare(leg: Leg, py: dict, built: Built | None, workdir: Path, logdir: Path) -> Prepared:
    """Make (or reuse) the leg's venv and install the package into it."""
    t0 = time.monotonic()
    found = find_python(leg.python)
    if found is None:
        raise MissingPythonError(leg.python)
    logfile = logdir / f"{leg.name}.log"
    extras = ",".join(leg.extras)
    if leg.wheel and built is None:
        raise SetupError("no wheel: the packaging check failed")
    target = f"{built.wheel}[{extras}]" if leg.wheel else f"{ROOT}[{extras}]"

    def install(vpy: Path) -> None:
        editable = [] if leg.wheel else ["-e"]
        run_logged([str(vpy), *PIP, "--only-binary=:all:", *editable, target, *leg.reqs], logfile)

    key = {
        "leg": leg.name,
        "extras": leg.extras,
        "reqs": leg.reqs,
        "wheel": leg.wheel,
        "deps": dependency_tables(py),
    }
    venv, reused = cached_venv(leg.name, found, key, install, logfile)
    vpy = venv / "bin" / "python"
    if leg.wheel:
        # The freshly built wheel, over whatever an older run left (deps stay cached).
        run_logged([str(vpy), *PIP, "--no-deps", "--force-reinstall", str(built.wheel)], logfile)
    elif reused:
        run_logged([str(vpy), *PIP, "--no-deps", "-e", str(ROOT)], logfile)
    test_root = ROOT
    if leg.wheel:
        # The repository less the package (and what is not source): tests, examples,
        # README.md, docs/... as the tests may read them; presence_kit/ is the wheel's.
        test_root = workdir / f"{leg.name}-tree"
        test_root.mkdir()
        skip = {
            "presence_kit",
            ".git",
            ".venv",
            "dist",
            "build",
            "htmlcov",
            ".coverage",
            ".mypy_cache",
            ".pytest_cache",
            ".ruff_cache",
            ".hypothesis",
            "test-artifacts",
        }
        junk = shutil.ignore_patterns("__pycache__", "*.pyc", "_build", "_mermaid")
        for entry in ROOT.iterdir():
            if entry.name in skip or entry.name.startswith(".coverage"):
                continue
            if entry.is_dir():
                shutil.copytree(entry, test_root / entry.name, ignore=junk, symlinks=True)
            else:
                shutil.copy2(entry, test_root / entry.name)
        shutil.copy2(
            Path(__file__).with_name("installed_check.py"),
            test_root / "presence_ci_installed_check.py",
        )
    return Prepared(venv, found[1], reused, time.monotonic() - t0, test_root)


class MissingPythonError(Exception):
    pass


def leg_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def leg_tests(leg: Leg) -> list[str]:
    files = list(leg.tests) if leg.tests is not None else list(DEPS_TESTS)
    missing = [t for t in files if not (ROOT / t).exists()]
    if missing:
        raise SetupError(f"test files missing: {missing} (update DEPS_TESTS in .ci/matrix.py)")
    return [t for t in files if t not in leg.exclude]


def run_leg(
    leg: Leg, prep: Prepared, built: Built | None, workdir: Path, logdir: Path, res: Result
) -> None:
    vpy = prep.venv / "bin" / "python"
    env = leg_env(prep.venv)
    res.versions = installed_versions(vpy)
    # The package as installed: its version, the console script, redis-py's parser.
    checks = (
        "import json, redis, redis.utils, presence_kit\n"
        "print(json.dumps({'file': presence_kit.__file__, 'version': presence_kit.__version__,"
        " 'hiredis': getattr(redis.utils, 'HIREDIS_AVAILABLE', None)}))"
    )
    probe = subprocess.run(
        [str(vpy), "-c", checks], cwd=prep.test_root, env=env, capture_output=True, text=True
    )
    if probe.returncode != 0:
        raise SetupError(f"import check failed:\n{probe.stderr[-2000:]}")
    info = json.loads(probe.stdout)
    log(f"{leg.name}: presence_kit {info['version']} imported from {info['file']}")
    problems = []
    if leg.hiredis is not None and info["hiredis"] is not leg.hiredis:
        problems.append(
            f"redis.utils.HIREDIS_AVAILABLE is {info['hiredis']}, expected {leg.hiredis}"
        )
    cli = subprocess.run(
        ["presence-kit", "--version"], cwd=prep.test_root, env=env, capture_output=True, text=True
    )
    want = f"presence-kit {built.version if leg.wheel and built else info['version']}"
    if cli.returncode != 0 or cli.stdout.strip() != want:
        problems.append(
            f"`presence-kit --version` printed {cli.stdout.strip()!r} "
            f"(rc {cli.returncode}, {cli.stderr.strip()[-300:]!r}), want {want!r}"
        )
    if leg.wheel and not Path(info["file"]).resolve().is_relative_to(prep.venv.resolve()):
        problems.append(f"presence_kit imported from {info['file']}, not the venv")
    if problems:
        res.failures += problems
        for p in problems:
            log(f"{leg.name}: {p}")

    tests = leg_tests(leg)
    xml = logdir / f"{leg.name}.xml"
    cmd = [
        str(vpy),
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "--tb=short",
        f"--junitxml={xml}",
        "-o",
        "junit_family=xunit2",
        *tests,
    ]
    if leg.wheel:
        cmd[3:3] = ["-p", "presence_ci_installed_check"]
        env["PRESENCE_CI_VENV"] = str(prep.venv)
    log(
        f"{leg.name}: python {prep.python}, "
        + ", ".join(f"{KEY_DISTS[d]} {v}" for d, v in res.versions.items())
    )
    log(f"{leg.name}: $ {' '.join(cmd[1:])}  (in {prep.test_root})")
    t0 = time.monotonic()
    out = logdir / f"{leg.name}.pytest.log"
    try:
        with open(out, "w") as fh:
            proc = subprocess.run(
                cmd,
                cwd=prep.test_root,
                env=env,
                timeout=LEG_TIMEOUT,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = -1
        res.failures.append(f"pytest did not finish in {LEG_TIMEOUT:.0f} s")
    res.test_s = time.monotonic() - t0
    with PRINT_LOCK:  # one leg's output as one block, whatever runs beside it
        bar = "#" * 20
        print(f"\n{bar} {leg.name}: pytest output (python {prep.python}) {bar}", flush=True)
        print(out.read_text(errors="replace"), end="", flush=True)
        print(f"{bar} end of {leg.name} (exit {rc}) {bar}\n", flush=True)
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total = int(suite.get("tests", 0))
        res.failed = int(suite.get("failures", 0))
        res.errors = int(suite.get("errors", 0))
        res.skipped = int(suite.get("skipped", 0))
        res.passed = total - res.failed - res.errors - res.skipped
        for case in suite.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                cid = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
                message = (bad.get("message") or "").strip().splitlines()
                res.failures.append(f"{cid}: {message[0][:200] if message else bad.tag}")
    if rc == 5:
        res.failures.append("pytest collected no tests (exit 5)")
    elif rc not in (0, 1, -1) and not res.failed and not res.errors:
        res.failures.append(f"pytest exited {rc}")
    if res.passed == 0 and rc != 5:
        res.failures.append("no test passed")
    if leg.mypy:
        mypy_leg(vpy, env, res)
    res.status = "FAIL" if (rc != 0 or res.failures) else "pass"
    log(
        f"{leg.name}: {res.passed} passed, {res.failed} failed, {res.errors} errors, "
        f"{res.skipped} skipped in {res.test_s:.0f} s -> {res.status}"
    )


def mypy_leg(vpy: Path, env: dict[str, str], res: Result) -> None:
    """mypy --strict (pyproject's config) of the package against the leg's versions."""
    cmd = [str(vpy), "-m", "mypy", "--cache-dir", os.devnull, "presence_kit"]
    log(f"{res.leg}: $ {' '.join(cmd[1:])}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    with PRINT_LOCK:
        print(proc.stdout + proc.stderr, end="", flush=True)
    lines = proc.stdout.strip().splitlines() or ["(no output)"]
    res.detail = f"mypy: {lines[-1]} ({time.monotonic() - t0:.0f} s)"
    if proc.returncode != 0 and not MYPY_BLOCKS:
        res.detail += " (advisory; PRESENCE_CI_MYPY_BLOCKS=1 makes it fail the leg)"
    elif proc.returncode != 0:
        res.failures.append("mypy presence_kit: " + lines[-1])
        res.failures += [f"  mypy: {line}" for line in lines[:-1][:40]]


# ---------------------------------------------------------------------------------------
def print_summary(results: list[Result]) -> None:
    rows = [
        ("leg", "python", "key versions", "passed/failed/err/skip", "result", "setup s", "test s")
    ]
    for r in results:
        short = ", ".join(
            f"{KEY_DISTS[d]} {r.versions[d]}" for d in SHORT_DISTS if d in r.versions
        )
        counts = (
            f"{r.passed}/{r.failed}/{r.errors}/{r.skipped}"
            if r.leg != "packaging" and r.status != "skip"
            else "-"
        )
        rows.append(
            (
                r.leg,
                r.python,
                short or "-",
                counts,
                r.status,
                f"{r.setup_s:.0f}",
                f"{r.test_s:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    line = "+".join("-" * (w + 2) for w in widths)
    print("\n" + "=" * 30 + " compatibility matrix " + "=" * 30)
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print(line)
    print()
    for r in results:
        extra = [f"  {KEY_DISTS[d]}={v}" for d, v in r.versions.items() if d not in SHORT_DISTS]
        if extra or r.detail:
            print(f"{r.leg}: {r.detail}" + ("" if not extra else " |" + ",".join(extra)))
    failing = [r for r in results if r.failures]
    for r in failing:
        print(f"\n{r.leg} failures:")
        for f in group_failures(r.failures)[:80]:
            print(f"  - {f}")


def group_failures(failures: list[str]) -> list[str]:
    """Test failures with the same message as one line: count, message, a few test ids."""
    groups: dict[str, list[str]] = {}
    other = []
    for f in failures:
        m = re.match(r"(tests/\S+::\S+): (.*)$", f)
        if m:
            groups.setdefault(re.sub(r"0x[0-9a-f]+", "0x…", m[2]), []).append(m[1])
        else:
            other.append(f)
    out = other[:]
    for message, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(ids[:4]) + (f", … ({len(ids) - 4} more)" if len(ids) > 4 else "")
        out.append(f"{len(ids)}x {message}\n      {shown}")
    return out


def execute(
    leg: Leg, build_future: concurrent.futures.Future | None, py: dict, workdir: Path, logdir: Path
) -> Result:
    res = Result(leg.name, python=leg.python)
    try:
        built = build_future.result()[1] if (leg.wheel and build_future) else None
        prep = prepare(leg, py, built, workdir, logdir)
        res.python = prep.python
        res.setup_s = prep.setup_s
        log(
            f"{leg.name}: venv {'reused' if prep.reused else 'built'} "
            f"({prep.setup_s:.0f} s): {prep.venv}"
        )
        run_leg(leg, prep, built, workdir, logdir, res)
    except MissingPythonError as exc:
        msg = f"Python {exc} is not installed (pyenv versions --bare)"
        res.status = "FAIL" if CI else "skip"
        res.detail = msg
        if CI:
            res.failures.append(msg + "; CI=true needs every leg")
        log(f"{'ERROR' if CI else 'NOTICE'}: {leg.name} skipped: {msg}")
    except (SetupError, subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        res.status = "FAIL"
        res.failures.append(f"setup: {exc}")
        log(f"{leg.name}: setup FAILED: {exc}")
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", help="comma-separated leg names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the legs and exit")
    parser.add_argument(
        "--no-packaging",
        action="store_true",
        help="skip the packaging check (and so the wheel leg)",
    )
    args = parser.parse_args()

    py = load_pyproject()
    legs = define_legs(py)
    legs += smoke_legs(py, legs)
    if min_python(py) != classifier_pythons(py)[0]:
        log(
            f"requires-python >={min_python(py)} but the oldest classifier is "
            f"{classifier_pythons(py)[0]}"
        )
        return 1
    if args.list:
        for leg in legs:
            print(
                f"{leg.name:14} python {leg.python:5} extras [{','.join(leg.extras)}]"
                f"{' wheel' if leg.wheel else ''} {' '.join(leg.reqs)}"
                f"{'  # ' + leg.note if leg.note else ''}"
            )
        return 0
    if args.legs:
        wanted = set(args.legs.split(","))
        unknown = wanted - {leg.name for leg in legs} - {"packaging"}
        if unknown:
            parser.error(f"unknown legs {sorted(unknown)}; --list shows them")
        legs = [leg for leg in legs if leg.name in wanted]
    need_build = not args.no_packaging and (
        not args.legs or "packaging" in wanted or any(leg.wheel for leg in legs)
    )
    log(
        f"cache {CACHE}; {'CI' if CI else 'local'} run; legs: "
        + ", ".join(f"{leg.name} ({leg.python})" for leg in legs)
    )
    covered = sorted(
        {leg.python for leg in define_legs(py)}
        | {f"{sys.version_info.major}.{sys.version_info.minor}"},
        key=vtuple,
    )
    log(
        f"classifiers {', '.join(classifier_pythons(py))}; covered by the legs and "
        f"`make test` ({sys.version_info.major}.{sys.version_info.minor}): {', '.join(covered)}"
    )

    t_start = time.monotonic()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="presence-matrix-") as tmp:
        workdir = Path(tmp)
        # pip logs and JUnit XML of the last run stay here for a look afterwards.
        logdir = CACHE / "last-run"
        shutil.rmtree(logdir, ignore_errors=True)
        logdir.mkdir(parents=True)
        # The packaging check first (the wheel leg needs its wheel); legs JOBS at a time,
        # each making (or reusing) its venv, then running its tests.
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, JOBS)) as pool:
            build_future = None
            if need_build:
                build_future = pool.submit(packaging_check, py, workdir, logdir)
            futures = [
                pool.submit(execute, leg, build_future, py, workdir, logdir) for leg in legs
            ]
            if build_future is not None:
                pres = build_future.result()[0]
                results.append(pres)
                log(f"packaging: {pres.status} ({pres.setup_s:.0f} s) {pres.detail}")
            results += [f.result() for f in futures]
    print_summary(results)
    total = time.monotonic() - t_start
    passed = sum(r.passed for r in results)
    failed = sum(r.failed + r.errors for r in results)
    skipped = sum(r.skipped for r in results)
    bad = [r.leg for r in results if not r.ok]
    print(
        f"\nmatrix {'FAILED: ' + ', '.join(bad) if bad else 'ok'} in {total:.0f} s "
        f"(cache {CACHE}; pip logs and JUnit XML in {CACHE / 'last-run'})"
    )
    print(f"matrix: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
