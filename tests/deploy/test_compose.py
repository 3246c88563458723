"""docker-compose.yml, Dockerfile and .dockerignore agree with each other and with the repo:
every path they mount exists, every name they refer to is defined, Prometheus scrapes the
workers compose runs, Grafana loads the provisioning and dashboards compose mounts, the
workers' environment is one the project's own Settings accepts, and every long-running service
has a healthcheck that calls a tool its image has, on the port it listens on, at a path that
exists."""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import http.server
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from agents.commands.cli import DEFAULT_SANDBOX_KEY
from agents.devstack.broker import free_port
from agents.settings import Settings
from klaviyo_sandbox.admin import PREFIX as SANDBOX_ADMIN_PREFIX
from klaviyo_sandbox.server import SandboxServer

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
DECLARED_VOLUMES = set(COMPOSE.get("volumes") or {})

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def resolve(value: object) -> str:
    """A compose value with every ${VAR:-default} replaced by its default (an empty env)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def environment(service: str) -> dict[str, str]:
    return {key: resolve(value) for key, value in (SERVICES[service].get("environment") or {}).items()}


def worker_services() -> list[str]:
    return sorted(name for name, svc in SERVICES.items() if (svc.get("command") or [None])[0] == "worker")


def mounts(service: str) -> list[tuple[str, str]]:
    """(source, container path) for each short-syntax volume entry."""
    found = []
    for entry in SERVICES[service].get("volumes", []):
        assert isinstance(entry, str), f"{service}: use the short volume syntax, got {entry!r}"
        source, target, *_ = entry.split(":")
        found.append((source, target))
    return found


def is_bind(source: str) -> bool:
    return source.startswith((".", "/"))


def host_path(service: str, container_path: str) -> Path:
    """The repo path that a container path of `service` comes from, through its bind mounts."""
    wanted = PurePosixPath(container_path)
    for source, target in mounts(service):
        if is_bind(source) and wanted.is_relative_to(target):
            return (REPO / source / wanted.relative_to(target)).resolve()
    raise AssertionError(f"{service} mounts nothing from the repo at {container_path}")


def published_ports(service: str) -> dict[int, int]:
    """container port -> host port."""
    ports = {}
    for entry in SERVICES[service].get("ports", []):
        *_, host, container = str(entry).split(":")
        ports[int(container)] = int(host)
    return ports


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_stack_has_every_service():
    assert set(SERVICES) >= {"kafka", "klaviyo-sandbox", "worker-1", "worker-2", "prometheus", "grafana"}
    assert worker_services() == ["worker-1", "worker-2"]


def test_depends_on_names_services_and_health_conditions_have_healthchecks():
    for name, service in SERVICES.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on unknown service {target}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in SERVICES[target], (
                    f"{name} waits for {target} to be healthy: no healthcheck"
                )


def test_named_volumes_are_declared_and_every_declared_volume_is_used():
    used = {source for name in SERVICES for source, _ in mounts(name) if not is_bind(source)}
    assert used == DECLARED_VOLUMES


def test_bind_mounted_paths_exist_in_the_repo_and_are_read_only():
    binds = [
        (name, entry) for name, svc in SERVICES.items() for entry in svc.get("volumes", []) if is_bind(entry)
    ]
    assert binds, "prometheus and grafana mount their configuration from the repo"
    for name, entry in binds:
        source = entry.split(":")[0]
        assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repo"
        assert entry.endswith(":ro"), f"{name}: mount configuration read-only ({entry})"


def test_host_ports_are_unique():
    host_ports = [port for name in SERVICES for port in published_ports(name).values()]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_every_interpolation_has_a_default_and_secrets_come_from_the_environment():
    text = (REPO / "docker-compose.yml").read_text()
    variables = re.findall(r"\$\{[^}]*\}", text)
    assert variables
    for variable in variables:
        assert ":-" in variable, f"{variable}: give a default, compose warns and uses '' otherwise"
    # The sandbox's own key is public (Klaviyo rejects it); every real secret defaults to empty.
    public_defaults = {"KLAVIYO_API_KEY": DEFAULT_SANDBOX_KEY}
    secrets = 0
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"KEY|SECRET|TOKEN|PASSWORD", key):
                secrets += 1
                default = re.escape(public_defaults.get(key, ""))
                assert re.fullmatch(rf"\$\{{[A-Z0-9_]+:-{default}\}}", str(value)), (
                    f"{name}.{key} must come from the environment, not {value!r}"
                )
    assert secrets >= 2 * 7, "both workers take the Klaviyo key, 5 webhook secrets and the API token"


def test_the_sandbox_accepts_the_key_the_workers_send():
    sandbox_key = SERVICES["klaviyo-sandbox"]["environment"]["KLAVIYO_API_KEY"]
    for worker in worker_services():
        assert SERVICES[worker]["environment"]["KLAVIYO_API_KEY"] == sandbox_key


def test_kafka_is_a_single_kraft_node_with_a_healthcheck():
    kafka = SERVICES["kafka"]
    env = environment("kafka")
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
    # Kafka refuses to format storage unless the cluster id is a base64 16-byte UUID.
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "localhost:9092" in " ".join(kafka["healthcheck"]["test"])
    log_dir = env["KAFKA_LOG_DIRS"]
    assert any(target == log_dir and not is_bind(source) for source, target in mounts("kafka"))


@pytest.mark.parametrize("worker", ["worker-1", "worker-2"])
def test_worker_runs_the_image_against_kafka_with_its_own_rocksdb_volume(worker):
    service = SERVICES[worker]
    env = environment(worker)
    assert service["build"] == "." and (REPO / "Dockerfile").is_file()
    assert service["command"] == ["worker"]

    bootstrap = urlsplit("//" + env["KAFKA_BOOTSTRAP_SERVERS"])
    assert bootstrap.hostname in SERVICES
    assert f"PLAINTEXT://:{bootstrap.port}" in environment(bootstrap.hostname)["KAFKA_LISTENERS"]
    assert service["depends_on"][bootstrap.hostname] == {"condition": "service_healthy"}

    assert env["RETURNSYNC_STORE"] == "rocksdb://"
    data_volumes = [source for source, target in mounts(worker) if target == env["RETURNSYNC_DATA_DIR"]]
    assert len(data_volumes) == 1 and data_volumes[0] in DECLARED_VOLUMES
    others = {source for name in worker_services() if name != worker for source, _ in mounts(name)}
    assert data_volumes[0] not in others, "each worker needs its own RocksDB directory"

    web_port = int(env["RETURNSYNC_WEB_PORT"])
    assert web_port in published_ports(worker)
    assert f"localhost:{web_port}/ready" in " ".join(service["healthcheck"]["test"])


def test_workers_publish_6066_and_6067():
    assert sorted(published_ports(name)[6066] for name in worker_services()) == [6066, 6067]


@pytest.mark.parametrize("worker", ["worker-1", "worker-2"])
def test_worker_environment_is_accepted_by_settings_and_targets_the_sandbox(worker):
    settings = Settings.from_env(environment(worker))
    assert settings.kafka_bootstrap_servers and settings.klaviyo_api_key, "`returnsync worker` needs both"

    sandbox = SERVICES["klaviyo-sandbox"]["command"]
    assert sandbox[0] == "sandbox"
    target = urlsplit(settings.klaviyo_base_url)
    assert (target.hostname, target.port) == ("klaviyo-sandbox", int(flag(sandbox, "--port")))
    assert flag(sandbox, "--host") == "0.0.0.0"
    assert settings.store == "rocksdb://"


@pytest.mark.parametrize("worker", ["worker-1", "worker-2"])
def test_worker_advertises_its_service_name_so_the_other_worker_can_route_to_it(worker):
    """Faust proxies /customers/{email} to the owner's canonical URL: the bind address 0.0.0.0
    (or the container id) means nothing to the other container; the service name resolves."""
    settings = Settings.from_env(environment(worker))
    assert settings.web_host == "0.0.0.0", "bind every address, or the other worker cannot connect"
    assert settings.web_advertised_host == worker
    assert settings.canonical_url == f"http://{worker}:{environment(worker)['RETURNSYNC_WEB_PORT']}"
    others = [Settings.from_env(environment(name)) for name in worker_services() if name != worker]
    assert all(other.canonical_url != settings.canonical_url for other in others)


def test_prometheus_loads_the_repo_config_and_scrapes_every_worker():
    command = SERVICES["prometheus"]["command"]
    config_arg = next(arg for arg in command if arg.startswith("--config.file="))
    config_path = host_path("prometheus", config_arg.split("=", 1)[1])
    assert config_path == REPO / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())

    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).is_file(), rule_file

    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "returnsync"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    expected = {f"{name}:{environment(name)['RETURNSYNC_WEB_PORT']}" for name in worker_services()}
    assert targets == expected


def test_grafana_provisioning_and_dashboards_come_from_the_mounted_dirs():
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    assert provisioning == REPO / "grafana" / "provisioning"

    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.port in published_ports("prometheus")
    scrape_interval = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())["global"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval["scrape_interval"]

    (provider,) = yaml.safe_load((provisioning / "dashboards" / "returnsync.yml").read_text())["providers"]
    dashboards = host_path("grafana", provider["options"]["path"])
    assert (dashboards / "returns-sync-health.json").is_file()

    home = environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path("grafana", home).is_file()
    assert SERVICES["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}


# --- healthchecks --------------------------------------------------------------------------------

# What each image can run a check with. The project image is python:3.11-slim (no curl, no wget);
# prom/prometheus is busybox and grafana/grafana Alpine, both with wget; apache/kafka has its tools.
CHECK_TOOLS = {
    "returnsync:local": {"python"},
    "apache/kafka": {"/opt/kafka/bin/kafka-broker-api-versions.sh"},
    "prom/prometheus": {"wget"},
    "grafana/grafana": {"wget"},
}
# The documented health endpoints of the third-party images (the project's own are checked
# against its code below).
HEALTH_PATHS = {"prom/prometheus": "/-/ready", "grafana/grafana": "/api/health"}
_URL = re.compile(r"https?://[^\s'\"]+")


def image(service: str) -> str:
    """The image's name without its tag; the project's own image for a service compose builds."""
    if "build" in SERVICES[service]:
        return SERVICES[service]["image"]
    return SERVICES[service]["image"].split(":")[0]


def long_running() -> list[str]:
    """Services compose keeps running (not one-shot jobs): they all need a healthcheck."""
    return sorted(name for name, svc in SERVICES.items() if str(svc.get("restart", "no")) != "no")


def check_command(service: str) -> list[str]:
    test = SERVICES[service]["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), f"{service}: {test!r}"
    return test[1:] if test[0] == "CMD" else test[1].split()


def check_url(service: str) -> str | None:
    found = _URL.findall(" ".join(SERVICES[service]["healthcheck"]["test"]))
    assert len(found) <= 1, f"{service} checks several URLs: {found}"
    return found[0] if found else None


def seconds(duration: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(duration))
    assert parts and any(parts.groups()), f"unexpected duration {duration!r}"
    minutes, secs = (int(group or 0) for group in parts.groups())
    return 60 * minutes + secs


def listen_port(service: str) -> int:
    """The port the service's process listens on inside its container."""
    if service in worker_services():
        return int(environment(service)["RETURNSYNC_WEB_PORT"])
    command = SERVICES[service].get("command") or []
    if "--port" in command:
        return int(flag(command, "--port"))
    (port,) = published_ports(service)  # third-party images: the one port compose publishes
    return port


