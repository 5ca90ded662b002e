"""Deployment as code (deploy/): what can be checked without Docker, Kubernetes or a network.

Checked here: both instance files validate against Dagster's own instance schema; the Dockerfile's
sources exist and its command serves the module the workspaces and the Helm values name, on the
port they use; every TESSERA_* variable the files set is one the code reads; no secret has a value
in any of the files. From the Helm values: the dagster.yaml the chart would render from them validates
against Dagster's instance schema, its run launcher against dagster-k8s's `K8sRunLauncher` schema and
its queue against `QueuedRunCoordinator`'s, and its run retries and monitoring are compose's; a run pod
of each job, built by dagster-k8s's own `K8sRunLauncher.launch_run` from that run launcher and the
job's tags, is a Kubernetes Job that validates (kubernetes-validate, strict) and has the image, env,
secrets, size and GPU it should. Not run here: `docker build`, `docker compose up`, `helm
template`/`helm lint` against the chart (no Docker, no Helm, no chart download on this machine): the
chart's mapping of values to dagster.yaml and container context is written out below by hand."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import uuid

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


# --- Helm: the values as the chart renders them --------------------------------------------------------
# The chart cannot be run here (no Helm, no chart, and no copy of its values.schema.json on this machine
# or in any package of the index: dagster-k8s's wheel and sdist carry none), so its mapping of values to
# the instance's dagster.yaml and to the code server's container context is written out by hand: that
# mapping is the chart template's (dagster chart: templates/configmap-instance.yaml,
# templates/helpers/instance/_run-launcher.tpl and _run-coordinator.tpl; its dagster-user-deployments
# subchart: templates/helpers/_helpers.tpl `dagsterUserDeployments.k8sContainerContext`, templates/
# deployment-user.yaml), for the keys these values set, and a change to it in the chart is not caught
# here. What it feeds is checked by Dagster's and dagster-k8s's own code and schemas, and the Job they
# build by Kubernetes' schema. Names the chart derives from the release are those of `helm upgrade
# --install tessera dagster/dagster` (the values' header) in the namespace `default`; values these
# files leave to the chart take its defaults (loadInclusterConfig true, jobNamespace the release's
# namespace, global.dagsterHome).
RELEASE, NAMESPACE = "tessera", "default"
FULLNAME = f"{RELEASE}-dagster"  # `dagster.fullname`: the release's name does not contain the chart's
USER_DEPLOYMENTS_FULLNAME = f"{RELEASE}-dagster-user-deployments"  # the subchart's `dagster.fullname`
CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome
# runLauncher.config.k8sRunLauncher keys -> K8sRunLauncher config fields, as _run-launcher.tpl maps them
LAUNCHER_FIELDS = {"envVars": "env_vars", "volumeMounts": "volume_mounts", "volumes": "volumes", "labels": "labels",
                   "resources": "resources", "schedulerName": "scheduler_name", "securityContext": "security_context",
                   "kubeconfigFile": "kubeconfig_file"}
RUN_K8S_CONFIG_FIELDS = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
                         "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
                         "jobMetadata": "job_metadata"}
LAUNCHER_KEYS = {*LAUNCHER_FIELDS, "runK8sConfig", "envSecrets", "envConfigMaps", "imagePullPolicy", "jobNamespace",
                 "loadInclusterConfig", "image", "failPodOnRunFailure"}


def _helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _names(sources) -> list[str]:
    return [source["name"] for source in sources or [] if "name" in source]


def _chart_instance(values: dict) -> dict:
    """The run_launcher, run_coordinator, run_monitoring and run_retries of the chart's dagster.yaml."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(k8s) <= LAUNCHER_KEYS, f"keys this mapping does not know: {sorted(set(k8s) - LAUNCHER_KEYS)}"
    launcher = {"load_incluster_config": k8s.get("loadInclusterConfig", True),
                "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
                "image_pull_policy": k8s["imagePullPolicy"],
                "service_account_name": FULLNAME,
                "dagster_home": CHART_DAGSTER_HOME,
                "instance_config_map": f"{FULLNAME}-instance",
                "postgres_password_secret": f"{FULLNAME}-postgresql-secret"}
    if "image" in k8s:
        launcher["job_image"] = f"{k8s['image']['repository']}:{k8s['image']['tag']}"
    for key, field in [("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")]:
        if k8s.get(key):
            launcher[field] = _names(k8s[key])
    launcher |= {field: k8s[key] for key, field in LAUNCHER_FIELDS.items() if k8s.get(key)}
    if k8s.get("failPodOnRunFailure"):
        launcher["fail_pod_on_run_failure"] = True
    if run_k8s := k8s.get("runK8sConfig"):
        assert set(run_k8s) <= set(RUN_K8S_CONFIG_FIELDS), f"not a runK8sConfig key: {sorted(set(run_k8s) - set(RUN_K8S_CONFIG_FIELDS))}"
        launcher["run_k8s_config"] = {RUN_K8S_CONFIG_FIELDS[key]: value for key, value in run_k8s.items() if value}
    instance = {"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher}}

    daemon = values["dagsterDaemon"]
    if not daemon.get("enabled", True):
        return instance
    if (coordinator := daemon["runCoordinator"])["enabled"]:
        assert coordinator["type"] == "QueuedRunCoordinator"
        queued = coordinator["config"]["queuedRunCoordinator"]
        assert not values.get("concurrency", {}).get("enabled"), "the chart's `concurrency` values change this mapping"
        config = {"max_concurrent_runs": queued.get("maxConcurrentRuns", -1)}  # -1 (no limit) when unset
        for key, field in [("tagConcurrencyLimits", "tag_concurrency_limits"), ("dequeueIntervalSeconds", "dequeue_interval_seconds"),
                           ("dequeueUseThreads", "dequeue_use_threads"), ("dequeueNumWorkers", "dequeue_num_workers")]:
            if queued.get(key):
                config[field] = queued[key]
        instance["run_coordinator"] = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator", "config": config}
    if (monitoring := daemon.get("runMonitoring", {})).get("enabled"):
        instance["run_monitoring"] = {"enabled": True, "start_timeout_seconds": monitoring["startTimeoutSeconds"]}
        for key, field in [("cancelTimeoutSeconds", "cancel_timeout_seconds"), ("maxResumeRunAttempts", "max_resume_run_attempts")]:
            if monitoring.get(key) is not None:
                instance["run_monitoring"][field] = monitoring[key]
        instance["run_monitoring"] |= {"poll_interval_seconds": monitoring["pollIntervalSeconds"],
                                       "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"]}
    if (retries := daemon.get("runRetries", {})).get("enabled"):
        instance["run_retries"] = {"enabled": True}
        if retries.get("maxRetries"):
            instance["run_retries"]["max_retries"] = retries["maxRetries"]
        if retries.get("retryOnAssetOrOpFailure") is not None:
            instance["run_retries"]["retry_on_asset_or_op_failure"] = retries["retryOnAssetOrOpFailure"]
    return instance


