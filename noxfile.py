"""Declared = tested: the compatibility matrix of pyproject.toml, as nox sessions (uv).

`make test` runs the whole suite on the default python3 with the latest dependencies.
These sessions run the tests that touch a dependency (``DEPS_TESTS``) in a few more
environments, each a uv venv of its own, and a packaging check:

  packaging     python -m build (sdist, then the wheel from it), twine check --strict,
                a second wheel built by the declared backend floor (hatchling>=X, installed
                with --resolution lowest-direct), both with Metadata-Version 2.4 and
                License-Expression MIT, the package data (lua/*.lua, py.typed) and the
                console script in the wheel
  floors        oldest Python, every declared floor (uv pip install --resolution
                lowest-direct, each checked against pyproject.toml) + advisory mypy of the
                package against them; hiredis in use
  floors-core   oldest Python, the floors without fastapi (the demo extra's only floor that
                needs a newer typing-extensions), typing-extensions at its own floor
  redis6        the latest redis-py 6.x, without hiredis (asserted unused)
  redis7        the latest redis-py 7.x, with hiredis
  latest-wheel  newest Python, the latest of everything, installed from the packaging
                session's wheel and tested from a copy of tests/ (the checkout is not
                importable there)
  smoke-3.X     any Python the classifiers name that no leg above nor `make test` runs

`make matrix` (= `nox -s matrix`) runs every leg, a nox process per leg, two at a time
(the old matrix's parallelism: the tests mostly wait on sockets and timers), then prints a
summary table; `nox -s matrix -- floors redis6` runs some; `nox -s floors` runs one leg
alone; `nox -l` lists them.

Pythons come from pyenv (the highest patch of each minor, linked as pythonX.Y into a
directory put first on PATH); uv never downloads one (UV_PYTHON_DOWNLOADS=never). Under
CI a Python a leg needs but the machine lacks fails the matrix; elsewhere the leg is
skipped with a notice.

Venvs live in ${PRESENCE_CI_CACHE:-~/.cache/presence-kit-ci}/nox/<key> and are reused
while the key holds: it covers pyproject.toml's dependency tables, this file, the
interpreters and the ISO week (so floating "latest" versions are re-resolved weekly). The
package itself is installed again on every run (editable, or the freshly built wheel).
Logs, JUnit XML and the wheel of the last run: <cache>/last-run.
Environment: PRESENCE_CI_CACHE, PRESENCE_CI_JOBS (legs at a time, 2),
PRESENCE_CI_LEG_TIMEOUT (seconds per leg's pytest, 600), PRESENCE_CI_MYPY_BLOCKS=1 (the
floors' mypy errors fail the leg; by default they are reported only).
The last line of `nox -s matrix` is pytest-style: "matrix: N passed, N failed, N skipped".
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

nox.needs_version = ">=2025.5.1"

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PROJECT = PYPROJECT["project"]
OPTIONAL = PROJECT.get("optional-dependencies", {})
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CACHE = Path(
    os.environ.get("PRESENCE_CI_CACHE") or Path.home() / ".cache" / "presence-kit-ci"
).expanduser()
RUN_DIR = CACHE / "last-run"
WHEELS_ONLY = ("--only-binary", ":all:")  # no compiler in the legs: a missing wheel fails
LEG_TIMEOUT = int(os.environ.get("PRESENCE_CI_LEG_TIMEOUT", "600"))
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
    "tests/test_updates.py",
    "tests/test_metrics.py",
    "tests/test_feed.py",
]
SMOKE_TESTS = ["tests/test_store_contract.py"]

# The optional-dependency tables whose floors are the package's promise (the others,
# test/docs/dev/bench, are tools).
FLOOR_TABLES = ("socketio", "hiredis", "flask", "demo", "otel")
# Shown in the summary (distribution name -> short label); SHORT_DISTS in the table itself.
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
    "opentelemetry-api": "otel",
}
SHORT_DISTS = (
    "redis",
    "hiredis",
    "python-socketio",
    "flask-socketio",
    "mixpanel",
    "typing-extensions",
)
# Rough seconds per leg on the CI machine (2 cores, warm): `matrix` starts the longest
# first.
WEIGHTS = {"packaging": 15, "floors": 170, "floors-core": 50, "redis6": 110, "redis7": 110}
WEIGHTS["latest-wheel"] = 110
JOBS = int(os.environ.get("PRESENCE_CI_JOBS", "2"))  # legs at a time


def canon(name: str) -> str:
    return str(canonicalize_name(name))


def minor_of(version: str) -> str:
    return ".".join(version.split(".")[:2])


def is_self(req: Requirement) -> bool:
    return canon(req.name) == canon(PROJECT["name"])


def floors_of(reqs: list[str]) -> dict[str, str]:
    """{name: X} for every ``name>=X`` (the highest X of a name wins); all need one."""
    floors: dict[str, str] = {}
    for text in reqs:
        req = Requirement(text)
        if is_self(req):
            continue
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if not lows:
            raise SystemExit(f"noxfile: {text!r} declares no floor (>=): the floors legs need one")
        name = canon(req.name)
        floors[name] = max([*lows, floors.get(name, lows[0])], key=Version)
    return floors


def table(name: str) -> list[str]:
    return list(OPTIONAL.get(name, []))


def tools_of(name: str) -> list[str]:
    """A table's requirements less the package's own (``presence-kit[...]``)."""
    return [r for r in table(name) if not is_self(Requirement(r))]


def classifier_pythons() -> list[str]:
    found = [
        m[1]
        for c in PROJECT.get("classifiers", [])
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    ]
    return sorted(found, key=Version)


def min_python() -> str:
    m = re.search(r">=\s*(3\.\d+)", PROJECT["requires-python"])
    if not m:
        raise SystemExit("noxfile: requires-python has no >=3.X floor")
    return m[1]


# ---------------------------------------------------------------------------------------
# The legs.
@dataclasses.dataclass
class Leg:
    name: str
    python: str  # minor version, e.g. "3.10"
    doc: str
    extras: tuple[str, ...] = ()
    reqs: tuple[str, ...] = ()  # ranges installed beside the package
    # Floors: the tables whose floors are installed with --resolution lowest-direct (the
    # runtime deps always), and the floors the leg expects to differ from pyproject's.
    floor_tables: tuple[str, ...] | None = None
    floor_reqs: tuple[str, ...] = ()  # further direct requirements at their floors
    floor_overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    tools: tuple[str, ...] = ()  # then installed at their latest that the floors allow
    wheel: bool = False  # install the built wheel and test from a copy of tests/
    mypy: bool = False
    exclude: tuple[str, ...] = ()
    tests: tuple[str, ...] = tuple(DEPS_TESTS)
    hiredis: bool | None = None  # assert redis-py does (not) use hiredis

    @property
    def expected_floors(self) -> dict[str, str]:
        reqs = list(PROJECT["dependencies"]) + list(self.floor_reqs)
        for name in self.floor_tables or ():
            reqs += table(name)
        return {**floors_of(reqs), **self.floor_overrides}


HOST = f"{sys.version_info.major}.{sys.version_info.minor}"  # `make test`'s python3
OLDEST = min_python()
NEWEST = classifier_pythons()[-1]
TEST_TOOLS = tuple(tools_of("test"))
DEMO_BUT_FASTAPI = tuple(r for r in table("demo") if canon(Requirement(r).name) != "fastapi")
# fastapi's floor (0.110.0) requires typing-extensions>=4.8.0; 4.6 is floors-core's.
TE_FOR_FASTAPI = {"typing-extensions": "4.8.0"}
LEGS = [
    Leg(
        "floors",
        OLDEST,
        "oldest Python, every declared floor (lowest-direct), advisory mypy, hiredis in use; "
        "typing-extensions 4.8.0 (fastapi's floor needs it)",
        floor_tables=FLOOR_TABLES,
        floor_overrides=TE_FOR_FASTAPI,
        tools=TEST_TOOLS,
        mypy=True,
        hiredis=True,
    ),
    Leg(
        "floors-core",
        OLDEST,
        "oldest Python, the floors but fastapi's, typing-extensions at its own floor; "
        "without test_examples (needs fastapi) and the server-mode/Sentinel tests (floors)",
        floor_tables=("socketio", "hiredis", "flask", "otel"),
        floor_reqs=DEMO_BUT_FASTAPI,
        tools=TEST_TOOLS,
        exclude=(
            "tests/test_examples.py",
            "tests/test_server_modes.py",
            "tests/test_sentinel.py",
        ),
        hiredis=True,
    ),
    Leg("redis6", "3.11", "redis-py 6.x, no hiredis", ("test",), ("redis>=6,<7",), hiredis=False),
    Leg(
        "redis7",
        "3.12",
        "redis-py 7.x with hiredis",
        ("test", "hiredis"),
        ("redis>=7,<8",),
        hiredis=True,
    ),
    Leg(
        "latest-wheel",
        NEWEST,
        "newest Python, the latest of everything, from the built wheel",
        ("test", "hiredis"),
        wheel=True,
        hiredis=True,
    ),
]
_covered = {leg.python for leg in LEGS} | {HOST}
LEGS += [
    Leg(f"smoke-{v}", v, "classifier smoke", ("test",), tests=tuple(SMOKE_TESTS))
    for v in classifier_pythons()
    if v not in _covered
]
LEG_NAMES = ["packaging", *(leg.name for leg in LEGS)]


# ---------------------------------------------------------------------------------------
# Pythons: pyenv's, by minor version, linked into one directory that goes first on PATH
# (only pythonX.Y names, so `python`/`python3` stay what they were).
def find_pythons(minors: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True)
        best: dict[str, str] = {}
        for v in out.stdout.split():
            if not (re.fullmatch(r"3\.\d+\.\d+", v) and minor_of(v) in minors):
                continue
            if minor_of(v) not in best or Version(v) > Version(best[minor_of(v)]):
                best[minor_of(v)] = v
        for minor, v in best.items():
            prefix = subprocess.run(["pyenv", "prefix", v], capture_output=True, text=True)
            exe = Path(prefix.stdout.strip()) / "bin" / "python"
            if prefix.returncode == 0 and exe.exists():
                found[minor] = exe
    for minor in minors - set(found):  # no pyenv: a pythonX.Y already on PATH
        if exe := shutil.which(f"python{minor}"):
            found[minor] = Path(exe)
    return found


PYTHONS = find_pythons({leg.python for leg in LEGS} | {HOST})
PY_LINKS = CACHE / "pythons"
PY_LINKS.mkdir(parents=True, exist_ok=True)
for _link in PY_LINKS.glob("python3.*"):
    if _link.name.removeprefix("python") not in PYTHONS:
        _link.unlink(missing_ok=True)  # a Python no longer there, or not needed
for _minor, _exe in PYTHONS.items():
    _link = PY_LINKS / f"python{_minor}"
    if not _link.is_symlink() or _link.readlink() != _exe:
        _tmp = PY_LINKS / f".python{_minor}.{os.getpid()}"
        _tmp.unlink(missing_ok=True)
        _tmp.symlink_to(_exe)
        _tmp.replace(_link)
os.environ["PATH"] = f"{PY_LINKS}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ["UV_PYTHON_DOWNLOADS"] = "never"
# Byte-compile at install, as pip does: with PYTHONDONTWRITEBYTECODE set (as it may be on
# CI) every test process would compile the dependencies again (+20% on a leg's tests).
os.environ["UV_COMPILE_BYTECODE"] = "1"


def env_key() -> str:
    week = datetime.date.today().isocalendar()
    data = {
        "build-system": PYPROJECT.get("build-system"),
        "deps": {k: PROJECT.get(k) for k in ("dependencies", "optional-dependencies")},
        "requires-python": PROJECT.get("requires-python"),
        "noxfile": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "pythons": {m: str(p.resolve()) for m, p in sorted(PYTHONS.items())},
        "week": f"{week[0]}-W{week[1]:02d}",
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


ENV_KEY = env_key()
nox.options.envdir = str(CACHE / "nox" / ENV_KEY)
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "uv"
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = CI
nox.options.sessions = ["matrix"]


# ---------------------------------------------------------------------------------------
# What a leg records for the summary: <cache>/last-run/<leg>.json.
def record(name: str, **data: object) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **data}, indent=1))


PROBE = """
import json, importlib.metadata as m
import redis.utils, presence_kit
print("PROBE " + json.dumps({
    "file": presence_kit.__file__,
    "version": presence_kit.__version__,
    "hiredis": getattr(redis.utils, "HIREDIS_AVAILABLE", None),
    "dists": {d.metadata["Name"]: d.version for d in m.distributions()},
}))
"""


def probe(session: nox.Session) -> dict:
    out = session.run("python", "-c", PROBE, silent=True)
    line = [x for x in str(out).splitlines() if x.startswith("PROBE ")][-1]
    info = json.loads(line[len("PROBE ") :])
    info["dists"] = {canon(k): v for k, v in info["dists"].items()}
    return info


def python_version(session: nox.Session) -> str:
    out = session.run(
        "python", "-c", "import platform; print(platform.python_version())", silent=True
    )
    return str(out).strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------
@nox.session(python=HOST)
def packaging(session: nox.Session) -> None:
    """build (sdist, then the wheel from it), twine check --strict, the backend floor's wheel."""
    t0 = time.monotonic()
    record("packaging", python=python_version(session), status="FAIL", failures=[])
    dev = [r for r in tools_of("dev") if canon(Requirement(r).name) in {"build", "twine"}]
    # build's uv extra: its isolated build envs are made by uv, not pip.
    session.install(*WHEELS_ONLY, *[r.replace("build>", "build[uv]>", 1) for r in dev])
    dist = RUN_DIR / "dist"
    floor_dist = RUN_DIR / "dist-backend-floor"
    shutil.rmtree(dist, ignore_errors=True)
    shutil.rmtree(floor_dist, ignore_errors=True)
    session.run("python", "-m", "build", "--installer", "uv", "--outdir", str(dist), str(ROOT))
    artefacts = sorted(dist.iterdir())
    session.run("python", "-m", "twine", "check", "--strict", *map(str, artefacts))
    wheels = [p for p in artefacts if p.suffix == ".whl"]
    if len(wheels) != 1 or not any(p.name.endswith(".tar.gz") for p in artefacts):
        fail(
            session,
            "packaging",
            f"expected one wheel and one sdist, got {[p.name for p in artefacts]}",
        )

    # The declared backend floor, built without isolation in this venv.
    backend = PYPROJECT["build-system"]["requires"]
    session.install(*WHEELS_ONLY, "--resolution", "lowest-direct", *backend)
    want = floors_of(backend)
    have = probe_dists(session)
    floor_label = ", ".join(f"{n}=={v}" for n, v in want.items())
    wrong = [
        f"{n} {have.get(n)} installed, floor {v}"
        for n, v in want.items()
        if not same(have.get(n), v)
    ]
    if wrong:
        fail(session, "packaging", f"backend floor not installed: {wrong}")
    session.run(
        "python",
        "-m",
        "build",
        "--no-isolation",
        "--wheel",
        "--outdir",
        str(floor_dist),
        str(ROOT),
    )
    floor_wheels = sorted(floor_dist.glob("*.whl"))
    problems = []
    contents = {}
    for label, whl in (("build", wheels[0]), (floor_label, floor_wheels[0])):
        problems += check_wheel(whl, label)
        with zipfile.ZipFile(whl) as zf:
            contents[label] = sorted(n for n in zf.namelist() if not n.endswith("RECORD"))
    a, b = contents.values()
    if a != b:
        problems.append(
            f"{floor_label} builds other files than the current backend: {sorted(set(a) ^ set(b))}"
        )
    if problems:
        fail(session, "packaging", *problems)
    version = wheels[0].name.split("-")[1]
    (RUN_DIR / "wheel.json").write_text(json.dumps({"wheel": str(wheels[0]), "version": version}))
    record(
        "packaging",
        status="pass",
        setup_s=time.monotonic() - t0,
        detail=f"{wheels[0].name}, sdist; twine --strict ok; {floor_label} wheel identical",
    )