def test_every_long_running_service_has_a_complete_healthcheck():
    assert long_running() == sorted(SERVICES), "every service is long-running today"
    for name in long_running():
        check = SERVICES[name].get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        check_command(name)
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck needs {key}"
        assert seconds(check["timeout"]) <= seconds(check["interval"]), name
        assert int(check["retries"]) >= 3, f"{name}: one slow answer must not mark it unhealthy"


def test_healthchecks_run_a_tool_the_image_has():
    for name in long_running():
        tools = CHECK_TOOLS.get(image(name))
        assert tools is not None, f"{name}: which tools does {image(name)} have? add it to CHECK_TOOLS"
        assert check_command(name)[0] in tools, f"{name}: {image(name)} cannot run {check_command(name)[0]}"


def test_http_healthchecks_target_the_port_the_service_listens_on():
    for name in long_running():
        url = check_url(name)
        if url is None:
            continue
        target = urlsplit(url)
        assert target.hostname in ("localhost", "127.0.0.1"), f"{name} must check itself: {url}"
        assert target.port == listen_port(name), f"{name} listens on {listen_port(name)}, checks {url}"
        assert target.port in published_ports(name), name
    assert check_url("kafka") is None
    assert "localhost:9092" in " ".join(SERVICES["kafka"]["healthcheck"]["test"])