def _chart_container_context(deployment: dict) -> dict | None:
    """The code server's DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT (None when includeConfigInLaunchedRuns is off)."""
    if not (deployment.get("includeConfigInLaunchedRuns") or {"enabled": True})["enabled"]:
        return None
    k8s = {"image_pull_policy": deployment["image"]["pullPolicy"],
           "env_config_maps": [f"{USER_DEPLOYMENTS_FULLNAME}-{deployment['name']}-user-env", *_names(deployment.get("envConfigMaps"))],
           "namespace": NAMESPACE, "service_account_name": f"{USER_DEPLOYMENTS_FULLNAME}-user-deployments"}
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = _names(deployment["envSecrets"])
    for key, field in [("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
                       ("resources", "resources"), ("schedulerName", "scheduler_name")]:
        if deployment.get(key):
            k8s[field] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    if deployment.get("sidecarContainers") or deployment.get("initContainers"):
        k8s["run_k8s_config"] = {"pod_spec_config": {
            **({"containers": deployment["sidecarContainers"]} if deployment.get("sidecarContainers") else {}),
            **({"init_containers": deployment["initContainers"]} if deployment.get("initContainers") else {})}}
    return {"k8s": k8s}


def _code_server(values: dict) -> dict:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_the_instance_the_chart_renders_from_the_helm_values_validates(tmp_path):
    """The dagster.yaml of the chart: Dagster's instance schema, then each configurable class's own schema
    (the instance checks those only when it builds the class): K8sRunLauncher's, QueuedRunCoordinator's.
    Run retries and monitoring are those of the compose instance."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator, RunCoordinator
    from dagster._serdes import ConfigurableClassData
    from dagster_k8s import K8sRunLauncher

    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(_chart_instance(_helm_values())))
    config, _ = dagster_instance_config(str(tmp_path), "dagster.yaml")
    launcher = config["run_launcher"]
    result = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, [error.message for error in result.errors]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", K8sRunLauncher.__name__)
    coordinator = config["run_coordinator"]
    queue = ConfigurableClassData(coordinator["module"], coordinator["class"], yaml.safe_dump(coordinator["config"])).rehydrate(RunCoordinator)
    assert isinstance(queue, QueuedRunCoordinator) and queue.get_run_queue_config().max_concurrent_runs >= 1
    compose, _ = dagster_instance_config(str(DEPLOY / "compose"), "dagster.yaml")
    for section in ("run_retries", "run_monitoring"):
        assert config[section] == compose[section], f"{section}: the Helm values and deploy/compose/dagster.yaml differ"


@pytest.fixture(scope="module")
def job_tags() -> dict[str, dict[str, str]]:
    """Every job's tags, as its runs carry them, in the code location as the cluster loads it (embeddings
    computed by our encoder: the deployment's env sets no TESSERA_EMBEDDINGS_TILES)."""
    env = {variable["name"] for variable in _code_server(_helm_values())["env"]}
    assert "TESSERA_EMBEDDINGS_TILES" not in env
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TESSERA_EMBEDDINGS_TILES", raising=False)
        from tessera_assets.definitions import build_definitions

        defs = build_definitions()
        return {job.name: dict(defs.resolve_job_def(job.name).tags) for job in defs.jobs}


def _render_run_pods(values: dict, job_tags: dict, folder) -> dict[str, tuple[dict, str]]:
    """{job: (the Kubernetes Job of one of its runs, as JSON; its namespace)}, built by dagster-k8s's
    K8sRunLauncher.launch_run from the chart's run launcher config and the code server's origin; the
    Job is caught where dagster-k8s would send it to the cluster."""
    import kubernetes
    from dagster import instance_for_test
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext, RunLauncher
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._serdes import ConfigurableClassData
    from dagster_k8s.client import DagsterKubernetesClient

    # on the cluster the launcher loads its pod's credentials; here a kubeconfig of a cluster never called
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://kubernetes.invalid"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}], "users": [{"name": "none", "user": {}}]}))
    section = _chart_instance(values)["run_launcher"]
    config = {**section["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    deployment = _code_server(values)
    args = deployment["dagsterApiGrpcArgs"]
    repository = RepositoryPythonOrigin(
        executable_path="/usr/local/bin/python",  # the image's (python:3.11-slim)
        code_pointer=ModuleCodePointer(args[args.index("--module-name") + 1], args[args.index("--attribute") + 1], working_directory="/opt/tessera"),
        container_image=f"{deployment['image']['repository']}:{deployment['image']['tag']}",  # its DAGSTER_CURRENT_IMAGE
        container_context=_chart_container_context(deployment))
    created = []
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        with pytest.MonkeyPatch.context() as patch, instance_for_test() as instance:
            patch.setattr(DagsterKubernetesClient, "create_namespaced_job_with_retries",
                          lambda self, body, namespace, **_: created.append((body, namespace)))
            launcher = ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(config)).rehydrate(RunLauncher)
            launcher.register_instance(instance)
            for job_name, tags in job_tags.items():
                run = instance.add_run(DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), tags=tags,
                                                  job_code_origin=JobPythonOrigin(job_name, repository)))
                launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    finally:
        kubernetes.client.Configuration.set_default(saved)
    serialise = kubernetes.client.ApiClient().sanitize_for_serialization
    return {job_name: (serialise(body), namespace) for job_name, (body, namespace) in zip(job_tags, created, strict=True)}