def probe_dists(session: nox.Session) -> dict[str, str]:
    out = session.run(
        "python",
        "-c",
        "import json, importlib.metadata as m; print('PROBE ' + json.dumps("
        "{d.metadata['Name']: d.version for d in m.distributions()}))",
        silent=True,
    )
    line = [x for x in str(out).splitlines() if x.startswith("PROBE ")][-1]
    return {canon(k): v for k, v in json.loads(line[len("PROBE ") :]).items()}


def same(installed: str | None, floor: str) -> bool:
    return installed is not None and Version(installed) == Version(floor)


def fail(session: nox.Session, leg: str, *problems: str) -> None:
    record(leg, status="FAIL", failures=list(problems))
    session.error("\n".join(problems))


def check_wheel(whl: Path, label: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            return [f"{label}: no METADATA in {whl.name}"]
        headers = zf.read(meta_name).decode().split("\n\n", 1)[0].splitlines()
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
# A leg: install, check what is installed, run DEPS_TESTS (less its exclusions).
def leg_tests(session: nox.Session, leg: Leg) -> list[str]:
    missing = [t for t in leg.tests if not (ROOT / t).exists()]
    if missing:
        fail(session, leg.name, f"test files missing: {missing} (update DEPS_TESTS in noxfile.py)")
    return [t for t in leg.tests if t not in leg.exclude]


def test_tree(leg: Leg) -> Path:
    """The repository less the package (and what is not source), for the wheel leg.

    Tests, examples, README.md, docs/... as the tests may read them; presence_kit/ is the
    wheel's. installed_check.py goes along as a pytest plugin that asserts it.
    """
    tree = RUN_DIR / f"{leg.name}-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    skip = {
        "presence_kit",
        ".git",
        ".venv",
        ".nox",
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
            shutil.copytree(entry, tree / entry.name, ignore=junk, symlinks=True)
        else:
            shutil.copy2(entry, tree / entry.name)
    shutil.copy2(ROOT / ".ci" / "installed_check.py", tree / "presence_ci_installed_check.py")
    return tree


def install_leg(session: nox.Session, leg: Leg) -> tuple[Path, str | None]:
    """Install the leg's environment; -> (where its tests run, the built wheel's version)."""
    me = PROJECT["name"]
    extras = ",".join(leg.extras)
    # Wheels only (as pip's --only-binary=:all:), but the package itself from the checkout.
    editable = [*WHEELS_ONLY, "--no-binary", me, "--reinstall-package", me, "-e"]
    if leg.wheel:
        built = json.loads((RUN_DIR / "wheel.json").read_text())
        # The freshly built wheel, over whatever an older run left (the deps stay).
        wheel = f"{built['wheel']}[{extras}]"
        session.install(*WHEELS_ONLY, "--reinstall-package", me, "--refresh-package", me, wheel)
        return test_tree(leg), built["version"]
    if leg.floor_tables is not None:
        # The runtime deps and the floor tables' at their floors: uv's lowest-direct
        # resolution (transitive deps at their latest).
        pins = [f"{name}=={version}" for name, version in leg.floor_overrides.items()]
        session.install(
            "--resolution",
            "lowest-direct",
            *editable,
            f"{ROOT}[{','.join(leg.floor_tables)}]",
            *leg.floor_reqs,
            *pins,
        )
        # The test tools at their latest that the floors allow: the floors stay put (as
        # constraints), a tool that needs a newer one comes in an older release.
        have = probe_dists(session)
        constraints = RUN_DIR / f"{leg.name}-floors.txt"
        constraints.write_text(
            "".join(f"{n}=={have[n]}\n" for n in leg.expected_floors if n in have)
        )
        session.install(*WHEELS_ONLY, "-c", str(constraints), *leg.tools)
        return ROOT, None
    session.install(*editable, f"{ROOT}[{extras}]", *leg.reqs)
    return ROOT, None


def check_installed(
    leg: Leg, info: dict, tree: Path, wheel_version: str | None, venv: str
) -> list[str]:
    problems = []
    if leg.floor_tables is not None:
        for name, floor in leg.expected_floors.items():
            have = info["dists"].get(name)
            if not same(have, floor):
                problems.append(f"{name} {have or 'not installed'}, but its floor is {floor}")
    if leg.hiredis is not None and info["hiredis"] is not leg.hiredis:
        problems.append(
            f"redis.utils.HIREDIS_AVAILABLE is {info['hiredis']}, expected {leg.hiredis}"
        )
    exe = Path(venv) / "bin" / "presence-kit"
    cli = subprocess.run([str(exe), "--version"], cwd=tree, capture_output=True, text=True)
    want = f"presence-kit {wheel_version or info['version']}"
    if cli.returncode != 0 or cli.stdout.strip() != want:
        problems.append(
            f"`presence-kit --version` printed {cli.stdout.strip()!r} "
            f"(rc {cli.returncode}, {cli.stderr.strip()[-300:]!r}), want {want!r}"
        )
    if leg.wheel and not Path(info["file"]).resolve().is_relative_to(Path(venv).resolve()):
        problems.append(f"presence_kit imported from {info['file']}, not the venv")
    return problems


def junit_counts(xml: Path) -> tuple[dict[str, int], list[str]]:
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    if not xml.exists():
        return counts, failures
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts["failed"] = int(suite.get("failures", 0))
    counts["errors"] = int(suite.get("errors", 0))
    counts["skipped"] = int(suite.get("skipped", 0))
    counts["passed"] = int(suite.get("tests", 0)) - sum(counts.values())
    for case in suite.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            cid = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            message = (bad.get("message") or "").strip().splitlines()
            failures.append(f"{cid}: {message[0][:200] if message else bad.tag}")
    return counts, failures


def run_leg(session: nox.Session, leg: Leg) -> None:
    t0 = time.monotonic()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"{leg.name}.json").unlink(missing_ok=True)
    record(leg.name, python=python_version(session), status="FAIL", failures=[])
    tests = leg_tests(session, leg)
    tree, wheel_version = install_leg(session, leg)
    venv = str(session.virtualenv.location)
    with session.chdir(tree):
        info = probe(session)
    versions = {d: info["dists"][d] for d in KEY_DISTS if d in info["dists"]}
    setup_s = time.monotonic() - t0
    record(leg.name, versions=versions, setup_s=setup_s)
    session.log(f"presence_kit {info['version']} imported from {info['file']}")
    session.log(", ".join(f"{KEY_DISTS[d]} {v}" for d, v in versions.items()))
    problems = check_installed(leg, info, tree, wheel_version, venv)
    for p in problems:
        session.warn(p)

    xml = RUN_DIR / f"{leg.name}.xml"
    xml.unlink(missing_ok=True)
    plugin = ["-p", "presence_ci_installed_check"] if leg.wheel else []
    cmd = ["python", "-m", "pytest", "-p", "no:cacheprovider", *plugin, "-q", "-rfE"]
    cmd += ["--tb=short", f"--junitxml={xml}", "-o", "junit_family=xunit2", *tests]
    env = {"PYTHONNOUSERSITE": "1", "PRESENCE_CI_VENV": venv}
    t1 = time.monotonic()
    rc = 0
    with session.chdir(tree):
        try:
            # coreutils' timeout: the whole run, beside pytest-timeout's per-test limit.
            session.run("timeout", "-k", "30", str(LEG_TIMEOUT), *cmd, env=env, external=True)
        except nox.command.CommandFailed as exc:
            rc = getattr(exc, "return_code", None) or 1
    test_s = time.monotonic() - t1
    counts, failures = junit_counts(xml)
    problems += failures
    if rc == 124:
        problems.append(f"pytest did not finish in {LEG_TIMEOUT} s")
    elif rc == 5:
        problems.append("pytest collected no tests (exit 5)")
    elif rc != 0 and not counts["failed"] and not counts["errors"]:
        problems.append(f"pytest exited {rc}")
    if counts["passed"] == 0 and rc != 5:
        problems.append("no test passed")
    detail = ""
    if leg.mypy:
        detail = run_mypy(session, problems)
    status = "FAIL" if (rc != 0 or problems) else "pass"
    record(leg.name, status=status, failures=problems, test_s=test_s, detail=detail, **counts)
    session.log(
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped in {test_s:.0f} s -> {status}"
    )
    if status != "pass":
        session.error("\n".join(problems[:40]) or f"pytest exited {rc}")


