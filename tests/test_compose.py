"""docker-compose.yml and the Dockerfile, checked without a Docker engine (CI has none).

What a ``docker compose up`` would find out late, found here: every command and probe names a
module, Celery app, sub-command and option that exist; every setting a service's environment
gives validates with the library's own checker (``read_settings``, through the example's real
settings module); every host a URL names, every ``depends_on`` and every volume is defined; the
probes compare exit codes that ``singleton_tasks.cli`` defines and map them to Docker's; the
Dockerfile copies what exists and installs an extra that exists. Each check returns problems,
so ``test_the_checks_catch_a_broken_file`` proves on a broken copy that they would fail.
Finally the probes run for real, as Docker would run them, against real redis-servers and a real
``celery beat`` started with the beat service's own command and environment.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlsplit

import pytest
import yaml
from celery.bin.celery import celery as celery_cli

from procs import Procs, wait_for
from singleton_tasks import ConfigurationError, cli
from singleton_tasks.conf import Settings, read_settings
from test_example_project import SETTINGS_MODULE, celery_conf, clean_env, example_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
README = REPO / "README.md"

#: The codes ``celery singleton health`` exits with; a probe compares no others.
HEALTH_CODES = {cli.HEALTHY, cli.STORE_UNREACHABLE, cli.NOT_LEADER, cli.STALE}
#: What Docker reads from a probe: 0 healthy, 1 unhealthy (2 is reserved).
DOCKER_CODES = {0, 1}
SHELL_OPERATORS = {";", "&&", "||", "|", "(", ")", "&"}


# -- reading the file as Compose does -----------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                       r"|(?P<bare>[A-Za-z_]\w*)|(?P<bad>))")


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ``$$``, ``${X}``, ``${X:-default}``, ``${X-default}``, ``${X:?error}``, ``$X``."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        if match["bad"] is not None:
            raise ValueError(f"invalid interpolation in {value!r}: a lone $ (write $$)")
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        given = variables.get(name)
        unset = given is None or (op is not None and op.startswith(":") and given == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return given or ""

    return _VARIABLE.sub(one, value)


def load(variables: Mapping[str, str] | None = None, text: str | None = None) -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    return interpolate(doc, variables or {})  # type: ignore[no-any-return]


def active(doc: Mapping[str, Any], profiles: set[str]) -> dict[str, Any]:
    """The services ``docker compose --profile P... up`` starts: those without profiles, and those of P."""
    return {name: svc for name, svc in doc["services"].items()
            if not svc.get("profiles") or set(svc["profiles"]) & profiles}


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def is_django(service: Mapping[str, Any]) -> bool:
    return env_of(service).get("DJANGO_SETTINGS_MODULE") == SETTINGS_MODULE


ETCD_COMMAND = re.compile(r"SINGLETON_BACKEND_URL=(\S+) docker compose --profile etcd up")


def etcd_variables() -> dict[str, str]:
    """The variables of the etcd command the file's header shows (README's Deployment section shows the same)."""
    found = ETCD_COMMAND.search(COMPOSE.read_text())
    assert found, "docker-compose.yml's header shows how to start with the etcd profile"
    return {"SINGLETON_BACKEND_URL": found[1]}


#: (variables, profiles) of each documented way to start the file.
SCENARIOS = {"redis": lambda: ({}, set()), "etcd": lambda: (etcd_variables(), {"etcd"})}


# -- commands -----------------------------------------------------------------------------


def simple_commands(shell: str) -> list[list[str]]:
    """A shell line's simple commands (split at ; && || | and parentheses)."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def argvs(service: Mapping[str, Any]) -> list[tuple[str, list[str], str | None]]:
    """(where, argv, shell line or None) of a service's command and its health check's commands."""
    out: list[tuple[str, list[str], str | None]] = []
    command = service.get("command")
    if command:
        out.append(("command", shlex.split(command) if isinstance(command, str) else list(command), None))
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if test and test[0] == "CMD":
        out.append(("healthcheck", list(test[1:]), None))
    elif test and test[0] == "CMD-SHELL":
        out += [("healthcheck", argv, test[1]) for argv in simple_commands(test[1])]
    return out


def _options(command: Any) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}