@pytest.fixture(scope="module")
def run_pods(job_tags, tmp_path_factory) -> dict[str, tuple[dict, str]]:
    return _render_run_pods(_helm_values(), job_tags, tmp_path_factory.mktemp("k8s"))


def test_every_run_pod_is_a_valid_kubernetes_job(run_pods):
    """kubernetes-validate's strict schema (no unknown field) of the newest Kubernetes it bundles."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for job_name, (manifest, _) in run_pods.items():
        assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
        assert kubernetes_validate.validate(manifest, version, strict=True) == kubernetes_validate.utils.major_minor(version), job_name
    broken = copy.deepcopy(manifest)  # the schema does reject: a misspelt field of the container
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_run_pods_run_the_code_servers_image_with_its_env_and_secrets(run_pods):
    values = _helm_values()
    deployment = _code_server(values)
    secrets = _names(deployment["envSecrets"])
    assert secrets == ["tessera-storage", "tessera-cdse", "tessera-planetary-computer"]  # the values' header
    for job_name, (manifest, namespace) in run_pods.items():
        assert namespace == NAMESPACE
        pod = manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
        assert container["imagePullPolicy"] == deployment["image"]["pullPolicy"]
        got = [source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source]
        assert got == secrets, f"{job_name}: run pods get the secrets {got}, the code server {secrets}"
        env = {variable["name"]: variable.get("value") for variable in container["env"]}
        missing = {v["name"]: v["value"] for v in deployment["env"] if env.get(v["name"]) != v["value"]}
        assert not missing, f"{job_name}: run pods lack the code server's {missing}"
        assert env["DAGSTER_HOME"] == CHART_DAGSTER_HOME


def test_run_pods_get_the_run_launchers_size_and_embed_runs_a_gpu(run_pods, job_tags):
    """The size of runLauncher's runK8sConfig reaches every run pod; the runs that the queue counts as GPU
    runs (tagConcurrencyLimits) are those whose pods ask for `nvidia.com/gpu`: `embed`'s."""
    values = _helm_values()
    requested = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]["requests"]
    (limit,) = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    gpu_runs = {name for name, tags in job_tags.items() if tags.get(limit["key"]) == limit["value"]}
    assert gpu_runs == {"embed"}, f"the queue's GPU limit {limit} counts the runs of {sorted(gpu_runs)}"
    for job_name, (manifest, _) in run_pods.items():
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        resources = container["resources"]
        assert {key: resources["requests"].get(key) for key in requested} == requested, f"{job_name}: {resources}, not runK8sConfig's"
        gpus = {"requests": resources["requests"].get("nvidia.com/gpu"), "limits": (resources.get("limits") or {}).get("nvidia.com/gpu")}
        assert gpus == ({"requests": "1", "limits": "1"} if job_name in gpu_runs else {"requests": None, "limits": None}), job_name


def test_with_the_code_servers_config_in_runs_its_size_would_replace_the_run_launchers(job_tags, tmp_path):
    """Why includeConfigInLaunchedRuns is off in the values: dagster-k8s merges the code server's
    container context over the run launcher's config, so the code server's resources win."""
    values = copy.deepcopy(_helm_values())
    deployment = _code_server(values)
    deployment["includeConfigInLaunchedRuns"] = {"enabled": True}
    ((manifest, _),) = _render_run_pods(values, {"embed": job_tags["embed"]}, tmp_path).values()
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    own = deployment["resources"]["requests"]
    assert {key: container["resources"]["requests"][key] for key in own} == own
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"  # the run's own tag still wins over both