def test_third_party_healthchecks_use_the_images_documented_endpoints():
    for name in long_running():
        expected = HEALTH_PATHS.get(image(name))
        if expected is not None:
            assert urlsplit(check_url(name) or "").path == expected, name


@pytest.mark.parametrize("worker", ["worker-1", "worker-2"])
def test_worker_healthcheck_is_readiness_and_tolerates_a_rebalance(worker):
    url = check_url(worker)
    assert url is not None and urlsplit(url).path == "/ready"
    assert '@app.page("/ready")' in (REPO / "agents" / "worker" / "views.py").read_text()
    check = SERVICES[worker]["healthcheck"]
    # A rebalance makes /ready 503 for seconds: it takes a minute of failures to be unhealthy,
    # and a first start gets two minutes to recover its tables.
    assert seconds(check["interval"]) * int(check["retries"]) >= 60
    assert seconds(check["start_period"]) >= 60
    # Compose restarts on exit only: nothing here may restart a worker for failing /ready.
    assert SERVICES[worker]["restart"] == "unless-stopped"
    assert not any("autoheal" in str(value) for value in (SERVICES[worker].get("labels") or {}))


def test_sandbox_healthcheck_path_is_a_sandbox_admin_get_route():
    path = urlsplit(check_url("klaviyo-sandbox") or "").path
    assert path.startswith(SANDBOX_ADMIN_PREFIX + "/"), "admin paths skip faults, rate limits, the log"
    app = SandboxServer(api_keys={DEFAULT_SANDBOX_KEY: "default"}).build_app()
    routes = {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource}
    assert ("GET", path) in routes, sorted(routes)