def _unknown_options(command: Any, args: list[str]) -> list[str]:
    known = _options(command)
    return [a for a in args if a.startswith("-") and a.split("=", 1)[0] not in known]


def celery_problems(where: str, argv: list[str], need: dict[str, set[str]]) -> list[str]:
    """Check ``celery [-A APP] SUB [SUBSUB] OPTIONS`` against Celery's own command line (with its plugins)."""
    problems: list[str] = []
    args = argv[1:]
    app = None
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option not in _options(celery_cli):
            problems.append(f"{where}: celery has no option {option}")
        elif option in ("-A", "--app"):
            app = args.pop(0)
        elif celery_cli_option_takes_value(option):
            args.pop(0)
    if app is None:
        problems.append(f"{where}: no -A: Celery would not find the project's app")
    else:
        need["app"].add(app)
    if not args or args[0] not in celery_cli.commands:
        return problems + [f"{where}: celery has no command {args[:1]}"]
    command, args = celery_cli.commands[args[0]], args[1:]
    if hasattr(command, "commands"):  # a group: `celery singleton health ...`
        if not args or args[0] not in command.commands:
            return problems + [f"{where}: celery {command.name} has no command {args[:1]}"]
        command, args = command.commands[args[0]], args[1:]
        try:  # our own commands: values too (e.g. --max-age must be > 0)
            command.make_context(command.name, list(args))
        except Exception as exc:  # click's usage errors
            problems.append(f"{where}: celery ... {command.name} {' '.join(args)}: {exc}")
    problems += [f"{where}: celery {command.name} has no option {o}" for o in _unknown_options(command, args)]
    return problems


def celery_cli_option_takes_value(option: str) -> bool:
    return any(option in p.opts and not getattr(p, "is_flag", False) for p in celery_cli.params)


def python_problems(where: str, argv: list[str], need: dict[str, set[str]]) -> list[str]:
    if argv[1:2] == ["-m"]:
        need["module"].add(argv[2])
        if argv[2] == "example_project.manage" and len(argv) > 3:
            need["manage"].add(argv[3])
        return []
    if argv[1:2] == ["-c"]:
        for node in ast.walk(ast.parse(argv[2])):
            if isinstance(node, ast.Import):
                need["module"].update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                need["name"].update(f"{node.module}:{alias.name}" for alias in node.names)
        return []
    return [f"{where}: python {' '.join(argv[1:2])}: only -m MODULE and -c CODE are checked"]


#: Run in a fresh process with the example's settings, so the imports leave this one untouched.
RESOLVER = r"""
import importlib, importlib.util, json, sys
need = json.loads(sys.argv[1])
problems = []
from celery.app.utils import find_app
for app in need["app"]:
    try:
        find_app(app)  # what `celery -A APP` does
    except Exception as exc:
        problems.append(f"celery -A {app}: {type(exc).__name__}: {exc}")
for module in need["module"]:
    try:
        spec = importlib.util.find_spec(module)
    except ImportError as exc:
        spec = None
    if spec is None:
        problems.append(f"python -m {module}: no such module")
    elif spec.submodule_search_locations is not None and importlib.util.find_spec(module + ".__main__") is None:
        problems.append(f"python -m {module}: a package without __main__")
for name in need["name"]:
    module, attr = name.split(":")
    try:
        found = importlib.import_module(module)
        if not hasattr(found, attr):
            importlib.import_module(f"{module}.{attr}")
    except ImportError as exc:
        problems.append(f"from {module} import {attr}: {exc}")
if need["manage"]:
    import django
    django.setup()
    from django.core.management import get_commands
    problems += [f"manage.py has no command {c}" for c in need["manage"] if c not in get_commands()]
print(json.dumps(problems))
"""