def run_mypy(session: nox.Session, problems: list[str]) -> str:
    """mypy --strict (pyproject's config) of the package against the leg's versions."""
    t0 = time.monotonic()
    out = str(
        session.run(
            "python",
            "-m",
            "mypy",
            "--cache-dir",
            os.devnull,
            "presence_kit",
            silent=True,
            success_codes=[0, 1],
        )
    )
    print(out, end="", flush=True)
    lines = out.strip().splitlines() or ["(no output)"]
    detail = f"mypy: {lines[-1]} ({time.monotonic() - t0:.0f} s)"
    if not lines[-1].startswith("Success") and not MYPY_BLOCKS:
        detail += " (advisory; PRESENCE_CI_MYPY_BLOCKS=1 makes it fail the leg)"
    elif not lines[-1].startswith("Success"):
        problems.append("mypy presence_kit: " + lines[-1])
        problems += [f"  mypy: {line}" for line in lines[:-1][:40]]
    return detail


def _leg_session(leg: Leg) -> Callable[[nox.Session], None]:
    def session_func(session: nox.Session) -> None:
        run_leg(session, leg)

    session_func.__doc__ = f"{leg.doc} (python {leg.python})"
    return session_func


for _leg in LEGS:
    nox.session(
        name=_leg.name,
        python=_leg.python,
        requires=["packaging"] if _leg.wheel else None,
    )(_leg_session(_leg))