def test_workers_wait_for_a_healthy_sandbox_and_kafka():
    for worker in worker_services():
        conditions = {name: dep["condition"] for name, dep in SERVICES[worker]["depends_on"].items()}
        assert conditions == {"kafka": "service_healthy", "klaviyo-sandbox": "service_healthy"}


# The python checks, run for real: on the host's python, against a stand-in or the real sandbox.


def run_check(service: str, port: int) -> int:
    command = check_command(service)
    assert command[:2] == ["python", "-c"], command
    code = command[2].replace(f"localhost:{listen_port(service)}", f"127.0.0.1:{port}")
    assert code != command[2]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


@pytest.fixture
def stand_in() -> Iterator[tuple[int, dict[str, int]]]:
    """An HTTP server answering every GET with statuses[path] (404 when not set)."""
    statuses: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], statuses
    finally:
        server.shutdown()
        server.server_close()


def test_worker_check_passes_when_ready_and_fails_while_not_ready_or_down(stand_in):
    port, statuses = stand_in
    statuses["/health"] = 200  # alive throughout: the check must not settle for that
    statuses["/ready"] = 503
    assert run_check("worker-1", port) != 0
    statuses["/ready"] = 200
    assert run_check("worker-1", port) == 0
    assert run_check("worker-1", free_port()) != 0


def test_sandbox_check_passes_against_the_real_sandbox_even_with_faults_injected():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = SandboxServer(api_keys={DEFAULT_SANDBOX_KEY: "default"})
    try:
        url = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        port = urlsplit(url).port
        assert port is not None
        assert run_check("klaviyo-sandbox", port) == 0
        server.faults.add({"status": 503})  # every API request fails from now on
        assert run_check("klaviyo-sandbox", port) == 0
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert run_check("klaviyo-sandbox", port) != 0, "a stopped sandbox fails its check"


# --- Dockerfile and build context -----------------------------------------------------------------

DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(keyword + " ")]


def test_dockerfile_installs_the_project_and_runs_the_cli_as_a_non_root_user():
    assert instructions("FROM") == ["python:3.11-slim"]
    assert any(re.search(r"pip install (-c \S+ )?\.( |$)", run) for run in instructions("RUN"))
    assert instructions("USER") and instructions("USER")[-1] not in ("root", "0")
    assert instructions("ENTRYPOINT") == ['["returnsync"]']
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "returnsync" in scripts


def test_dockerfile_prepares_the_directory_the_workers_keep_rocksdb_in():
    for worker in worker_services():
        data_dir = environment(worker)["RETURNSYNC_DATA_DIR"]
        # A fresh named volume takes the owner of the image directory it is mounted on.
        assert re.search(rf"chown \S+ {re.escape(data_dir)}\b", DOCKERFILE), data_dir


def test_the_image_installs_exactly_the_constrained_runtime_packages():
    """A rebuild installs what was tested: every runtime dependency (and what they pull in) is
    pinned in constraints.txt, within pyproject's ranges, and the Dockerfile installs with it."""
    assert any("pip install -c constraints.txt ." in run for run in instructions("RUN"))
    pinned = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pinned[canonical(name)] = version
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = canonical(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0])
        assert name in pinned, f"{name} is a dependency but not pinned in constraints.txt"
        for extra in re.findall(r"\[([^\]]+)\]", requirement)[:1]:
            for package in extra.split(","):
                assert canonical(package) in pinned, f"{package} (an extra of {name}) is not pinned"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent directory wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        pattern = raw.removeprefix("!").strip("/")
        anywhere = pattern.startswith("**/")
        names = candidates if anywhere else ["/".join(parts[:j]) for j in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(name, pattern.removeprefix("**/")) for name in names):
            ignored = not raw.startswith("!")
    return ignored


def test_dockerignore_sends_the_package_and_nothing_else():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "constraints.txt", "streams/__init__.py", "agents/__init__.py",
                   "agents/metrics.py", "klaviyo_sandbox/klaviyo_schemas.json"):
        assert not dockerignored(needed, patterns), f"{needed} must reach `pip install .`"
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "tests/unit/test_compose.py",
        "agents/__pycache__/metrics.cpython-311.pyc",
        ".returnsync-data/x.sst",
        "klaviyo_sandbox/reference/klaviyo-openapi-2026-07-15.json.gz",
    ):
        assert dockerignored(kept_out, patterns), f"{kept_out} must stay out of the image"
