"""docker-compose.yml runs only commands that exist and that the test suite runs too."""

from __future__ import annotations

import re
import shlex
from itertools import takewhile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from jobfit.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
JOBFIT_SERVICES = {
    name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "jobfit:latest"
}


def jobfit_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `jobfit`) of every service command and healthcheck."""
    out = []
    for name, svc in JOBFIT_SERVICES.items():
        out.append((f"{name}.command", list(svc["command"])))
        test = svc.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD-SHELL":
            argv = shlex.split(test[1])
            assert argv[0] == "jobfit", f"{name} healthcheck is not a jobfit command"
            out.append((f"{name}.healthcheck", argv[1:]))
    return out


def invocations_in_tests() -> dict[tuple[str, ...], set[str]]:
    """Command paths the tests start as processes (`python -m jobfit ...`), with every
    option literal found in the files that start them."""
    found: dict[tuple[str, ...], set[str]] = {}
    # tests/, and the worker harness the tests and the fault suite share
    for f in [*(ROOT / "tests").rglob("*.py"), ROOT / "tools" / "procs.py"]:
        text = f.read_text()
        options = set(re.findall(r'"(--[a-z][a-z-]*)"', text))
        for m in re.finditer(r'"-m",\s*"jobfit",([^\]]*)\]', text):
            literals = re.findall(r'"([^"]*)"', m.group(1))
            path = tuple(takewhile(lambda t: not t.startswith("-"), literals))
            if path:
                found.setdefault(path, set()).update(options)
    return found


def verb(argv: list[str]) -> tuple[str, ...]:
    return tuple(takewhile(lambda t: not t.startswith("-"), argv))


def test_compose_has_the_services_operators_expect():
    assert {
        "migrate",
        "model-init",
        "worker-embed",
        "worker-embed-cpu",
        "worker-train",
        "flower",
    } <= set(JOBFIT_SERVICES)
    gpu = JOBFIT_SERVICES["worker-embed"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize(("where", "argv"), jobfit_commands())
def test_compose_command_is_a_real_jobfit_invocation(where, argv):
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, (
        f"{where}: `jobfit {' '.join(argv)}` is not valid: {result.output}"
    )


@pytest.mark.parametrize(("where", "argv"), jobfit_commands())
def test_compose_command_is_one_the_tests_run(where, argv):
    tested = invocations_in_tests()
    path = verb(argv)
    assert path in tested, f"{where}: no test runs `jobfit {' '.join(path)}`"
    untested = {o for o in argv if o.startswith("--")} - tested[path]
    assert not untested, f"{where}: options {sorted(untested)} are never used by the tests"


def db_user(url: str) -> str:
    """The user name of a compose database URL (its password is a ${VARIABLE})."""
    m = re.fullmatch(r"postgresql\+psycopg://([^:@/]+):\$\{(\w+)[^}]*\}@postgres:5432/jobfit", url)
    assert m, f"not a database URL with its password from .env: {url}"
    return m.group(1)


def db_roles(svc: dict) -> dict[str, str]:
    """A service's database settings (JOBFIT_DB__*URL), by variable, as user names."""
    env = svc.get("environment", {})
    return {k: db_user(v) for k, v in env.items() if k.startswith("JOBFIT_DB__")}


def test_compose_gives_each_service_its_least_database_role():
    """The owner only migrates and grants; workers write as the writer; what reads, reads as
    the reader; what needs no database gets no role (README "Deploy")."""
    owner = COMPOSE["services"]["postgres"]["environment"]["POSTGRES_USER"]
    migrate = JOBFIT_SERVICES["migrate"]
    assert verb(migrate["command"]) == ("db", "upgrade") and "--grant" in migrate["command"]
    assert db_roles(migrate) == {
        "JOBFIT_DB__URL": owner,
        "JOBFIT_DB__WRITER_URL": "jobfit_writer",
        "JOBFIT_DB__READ_URL": "jobfit_reader",
    }
    workers = [n for n, s in JOBFIT_SERVICES.items() if s["command"][0] == "worker"]
    assert {"worker-embed", "worker-embed-cpu", "worker-train"} <= set(workers)
    for name in workers:
        assert db_roles(JOBFIT_SERVICES[name]) == {"JOBFIT_DB__URL": "jobfit_writer"}, name
    assert db_roles(JOBFIT_SERVICES["metrics"]) == {"JOBFIT_DB__URL": "jobfit_reader"}
    for name in ("flower", "model-init"):
        assert db_roles(JOBFIT_SERVICES[name]) == {}, name
    # Every jobfit service is one of these: none else holds a database role.
    assert set(JOBFIT_SERVICES) == {"migrate", "metrics", "flower", "model-init", *workers}
    others = [
        v for n, s in JOBFIT_SERVICES.items() if n != "migrate" for v in s["environment"].values()
    ]
    assert not [v for v in others if "POSTGRES_PASSWORD" in str(v)], "the owner's password leaks"