# ---------------------------------------------------------------------------------------
# The whole matrix: PRESENCE_CI_JOBS (2) nox processes at a time, one per leg (packaging
# and latest-wheel in one: the wheel), longest first, each taking the next leg when it is
# done; each leg's output is printed as one block when it ends; then the summary.
def units(legs: list[str]) -> list[list[str]]:
    """The nox invocations, longest first (by WEIGHTS)."""
    wheel_unit = [n for n in ("packaging", "latest-wheel") if n in legs]
    out = [wheel_unit] if wheel_unit else []
    out += [[n] for n in legs if n not in wheel_unit]
    return sorted(out, key=lambda u: -sum(WEIGHTS.get(n, 60) for n in u))


def run_units(session: nox.Session, todo: list[list[str]]) -> None:
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                unit = todo.pop(0)
                session.log(f"start {' '.join(unit)}")
            label = "+".join(unit)
            log = RUN_DIR / f"{label}.log"
            cmd = [sys.executable, "-m", "nox", "-f", str(ROOT / "noxfile.py"), "--no-color"]
            cmd += ["--report", str(RUN_DIR / f"{label}.report.json"), "-s", *unit]
            t0 = time.monotonic()
            with open(log, "w") as fh:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
            with lock:  # one leg's output as one block, whatever runs beside it
                bar = "#" * 20
                print(f"\n{bar} {label}: nox output {bar}", flush=True)
                print(log.read_text(errors="replace"), end="", flush=True)
                print(f"{bar} end of {label} (exit {rc}) {bar}\n", flush=True)
                session.log(f"{label}: exit {rc} in {time.monotonic() - t0:.0f} s")

    threads = [threading.Thread(target=worker) for _ in range(max(1, JOBS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """Every leg (or those named after --), two at a time, and the summary."""
    if min_python() != classifier_pythons()[0]:
        session.error(
            f"requires-python >={min_python()} but the oldest classifier is "
            f"{classifier_pythons()[0]}"
        )
    wanted = session.posargs or LEG_NAMES
    unknown = set(wanted) - set(LEG_NAMES)
    if unknown:
        session.error(f"unknown legs {sorted(unknown)}; `nox -l` lists them")
    if "latest-wheel" in wanted and "packaging" not in wanted:
        wanted = ["packaging", *wanted]  # its wheel
    # Venvs of an older key (other deps, noxfile, Pythons or week) go, and so do those of
    # the former .ci/matrix.py (<cache>/<leg>-<hash>/.complete).
    for old in (CACHE / "nox").glob("*"):
        if old.name != ENV_KEY and re.fullmatch(r"[0-9a-f]{16}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    for old in CACHE.glob("*-*/.complete"):
        if re.fullmatch(r"[a-z0-9.-]+-[0-9a-f]{16}", old.parent.name):
            shutil.rmtree(old.parent, ignore_errors=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    legs_pythons = {leg.python for leg in LEGS if not leg.name.startswith("smoke-")}
    session.log(
        f"{'CI' if CI else 'local'} run; venvs {nox.options.envdir}; pythons "
        + ", ".join(f"{m} {p}" for m, p in sorted(PYTHONS.items(), key=lambda i: Version(i[0])))
    )
    session.log(
        f"classifiers {', '.join(classifier_pythons())}; covered by the legs and `make test` "
        f"({HOST}): {', '.join(sorted(legs_pythons | {HOST}, key=Version))}"
    )
    t0 = time.monotonic()
    run_units(session, units(list(wanted)))
    summary(session, list(wanted), time.monotonic() - t0)


def summary(session: nox.Session, wanted: list[str], elapsed: float) -> None:
    results: dict[str, dict] = {}
    for report in RUN_DIR.glob("*.report.json"):
        for entry in json.loads(report.read_text())["sessions"]:
            results[entry["name"]] = entry
    by_name = {leg.name: leg for leg in LEGS}
    rows = [
        ("leg", "python", "key versions", "passed/failed/err/skip", "result", "setup s", "test s")
    ]
    extra_lines, fail_lines, bad = [], [], []
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for name in LEG_NAMES:
        if name not in wanted:
            continue
        path = RUN_DIR / f"{name}.json"
        rec = json.loads(path.read_text()) if path.exists() else {}
        nox_result = results.get(name, {}).get("result", "not run")
        python = by_name[name].python if name in by_name else HOST
        status = rec.get("status", "FAIL")
        failures = list(rec.get("failures", []))
        if nox_result == "skipped" and python not in PYTHONS:
            msg = f"Python {python} is not installed (pyenv versions --bare)"
            status = "FAIL" if CI else "skip"
            rec["detail"] = msg
            if CI:
                failures.append(msg + "; CI needs every leg")
            else:
                session.warn(f"NOTICE: {name} skipped: {msg}")
        elif nox_result != "success":
            status = "FAIL"
            if not failures:
                failures.append(f"nox: {nox_result} {results.get(name, {}).get('reason') or ''}")
        if status == "FAIL":
            bad.append(name)
        versions = rec.get("versions", {})
        short = ", ".join(f"{KEY_DISTS[d]} {versions[d]}" for d in SHORT_DISTS if d in versions)
        counts = "-"
        if name != "packaging" and status != "skip" and "passed" in rec:
            counts = f"{rec['passed']}/{rec['failed']}/{rec['errors']}/{rec['skipped']}"
            totals["passed"] += rec["passed"]
            totals["failed"] += rec["failed"] + rec["errors"]
            totals["skipped"] += rec["skipped"]
        rows.append(
            (
                name,
                rec.get("python", python),
                short or "-",
                counts,
                status,
                f"{rec.get('setup_s', 0):.0f}",
                f"{rec.get('test_s', 0):.0f}",
            )
        )
        more = [f"{KEY_DISTS[d]}={v}" for d, v in versions.items() if d not in SHORT_DISTS]
        if more or rec.get("detail"):
            extra_lines.append(
                f"{name}: {rec.get('detail', '')}" + (" | " + ", ".join(more) if more else "")
            )
        if failures:
            fail_lines.append(f"\n{name} failures:")
            fail_lines += [f"  - {f}" for f in group_failures(failures)[:80]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n" + "=" * 30 + " compatibility matrix " + "=" * 30)
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("+".join("-" * (w + 2) for w in widths))
    print()
    print("\n".join(extra_lines + fail_lines))
    print(
        f"\nmatrix {'FAILED: ' + ', '.join(bad) if bad else 'ok'} in {elapsed:.0f} s "
        f"(venvs {nox.options.envdir}; logs, JUnit XML and the wheel in {RUN_DIR})"
    )
    print(
        f"matrix: {totals['passed']} passed, {totals['failed']} failed, "
        f"{totals['skipped']} skipped",
        flush=True,
    )
    if bad:
        session.error(f"failed legs: {', '.join(bad)}")


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