def command_problems(services: Mapping[str, Any]) -> list[str]:
    """Every command and probe of the project's image names something that exists."""
    need: dict[str, set[str]] = {"app": set(), "module": set(), "name": set(), "manage": set()}
    problems: list[str] = []
    for name, svc in services.items():
        if "build" not in svc:
            continue  # an image of its own (redis, etcd, postgres): its commands are its own
        for where, argv, _ in argvs(svc):
            label = f"{name} {where}"
            if argv[0] == "celery":
                problems += celery_problems(label, argv, need)
            elif argv[0] == "python":
                problems += python_problems(label, argv, need)
            elif argv[0] not in {"exit", "[", "test", "true"} and not re.fullmatch(r"\w+=\S*", argv[0]):
                problems.append(f"{label}: {argv[0]} is neither celery nor python")
    done = subprocess.run([sys.executable, "-c", RESOLVER, json.dumps({k: sorted(v) for k, v in need.items()})],
                          cwd=REPO, env=clean_env(DATABASE_URL="sqlite://"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return problems + json.loads(done.stdout)


# -- settings, hosts, dependencies --------------------------------------------------------


def service_settings(service: Mapping[str, Any]) -> tuple[dict[str, Any], Settings]:
    """The example's settings as this service's environment makes them, and the library's view of them."""
    settings = example_settings(env_of(service))
    return settings, read_settings(celery_conf(settings))


def url_hosts(settings: Mapping[str, Any], s: Settings) -> list[tuple[str, str]]:
    """(what, host) of every server the settings name."""
    hosts = [("broker", urlsplit(settings["CELERY_BROKER_URL"]).hostname),
             ("billing API", urlsplit(settings["BILLING_API_URL"]).hostname),
             ("database", settings["DATABASES"]["default"].get("HOST") or None)]
    for url in s.backend_urls:  # an etcd URL lists every endpoint: host:port,host:port
        hosts += [("lease store", urlsplit(f"x://{endpoint}").hostname)
                  for endpoint in urlsplit(url).netloc.rsplit("@", 1)[-1].split(",")]
    return [(what, host) for what, host in hosts if host]


def wiring_problems(doc: Mapping[str, Any], profiles: set[str]) -> list[str]:
    services = active(doc, profiles)
    problems: list[str] = []
    for name, svc in services.items():
        depends = svc.get("depends_on") or {}
        for dep in depends:
            if dep not in doc["services"]:
                problems.append(f"{name}: depends_on {dep}, which is not a service")
            elif dep not in services:
                problems.append(f"{name}: depends_on {dep}, which this profile does not start")
        for volume in svc.get("volumes") or []:
            source = (volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source"))
            if source and not source.startswith((".", "/")) and source not in (doc.get("volumes") or {}):
                problems.append(f"{name}: volume {source} is not declared")
        if not is_django(svc):
            continue
        try:
            settings, s = service_settings(svc)
        except (ConfigurationError, ValueError) as exc:
            problems.append(f"{name}: its settings do not validate: {exc}")
            continue
        for what, host in url_hosts(settings, s):
            if host not in services:
                problems.append(f"{name}: the {what} is {host}, which is not a service that starts")
        db = settings["DATABASES"]["default"]
        if db["HOST"] in services:
            pg = env_of(services[db["HOST"]])
            if (db["NAME"], db["USER"], db["PASSWORD"]) != (pg.get("POSTGRES_DB"), pg.get("POSTGRES_USER"),
                                                             pg.get("POSTGRES_PASSWORD")):
                problems.append(f"{name}: DATABASE_URL does not match the {db['HOST']} service's database")
    return problems


# -- probes -------------------------------------------------------------------------------


def _seconds(value: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", value)
    assert found, value
    return float(found[1]) * {"ms": 0.001, "s": 1, "m": 60}[found[2]]


def probe_problems(services: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    health = celery_cli.commands["singleton"].commands["health"]
    for name, svc in services.items():
        check = svc.get("healthcheck") or {}
        probes = [(argv, shell) for where, argv, shell in argvs(svc)
                  if where == "healthcheck" and argv[:1] == ["celery"] and "health" in argv]
        if not probes:
            continue
        _, s = service_settings(svc)
        timeout = _seconds(check.get("timeout", "30s"))
        for argv, shell in probes:
            params = health.make_context("health", argv[argv.index("health") + 1:]).params
            leader, max_age = params["leader"], params["max_age"]
            if max_age is not None and not leader and max_age < s.lease_ttl + 1:
                problems.append(f"{name}: health --max-age {max_age:g} is below the lease TTL + 1 s "
                                f"({s.lease_ttl:g} s): a takeover in progress would fail it")
            if max_age is not None and leader and not s.renew_interval < max_age < s.lease_ttl:
                problems.append(f"{name}: health --leader --max-age {max_age:g} is not between the renew interval "
                                f"({s.renew_interval:.3g} s) and the TTL ({s.lease_ttl:g} s)")
            if max_age is not None and timeout <= max_age:
                problems.append(f"{name}: the probe's timeout ({timeout:g} s) is not above --max-age {max_age:g}")
            if leader and shell is None:
                problems.append(f"{name}: health --leader's code goes to Docker as it is: 2 (a standby) is reserved")
        shells = {shell for _, shell in probes if shell is not None}
        for shell in shells:
            compared = {int(code) for code in re.findall(r"-(?:eq|ne)\s+(\d+)", shell)}
            if compared - HEALTH_CODES:
                problems.append(f"{name}: the probe compares {sorted(compared - HEALTH_CODES)}: "
                                f"not codes of celery singleton health ({sorted(HEALTH_CODES)})")
            if re.search(r"health\s+--leader", shell) and compared != {cli.HEALTHY, cli.NOT_LEADER}:
                problems.append(f"{name}: a --leader probe runs on every replica: it must pass on "
                                f"{cli.HEALTHY} (leading) and {cli.NOT_LEADER} (a standby) only, not {sorted(compared)}")
            exits = {int(code) for code in re.findall(r"\bexit\s+(\d+)", shell)}
            if exits - DOCKER_CODES:
                problems.append(f"{name}: the probe exits {sorted(exits - DOCKER_CODES)}: Docker reads 0 and 1 only")
    hosts = [svc.get("hostname", name) for name, svc in services.items()
             if any("--leader" in argv for _, argv, _ in argvs(svc))]
    if len(hosts) != len(set(hosts)):
        problems.append(f"replicas probed with --leader share a hostname ({hosts}): each would pass as the leader")
    return problems


# -- the Dockerfile -----------------------------------------------------------------------


def dockerfile_problems(text: str) -> list[str]:
    problems: list[str] = []
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()]
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    if ["FROM", "python:3.11-slim"] not in [[i[0], i[1].strip()] for i in instructions if len(i) == 2]:
        problems.append("the image is not built FROM python:3.11-slim")
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")] if (REPO / ".dockerignore").exists() else []
    copied: set[str] = set()
    for instruction in instructions:
        if instruction[0] != "COPY":
            continue
        *sources, _ = shlex.split(instruction[1])
        for source in sources:
            copied.add(source)
            if not (REPO / source).exists():
                problems.append(f"COPY {source}: no such file in the repository")
            if any(fnmatch.fnmatch(source, pattern.removeprefix("**/")) for pattern in ignored):
                problems.append(f"COPY {source}: .dockerignore leaves it out of the build context")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    if project.get("readme") and project["readme"] not in copied:
        problems.append(f"pyproject.toml's readme {project['readme']} is not copied: the install reads it")
    for extras in re.findall(r"pip install[^\n]*?-e\s+'?\.\[([^\]]*)\]", text):
        for extra in extras.split(","):
            if extra not in project.get("optional-dependencies", {}):
                problems.append(f"pip install -e '.[{extra}]': pyproject.toml has no extra {extra}")
    if not re.search(r"pip install[^\n]*-e\s+'?\.\[", text):
        problems.append("the image does not pip install -e '.[...]' the project")
    return problems


# -- the tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load()["services"]  # type: ignore[no-any-return]


def test_the_file_has_the_services_the_deployment_needs(services) -> None:
    redis_nodes = [n for n in services if re.fullmatch(r"redis-\d", n)]
    assert len(redis_nodes) == 3
    for node in redis_nodes:  # the README's advice for lease nodes, on every one
        command = " ".join(services[node]["command"])
        for advice in ("--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction"):
            assert advice in command, (node, advice)
    etcd = [n for n, svc in services.items() if "etcd" in (svc.get("profiles") or [])]
    assert len(etcd) == 3, "the etcd profile is a 3-member cluster"
    for member in etcd:
        command = services[member]["command"]
        assert command[command.index("--name") + 1] == member
        cluster = command[command.index("--initial-cluster") + 1]
        assert sorted(part.split("=")[0] for part in cluster.split(",")) == sorted(etcd)
    celery_roles = [svc["command"][3] for svc in services.values() if svc.get("command", [""])[0] == "celery"]
    assert sorted(celery_roles) == ["beat", "beat", "worker", "worker"], "two workers and two beat replicas"
    assert "example_project.api" in services["api"]["command"] and "runserver" in services["web"]["command"]
    assert services["postgres"]["image"].startswith("postgres:")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_setting_host_and_dependency(scenario) -> None:
    variables, profiles = SCENARIOS[scenario]()
    doc = load(variables)
    assert wiring_problems(doc, profiles) == []
    beats = {name: svc for name, svc in active(doc, profiles).items() if " beat" in " ".join(svc.get("command") or [])}
    for name, svc in beats.items():
        _, s = service_settings(svc)
        assert s.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler", name
        assert s.backend_urls[0].startswith("etcd://" if scenario == "etcd" else "redis://"), s.backend_urls
        if scenario == "redis":
            assert len(s.backend_urls) == 3, "a quorum of the three Redis nodes"


def test_every_command_names_what_exists(services) -> None:
    assert command_problems(services) == []


def test_probes_use_the_health_exit_codes(services) -> None:
    assert probe_problems(services) == []
    probed = {name for name, svc in services.items() if any("health" in argv for _, argv, _ in argvs(svc))}
    assert {"worker-1", "worker-2", "beat-1", "beat-2"} <= probed


def test_the_dockerfile() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_the_checks_catch_a_broken_file(services) -> None:
    """Each check fails on a file broken the way it guards against."""
    broken = copy.deepcopy(services)
    broken["worker-1"]["command"] = [a.replace("example_project.djangoproj", "example_project.nosuchproj")
                                     for a in broken["worker-1"]["command"]]
    broken["api"]["command"][2] = "example_project.no_api"
    broken["web"]["command"][3] = "runservr"
    broken["beat-1"]["command"][3] = "beet"
    broken["worker-2"]["healthcheck"]["test"] = ["CMD", "celery", "-A", "example_project.djangoproj", "singleton",
                                                 "health", "--leeder"]
    problems = "\n".join(command_problems(broken))
    for expected in ("celery -A example_project.nosuchproj", "python -m example_project.no_api: no such module",
                     "manage.py has no command runservr", "beat-1 command: celery has no command ['beet']",
                     "--leeder"):
        assert expected in problems, (expected, problems)

    doc = load()
    doc["services"]["beat-1"]["depends_on"]["redis-4"] = {"condition": "service_healthy"}
    doc["services"]["worker-1"]["environment"]["SINGLETON_LEASE_TTL"] = "0.1"
    doc["services"]["worker-2"]["environment"]["CELERY_BROKER_URL"] = "redis://brokr:6379/0"
    doc["services"]["web"]["environment"]["DATABASE_URL"] = "postgresql://app:wrong@postgres:5432/app"
    problems = "\n".join(wiring_problems(doc, set()))
    for expected in ("beat-1: depends_on redis-4", "worker-1: its settings do not validate: singleton_lease_ttl=0.1",
                     "worker-2: the broker is brokr", "web: DATABASE_URL does not match"):
        assert expected in problems, (expected, problems)
    etcd_url = etcd_variables()
    assert "the lease store is etcd-1, which is not a service that starts" in "\n".join(
        wiring_problems(load(etcd_url), set())), "an etcd URL without the etcd profile"

    probes = copy.deepcopy(services)
    probes["beat-1"]["healthcheck"]["test"][1] = probes["beat-1"]["healthcheck"]["test"][1].replace("-eq 2", "-eq 4")
    probes["beat-2"]["healthcheck"]["test"] = ["CMD", "celery", "-A", "x", "singleton", "health", "--leader"]
    probes["beat-2"]["hostname"] = "beat-1"
    probes["worker-1"]["healthcheck"]["test"] = ["CMD-SHELL", "celery -A x singleton health --max-age 2 || exit 3"]
    problems = "\n".join(probe_problems(probes))
    for expected in ("beat-1: the probe compares [4]", "beat-2: health --leader's code goes to Docker",
                     "share a hostname", "worker-1: health --max-age 2 is below", "worker-1: the probe exits [3]"):
        assert expected in problems, (expected, problems)

    dockerfile = DOCKERFILE.read_text().replace("COPY example_project", "COPY example_projekt").replace(
        "[example]", "[exampel]").replace("README.md ", "")
    problems = "\n".join(dockerfile_problems(dockerfile))
    for expected in ("COPY example_projekt: no such file", "no extra exampel", "readme README.md is not copied"):
        assert expected in problems, (expected, problems)


def test_the_readme_starts_it_as_the_file_says() -> None:
    section = README.read_text().split("## Deployment", 1)[1].split("\n## ", 1)[0]
    found = ETCD_COMMAND.search(section)
    assert found and {"SINGLETON_BACKEND_URL": found[1]} == etcd_variables()
    for name in ("docker-compose.yml", "Dockerfile", "singleton health --leader"):
        assert name in section


def test_interpolation_is_compose_s() -> None:
    variables = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$rc ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", variables) == "$rc v v d d  d"
    with pytest.raises(ValueError):
        interpolate("${UNSET:?needed}", variables)
    with pytest.raises(ValueError):
        interpolate("rc=$?", variables)  # Compose refuses a lone $: the file must write $$


# -- the probes, run as Docker runs them ---------------------------------------------------


def localize(env: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, str]:
    """The service's environment with compose host names (``redis-1:6379``) replaced by local addresses."""
    out = {}
    for key, value in env.items():
        for host, address in addresses.items():
            value = re.sub(rf"(?<=//){re.escape(host)}:\d+|(?<=,){re.escape(host)}:\d+", address, value)
        out[key] = value
    return out


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path / "procs", {})
    yield p
    p.close()


def run_probe(test: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """A health check's test as Docker runs it: CMD as argv, CMD-SHELL through /bin/sh -c."""
    argv = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
    return subprocess.run(argv, cwd=REPO, env=dict(env), capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(240)
def test_the_probes_pass_and_fail_for_real(services, redis_nodes_factory: Callable[..., Any], tmp_path: Path,
                                           procs: Procs) -> None:
    nodes = redis_nodes_factory(4)
    lease_nodes, broker = list(nodes)[:3], list(nodes)[3]
    addresses = {**{f"redis-{i}": f"127.0.0.1:{n.port}" for i, n in enumerate(lease_nodes, 1)},
                 "broker": f"127.0.0.1:{broker.port}", "api": "127.0.0.1:9"}
    bin_dir = str(Path(sys.executable).parent)  # `celery` as the image has it on PATH

    def env(service: str) -> dict[str, str]:
        return {**clean_env(), **localize(env_of(services[service]), addresses),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PYTHONPATH": str(REPO),
                "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}

    worker_probe, beat_probe = services["worker-1"]["healthcheck"]["test"], services["beat-1"]["healthcheck"]["test"]
    assert run_probe(worker_probe, env("worker-1")).returncode == 0, "the store answers"

    migrated = subprocess.run(services["migrate"]["command"], cwd=REPO, env=env("migrate"), capture_output=True,
                              text=True, timeout=180)
    assert migrated.returncode == 0, migrated.stderr
    procs.env = env("beat-1")
    beat = procs.start("beat-1", [sys.executable, "-m", *services["beat-1"]["command"]])
    s = service_settings({"environment": env("beat-1")})[1]
    lease = s.open_backend().lease("beat:" + s.beat_lease_name, s.lease_ttl)
    wait_for(lambda: lease.holder() is not None or not beat.alive, timeout=60, what="the beat replica to lead")
    assert beat.alive, procs.report()
    assert lease.holder()["pid"] == beat.pid
    leading = run_probe(beat_probe, env("beat-1"))
    assert leading.returncode == 0, (leading.stdout, leading.stderr, procs.report())

    beat.send(signal.SIGTERM)  # hands over: nobody leads now
    beat.wait(30)
    assert lease.holder() is None
    nobody = run_probe(beat_probe, env("beat-1"))
    assert nobody.returncode == 1 and "stale: nobody held" in nobody.stderr, (nobody.stdout, nobody.stderr)

    for node in lease_nodes:
        node.kill()
    down = run_probe(worker_probe, env("worker-1"))
    assert down.returncode == cli.STORE_UNREACHABLE, (down.stdout, down.stderr)
