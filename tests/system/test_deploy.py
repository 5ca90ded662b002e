"""Deployment as code (deploy/): what can be checked without Docker, Kubernetes or a network.

Checked here: both instance files validate against Dagster's own instance schema; the Dockerfile's
sources exist and its command serves the module the workspaces and the Helm values name, on the
port they use; every TESSERA_* variable the files set is one the code reads; no secret has a value
in any of the files. Not run here: `docker build`, `docker compose up`, `helm template`/`helm lint`
against the chart (no Docker, no Helm, no chart download on this machine)."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml

from conftest import REPO_ROOT

ROOT = REPO_ROOT
DEPLOY = ROOT / "deploy"
MODULE = "tessera_assets.definitions"


@pytest.mark.parametrize("folder", [DEPLOY, DEPLOY / "compose"])
def test_instance_files_validate_against_dagsters_schema(folder):
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(folder), "dagster.yaml")
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 1


def _dockerfile() -> list[tuple[str, str]]:
    lines = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [tuple(line.split(None, 1)) for line in lines if line.strip() and not line.startswith("#")]


def test_the_image_copies_what_exists_and_serves_the_code_location():
    instructions = _dockerfile()
    for verb, rest in instructions:
        if verb == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
    command = yaml.safe_load(next(rest for verb, rest in instructions if verb == "CMD"))
    assert command[:3] == ["dagster", "api", "grpc"] and command[command.index("--module-name") + 1] == MODULE
    port = int(command[command.index("--port") + 1])
    assert f"EXPOSE {port}" in (DEPLOY / "Dockerfile").read_text()
    helm = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    deployment = helm["dagster-user-deployments"]["deployments"][0]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == MODULE and deployment["port"] == port
    workspace = yaml.safe_load((DEPLOY / "compose" / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert workspace["port"] == port and workspace["host"] == "code"
    assert yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"] == MODULE


def test_the_compose_file_runs_every_service_from_one_image():
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"postgres", "minio", "code", "webserver", "daemon", "explorer"}
    for name in ("code", "webserver", "daemon", "explorer"):
        assert services[name]["image"] == "tessera:latest" and services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["explorer"]["command"][:2] == ["tessera", "serve"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), "nothing listens beyond this machine"


def _code_variables() -> set[str]:
    found = set()
    for path in list((ROOT / "tessera_assets").rglob("*.py")) + list((ROOT / "resources").rglob("*.py")):
        found |= set(re.findall(r"TESSERA_[A-Z0-9_]+", path.read_text()))
    return found


def test_every_tessera_variable_the_deployment_sets_is_one_the_code_reads():
    read = _code_variables() | {"TESSERA_HOME"}
    texts = [(DEPLOY / "compose" / "docker-compose.yaml").read_text(), (DEPLOY / "compose" / ".env.example").read_text(),
             (DEPLOY / "helm" / "values.yaml").read_text(), (DEPLOY / "Dockerfile").read_text()]
    set_here = {v for text in texts for v in re.findall(r"\b(TESSERA_[A-Z0-9_]+)\s*[:=]", text)}
    set_here |= {m for text in texts for m in re.findall(r"name: (TESSERA_[A-Z0-9_]+)", text)}
    assert set_here and set_here <= read, f"set but never read: {sorted(set_here - read)}"


SECRET = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|SUBSCRIPTION_KEY)[A-Z_]*\s*[:=]\s*(\S*)", re.IGNORECASE)
PLACEHOLDERS = {"", "change-me", "change-me-too"}


def test_no_secret_has_a_value_in_the_deployment_or_config_files():
    """Passwords and keys come from the environment or secrets by name: in deploy/ and every YAML
    file a secret's value is empty, a `change-me` placeholder (.env.example) or a reference."""
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    checked = [n for n in tracked if n.startswith("deploy/") or n.endswith((".yaml", ".yml"))]
    offenders = [f"{name}: {line.strip()}" for name in checked for line in (ROOT / name).read_text().splitlines()
                 if (m := SECRET.search(line)) and m.group(2) not in PLACEHOLDERS and not m.group(2).startswith("$")]
    assert "deploy/compose/.env.example" in checked and offenders == []
