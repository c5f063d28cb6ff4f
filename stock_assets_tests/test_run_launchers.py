"""The run-launcher configurations load: Docker (docker/), ECS (deploy/ecs/), Kubernetes (deploy/helm/).

Each instance file is loaded the way Dagster loads it (`instance_for_test` with the file's
`run_launcher`, and the whole file against the instance schema), so a wrong key or type fails
here, not on a cluster. The ECS task definitions are registered through boto3 against moto's ECS
(botocore validates them against the ECS API's own shapes), and EcsRunLauncher then starts with
the instance file's config, finding its `run` container in the registered definition; it then
launches, terminates and health-checks a run against moto, and the service task's role policy
(dagster-task-role-policy.json) must allow every AWS call it makes, grant nothing else, and
leave on "*" only what AWS cannot scope. The Helm values are checked against the keys of
Dagster's chart schema and their `k8sRunLauncher` section is rendered as the chart's instance
template renders it, then loaded as K8sRunLauncher. The container stage (test_compose_stack.py)
runs DockerRunLauncher for real.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from dagster import instance_for_test

from stock_assets_tests.compose import DOCKER_DIR, ENV_EXAMPLE, REPO_ROOT, load_compose

DOCKER_INSTANCE = DOCKER_DIR / "dagster-docker.yaml"
RUN_CONTAINERS = DOCKER_DIR / "docker-compose.run-containers.yaml"
ECS_DIR = REPO_ROOT / "deploy" / "ecs"
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
ACCOUNT_ID = "123456789012"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|DATABASE_URL|POSTGRES_URL")


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _validated_instance_config(path: Path, tmp_path: Path, monkeypatch) -> dict[str, Any]:
    """The file as Dagster reads $DAGSTER_HOME/dagster.yaml, checked against the instance schema."""
    from dagster._core.instance.config import dagster_instance_config

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(path, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://u:p@db:5432/dagster")
    config, _ = dagster_instance_config(str(home))
    return config


def _launcher(section: dict[str, Any]):
    with instance_for_test(overrides={"run_launcher": section}) as instance:
        return instance.run_launcher


def _same_but(path: Path, keys: set[str]) -> None:
    """An instance file is the repository's dagster.yaml except for `keys`."""
    base, other = _yaml(REPO_ROOT / "dagster.yaml"), _yaml(path)
    for key in keys:
        base.pop(key, None)
        other.pop(key)
    assert other == base


# ------------------------------------------------------------------------------------------
# DockerRunLauncher: docker/dagster-docker.yaml, selected by docker-compose.run-containers.yaml
# ------------------------------------------------------------------------------------------


def test_docker_instance_loads_docker_run_launcher(tmp_path: Path, monkeypatch) -> None:
    from dagster_docker import DockerRunLauncher

    _same_but(DOCKER_INSTANCE, {"run_launcher"})
    config = _validated_instance_config(DOCKER_INSTANCE, tmp_path, monkeypatch)
    launcher = _launcher(config["run_launcher"])
    assert isinstance(launcher, DockerRunLauncher)
    # Runs join the compose project's network and mount its compute-log volume: names compose
    # derives from the file's project name.
    project = load_compose()["name"]
    assert launcher.networks == [f"{project}_default"]
    [volume] = launcher.container_kwargs["volumes"]
    assert volume == f"{project}_dagster_storage:/opt/dagster/dagster_home/storage"
    # Names only, passed through from the daemon: no value in the file.
    assert all("=" not in name for name in launcher.env_vars)
    assert launcher.image is None  # the code location reports it (DAGSTER_CURRENT_IMAGE)


def test_run_containers_override_gives_what_the_launcher_needs() -> None:
    override = _yaml(RUN_CONTAINERS)["services"]
    env_vars = _yaml(DOCKER_INSTANCE)["run_launcher"]["config"]["env_vars"]
    daemon_env = override["daemon"]["environment"]
    # Every name the launcher passes through is set in the daemon (empty when .env lacks it:
    # an unset name would fail every launch).
    assert set(env_vars) <= set(daemon_env)
    assert set(daemon_env) - set(env_vars) == {
        "DAGSTER_CODE_SERVER_HOST",
        "DAGSTER_CODE_SERVER_PORT",
    }
    template = {*_env_template_keys()}
    for name in env_vars:
        value = daemon_env[name]
        assert value.startswith("${" + name), (name, value)
        assert name in template, f"{name}: not in docker/.env.example"
    for name in ("webserver", "daemon"):
        mounts = override[name]["volumes"]
        assert "./dagster-docker.yaml:/opt/dagster/dagster_home/dagster.yaml:ro" in mounts
        assert "${DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock" in mounts
        assert override[name]["group_add"] == ["${DOCKER_GID:-999}"]
    assert override["user_code"]["environment"] == {
        "DAGSTER_CURRENT_IMAGE": "${STOCK_ASSETS_IMAGE:-stock-assets:latest}"
    }
    # The default stack is untouched: no socket, the subprocess launcher.
    base = load_compose()["services"]
    assert not any("docker.sock" in str(spec.get("volumes")) for spec in base.values())
    assert _yaml(REPO_ROOT / "dagster.yaml")["run_launcher"]["class"] == "DefaultRunLauncher"


# Settings the project reads that a run does not need: the local data folder, provision's
# inputs, and the sensors' interval (sensors run in the code server, not in runs).
NOT_READ_BY_RUNS = {
    "STOCK_ASSETS_DATA_DIR",
    "STOCK_ASSETS_STATIC_IP",
    "STOCK_ASSETS_NOTIFY_EMAILS",
    "STOCK_ASSETS_SENSOR_INTERVAL_SECONDS",
}


def test_run_containers_get_every_setting_a_run_reads() -> None:
    """A run container sees only the names the launcher passes on: a setting left out there is
    silently ignored in runs (a shard count, a TLS mode, temporary credentials) while the
    webserver and daemon honour it."""
    env_vars = set(_yaml(DOCKER_INSTANCE)["run_launcher"]["config"]["env_vars"])
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "stock_assets").rglob("*.py"))
    read = set(re.findall(r"\bSTOCK_ASSETS_[A-Z_]+[A-Z]\b", source))
    assert "STOCK_ASSETS_SHARDS" in read and read >= NOT_READ_BY_RUNS
    assert read - NOT_READ_BY_RUNS <= env_vars
    # libpq's variables (docs/deployment.md, "RDS and TLS") and temporary AWS credentials.
    assert {"PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT", "AWS_SESSION_TOKEN"} <= env_vars
    # Unset, PGSSLMODE must not reach libpq empty: it refuses sslmode "".
    daemon_env = _yaml(RUN_CONTAINERS)["services"]["daemon"]["environment"]
    assert daemon_env["PGSSLMODE"] == "${PGSSLMODE:-prefer}"


def _env_template_keys() -> list[str]:
    """Keys of docker/.env.example, set or commented out (`# KEY=`)."""
    return re.findall(r"(?m)^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text())


# ------------------------------------------------------------------------------------------
# EcsRunLauncher: deploy/ecs/
# ------------------------------------------------------------------------------------------


def _task_definition(name: str) -> dict[str, Any]:
    text = (ECS_DIR / name).read_text().replace("ACCOUNT_ID", ACCOUNT_ID)
    return json.loads(text)


@pytest.fixture
def ecs(monkeypatch):
    from moto import mock_aws

    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    with mock_aws():
        yield boto3.client("ecs", region_name="eu-west-1")


@pytest.mark.parametrize("name", ["run-task-definition.json", "dagster-task-definition.json"])
def test_ecs_task_definitions_register_and_hold_no_secret(name: str, ecs) -> None:
    definition = _task_definition(name)
    # botocore validates the request against the ECS API's shapes before sending it.
    registered = ecs.register_task_definition(**definition)["taskDefinition"]
    assert registered["family"] == definition["family"]
    assert registered["executionRoleArn"].endswith(":role/stock-assets-ecs-execution")
    assert re.search(r":role/stock-assets-(pipeline|dagster)$", registered["taskRoleArn"])
    for container in definition["containerDefinitions"]:
        for variable in container.get("environment", []):
            assert not SECRET_NAME.search(variable["name"]), (container["name"], variable)
        secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
        assert set(secrets) == {"DAGSTER_POSTGRES_URL", "STOCK_ASSETS_DATABASE_URL"}
        for value_from in secrets.values():
            assert re.match(r"arn:aws:(secretsmanager|ssm):eu-west-1:\d{12}:", value_from)
        assert container["image"].endswith(".dkr.ecr.eu-west-1.amazonaws.com/stock-assets:0.1.0")


def test_ecs_instance_loads_ecs_run_launcher(ecs, tmp_path: Path, monkeypatch) -> None:
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    _same_but(ECS_DIR / "dagster.yaml", {"run_launcher", "compute_logs"})
    arn = ecs.register_task_definition(**_task_definition("run-task-definition.json"))[
        "taskDefinition"
    ]["taskDefinitionArn"]
    monkeypatch.setenv("STOCK_ASSETS_RUN_TASK_DEFINITION", "stock-assets-run")
    monkeypatch.setenv("STOCK_ASSETS_COMPUTE_LOG_BUCKET", "dagster-logs")
    config = _validated_instance_config(ECS_DIR / "dagster.yaml", tmp_path, monkeypatch)
    launcher = _launcher(config["run_launcher"])
    assert isinstance(launcher, EcsRunLauncher)
    # It looked the family up in ECS and found the `run` container there.
    assert launcher.task_definition == arn
    assert launcher.container_name == "run"
    assert launcher.secrets_tags == []
    with instance_for_test(overrides={"compute_logs": config["compute_logs"]}) as instance:
        assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
    # The service task runs the compose file's three commands against this instance.
    services = _task_definition("dagster-task-definition.json")["containerDefinitions"]
    compose = load_compose()["services"]
    for container in services:
        assert container["command"] == compose[container["name"]]["command"]
        env = {v["name"]: v["value"] for v in container["environment"]}
        assert env["DAGSTER_HOME"] == "/opt/dagster/ecs"
        assert env["STOCK_ASSETS_RUN_TASK_DEFINITION"] == "stock-assets-run"
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    assert "COPY deploy/ecs/dagster.yaml /opt/dagster/ecs/dagster.yaml" in dockerfile


# The service task's role, deploy/ecs/dagster-task-role-policy.json, against the calls
# EcsRunLauncher (dagster-aws) makes with deploy/ecs/dagster.yaml. How IAM authorizes each call
# (action, resource ARN, request context) follows AWS's Service Authorization Reference for
# Amazon ECS, Amazon EC2 and CloudWatch Logs, and the ECS guide "Grant permission to tag
# resources on creation" (RunTask with tags also needs ecs:TagResource on the new task).
# _allowed() is a small model of IAM's Allow evaluation: enough for this policy, not IAM itself.
ECS_CLUSTER = "stock-assets"
REGION = "eu-west-1"
TASK_ROLE_POLICY = ECS_DIR / "dagster-task-role-policy.json"
# Actions the reference lists with no resource type: a policy can only grant them on "*".
UNSCOPED_BY_AWS = {"ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"}


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _glob(pattern: str, value: str) -> bool:
    """IAM's wildcards: * any run of characters (also across '/' and ':'), ? one character."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, value) is not None


def _condition_holds(operator: str, key: str, expected, context: dict[str, str]) -> bool:
    if key not in context:  # no ...IfExists operators in the policy: a missing key fails
        return False
    value = context[key]
    if operator in ("StringEquals", "ArnEquals"):
        return value in _as_list(expected)
    if operator in ("StringLike", "ArnLike"):
        return any(_glob(p, value) for p in _as_list(expected))
    raise AssertionError(f"the test's IAM model does not know the operator {operator}")


def _allowed(policy: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        if not any(_glob(a.lower(), action.lower()) for a in _as_list(statement["Action"])):
            continue
        if not any(_glob(r, resource) for r in _as_list(statement["Resource"])):
            continue
        conditions = statement.get("Condition", {})
        if all(
            _condition_holds(operator, key, expected, context)
            for operator, pairs in conditions.items()
            for key, expected in pairs.items()
        ):
            return True
    return False


def _task_role_policy() -> dict[str, Any]:
    return json.loads(TASK_ROLE_POLICY.read_text().replace("ACCOUNT_ID", ACCOUNT_ID))


def _cluster_arn(cluster: str) -> str:
    if cluster.startswith("arn:"):
        return cluster
    return f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:cluster/{cluster}"


def _authorizations(call: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(IAM action, resource ARN, condition context) that IAM checks for one API call."""
    service, operation, params = call["service"], call["operation"], call["params"]
    context = {"aws:RequestedRegion": call["region"]}
    if (service, operation) == ("ecs", "DescribeTaskDefinition"):
        return [("ecs:DescribeTaskDefinition", "*", context)]
    if (service, operation) == ("ec2", "DescribeNetworkInterfaces"):
        return [("ec2:DescribeNetworkInterfaces", "*", context)]
    if (service, operation) == ("logs", "GetLogEvents"):
        group, stream = params["logGroupName"], params["logStreamName"]
        arn = f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:{group}:log-stream:{stream}"
        return [("logs:GetLogEvents", arn, context)]
    if service == "ecs" and operation in ("DescribeTasks", "StopTask"):
        cluster = _cluster_arn(params["cluster"])
        context = {**context, "ecs:cluster": cluster}
        tasks = params["tasks"] if operation == "DescribeTasks" else [params["task"]]
        # The launcher passes task ARNs (long format: task/<cluster>/<id>).
        assert all(t.startswith(f"arn:aws:ecs:{REGION}:") for t in tasks), tasks
        return [(f"ecs:{operation}", task, context) for task in tasks]
    if (service, operation) == ("ecs", "RunTask"):
        cluster = _cluster_arn(params["cluster"])
        definition = params["taskDefinition"]
        assert definition.startswith("arn:"), definition  # the launcher resolved it at start
        checks = [("ecs:RunTask", definition, {**context, "ecs:cluster": cluster})]
        if params.get("tags"):
            task = call["response"]["tasks"][0]["taskArn"]
            checks.append(("ecs:TagResource", task, {**context, "ecs:CreateAction": "RunTask"}))
        run_definition = _task_definition("run-task-definition.json")
        for role in (run_definition["taskRoleArn"], run_definition["executionRoleArn"]):
            passed = {**context, "iam:PassedToService": "ecs-tasks.amazonaws.com"}
            checks.append(("iam:PassRole", role, passed))
        return checks
    raise AssertionError(
        f"EcsRunLauncher now calls {service}:{operation}: add how IAM authorizes it (AWS's "
        "Service Authorization Reference) here and, scoped, to dagster-task-role-policy.json"
    )


def test_ecs_task_role_policy_scopes_what_aws_can_scope() -> None:
    policy = _task_role_policy()
    for statement in policy["Statement"]:
        assert re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"])  # IAM's Sid alphabet
        actions = _as_list(statement["Action"])
        assert not any("*" in action for action in actions), statement["Sid"]
        if "*" in _as_list(statement["Resource"]):
            # Only what has no resource-level permissions, and then pinned to the region.
            assert set(actions) <= UNSCOPED_BY_AWS, statement["Sid"]
            assert statement["Condition"] == {"StringEquals": {"aws:RequestedRegion": REGION}}
    region = {"aws:RequestedRegion": REGION}
    cluster = _cluster_arn(ECS_CLUSTER)
    other_cluster = _cluster_arn("someone-elses")
    run_def = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task-definition/stock-assets-run:7"
    service_def = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task-definition/stock-assets-dagster:1"
    task = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task/{ECS_CLUSTER}/0123456789abcdef"
    other_task = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task/someone-elses/0123456789abcdef"
    # RunTask: the run family (any revision), in the project's cluster only.
    assert _allowed(policy, "ecs:RunTask", run_def, {**region, "ecs:cluster": cluster})
    assert not _allowed(policy, "ecs:RunTask", service_def, {**region, "ecs:cluster": cluster})
    assert not _allowed(policy, "ecs:RunTask", run_def, {**region, "ecs:cluster": other_cluster})
    assert not _allowed(policy, "ecs:RunTask", run_def, region)
    # Describe and stop tasks of the project's cluster only.
    for action in ("ecs:DescribeTasks", "ecs:StopTask"):
        assert _allowed(policy, action, task, {**region, "ecs:cluster": cluster})
        assert not _allowed(policy, action, other_task, {**region, "ecs:cluster": other_cluster})
    # Tags only as RunTask creates a task there, never on an existing task or another cluster.
    as_created = {**region, "ecs:CreateAction": "RunTask"}
    assert _allowed(policy, "ecs:TagResource", task, as_created)
    assert not _allowed(policy, "ecs:TagResource", task, region)
    assert not _allowed(policy, "ecs:TagResource", other_task, as_created)
    assert not _allowed(policy, "ecs:TagResource", run_def, as_created)
    # The two unscoped reads, in the region only.
    assert _allowed(policy, "ecs:DescribeTaskDefinition", "*", region)
    elsewhere = {"aws:RequestedRegion": "us-east-1"}
    assert not _allowed(policy, "ecs:DescribeTaskDefinition", "*", elsewhere)
    assert not _allowed(policy, "ec2:DescribeNetworkInterfaces", "*", elsewhere)


def test_ecs_task_role_allows_every_call_ecs_run_launcher_makes(ecs, monkeypatch) -> None:
    """Launch, terminate and health-check a run with the real EcsRunLauncher against moto,
    recording every AWS call it makes; the policy must allow each of them, and grant nothing
    (apart from the compute-log bucket) that the launcher does not use."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext, WorkerStatus
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.test_utils import create_run_for_test
    from dagster_aws.ecs import launcher as ecs_launcher_module
    from dagster_aws.ecs.tasks import CurrentEcsTaskMetadata
    from moto.ecs.models import EC2ContainerServiceBackend, ecs_backends

    # moto sums container-level memory even for Fargate, where only the task sets it (as ours do).
    monkeypatch.setattr(
        EC2ContainerServiceBackend,
        "_calculate_task_resource_requirements",
        staticmethod(lambda definition: {"CPU": 0, "MEMORY": 0, "PORTS": [], "PORTS_UDP": []}),
    )
    # What `aws ecs create-service --cluster stock-assets` leaves: the cluster, both task
    # definitions, the service task (the daemon's own task) on a subnet with a security group.
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's ENIs need it
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="dagster", Description="d", VpcId=vpc)["GroupId"]
    cluster = ecs.create_cluster(clusterName=ECS_CLUSTER)["cluster"]["clusterArn"]
    ecs.register_task_definition(**_task_definition("run-task-definition.json"))
    ecs.register_task_definition(**_task_definition("dagster-task-definition.json"))
    network = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}}
    service_task = ecs.run_task(
        cluster=ECS_CLUSTER, taskDefinition="stock-assets-dagster", launchType="FARGATE",
        networkConfiguration=network,
    )["tasks"][0]["taskArn"]  # fmt: skip
    # The launcher reads its own task from the ECS task metadata endpoint (not an AWS API).
    monkeypatch.setattr(
        ecs_launcher_module,
        "get_current_ecs_task_metadata",
        lambda: CurrentEcsTaskMetadata(cluster=cluster, task_arn=service_task),
    )
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName="/ecs/stock-assets")

    # Every call of the boto3 clients the launcher creates (default session) is recorded.
    calls: list[dict[str, Any]] = []

    def before_call(params, model, **kwargs):
        service = model.service_model.endpoint_prefix
        calls.append({"service": service, "operation": model.name, "params": dict(params)})

    def before_sign(region_name, **kwargs):
        calls[-1]["region"] = region_name

    def after_call(parsed, **kwargs):
        calls[-1]["response"] = parsed

    session = boto3.Session(region_name=REGION)
    session.events.register("before-parameter-build", before_call)
    session.events.register("before-sign", before_sign)
    session.events.register("after-call", after_call)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    monkeypatch.setenv("STOCK_ASSETS_RUN_TASK_DEFINITION", "stock-assets-run")

    section = _yaml(ECS_DIR / "dagster.yaml")["run_launcher"]
    with instance_for_test(overrides={"run_launcher": section}) as instance:
        launcher = instance.run_launcher
        origin = JobPythonOrigin(
            "stock_assets_job",
            RepositoryPythonOrigin(
                executable_path="/usr/local/bin/python",
                code_pointer=ModuleCodePointer("stock_assets.definitions", "defs"),
                container_image=None,
                entry_point=None,
                container_context=None,
            ),
        )
        run = create_run_for_test(instance, job_name="stock_assets_job", job_code_origin=origin)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        run = instance.get_run_by_id(run.run_id)
        run_task = run.tags["ecs/task_arn"]
        assert run_task.startswith(f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task/{ECS_CLUSTER}/")
        # The UI's Terminate (webserver) describes and stops the run's task.
        assert launcher.terminate(run.run_id)
        # Run monitoring (daemon) finds the task stopped with a failed container and reads the
        # end of its log stream (awslogs: <prefix>/<container>/<task id>).
        task_id = run_task.rsplit("/", 1)[1]
        ecs_backends[ACCOUNT_ID][REGION].tasks[ECS_CLUSTER][run_task].containers[0].exitCode = 1
        logs.create_log_stream(logGroupName="/ecs/stock-assets", logStreamName=f"run/run/{task_id}")
        logs.put_log_events(
            logGroupName="/ecs/stock-assets", logStreamName=f"run/run/{task_id}",
            logEvents=[{"timestamp": int(time.time() * 1000), "message": "the run's last words"}],
        )  # fmt: skip
        health = launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
        assert health.status == WorkerStatus.FAILED
        assert "the run's last words" in (health.msg or "")

    operations = {(c["service"], c["operation"]) for c in calls}
    # With a named task definition the launcher registers nothing; no secrets listing by tag.
    assert operations == {
        ("ecs", "DescribeTaskDefinition"),
        ("ecs", "DescribeTasks"),
        ("ec2", "DescribeNetworkInterfaces"),
        ("ecs", "RunTask"),
        ("ecs", "StopTask"),
        ("logs", "GetLogEvents"),
    }, operations
    [launch] = [c for c in calls if c["operation"] == "RunTask"]
    assert {"key": "project", "value": "stock-assets"} in launch["params"]["tags"]

    policy = _task_role_policy()
    checked = set()
    for call in calls:
        for action, resource, context in _authorizations(call):
            assert _allowed(policy, action, resource, context), (action, resource, context)
            checked.add(action)
    # Nothing granted beyond what the launcher uses (the compute-log bucket aside: S3).
    granted = {
        action
        for statement in policy["Statement"]
        for action in _as_list(statement["Action"])
        if not action.startswith("s3:")
    }
    assert granted == checked, granted ^ checked


# ------------------------------------------------------------------------------------------
# K8sRunLauncher: deploy/helm/values.yaml for Dagster's Helm chart
# ------------------------------------------------------------------------------------------

# The chart's schema (helm/dagster/schema in dagster-io/dagster, the pydantic models its
# values.schema.json is generated from): the keys these sections may hold.
CHART_TOP_LEVEL = {
    "dagsterWebserver", "dagster-user-deployments", "postgresql",
    "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis",
    "flower", "ingress", "imagePullSecrets", "computeLogManager", "scheduler", "runLauncher",
    "pythonLogs", "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount", "global",
    "retention", "additionalInstanceConfig",
}  # fmt: skip
CHART_K8S_RUN_LAUNCHER = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
    "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
    "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
}  # fmt: skip
CHART_USER_DEPLOYMENTS = {"enabled", "enableSubchart", "imagePullSecrets", "deployments"}
CHART_USER_DEPLOYMENT = {
    "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
    "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity",
    "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
    "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName",
}  # fmt: skip
CHART_POSTGRESQL = {
    "image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
    "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service",
}  # fmt: skip
CHART_RUN_COORDINATOR = {
    "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
    "dequeueUseThreads",
}  # fmt: skip


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _chart_run_launcher(values: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """runLauncher as the chart's instance template (_run-launcher.tpl) renders it for
    K8sRunLauncher; in a cluster the pod's own service account replaces the kubeconfig."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "job_namespace": k8s.get("jobNamespace") or "dagster",
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": "dagster",
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": "dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "env_config_maps": ["dagster-pipeline-env"] + [c["name"] for c in k8s["envConfigMaps"]],
        "env_secrets": [s["name"] for s in k8s["envSecrets"]],
    }
    assert k8s["loadInclusterConfig"] is True
    for key in ("envVars", "volumeMounts", "volumes", "labels", "resources", "failPodOnRunFailure"):
        if k8s.get(key):
            config[_snake(key)] = k8s[key]
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def test_helm_values_match_the_chart_and_load_k8s_run_launcher(tmp_path: Path) -> None:
    from dagster_k8s import K8sRunLauncher

    values = _yaml(HELM_VALUES)
    assert set(values) <= CHART_TOP_LEVEL
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(values["runLauncher"]["config"]) == {"k8sRunLauncher"}
    assert set(values["runLauncher"]["config"]["k8sRunLauncher"]) <= CHART_K8S_RUN_LAUNCHER
    assert set(values["postgresql"]) <= CHART_POSTGRESQL
    assert values["postgresql"]["enabled"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert set(coordinator["config"]["queuedRunCoordinator"]) <= CHART_RUN_COORDINATOR
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] == 1

    # The project's image as the one user-code deployment, serving stock_assets.definitions.
    users = values["dagster-user-deployments"]
    assert set(users) <= CHART_USER_DEPLOYMENTS
    [deployment] = users["deployments"]
    assert set(deployment) <= CHART_USER_DEPLOYMENT
    assert deployment["image"]["repository"].endswith("/stock-assets")
    assert deployment["codeServerArgs"] == ["-m", "stock_assets.definitions"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    for variable in deployment["env"]:
        assert set(variable) == {"name", "value"}
        assert not SECRET_NAME.search(variable["name"]), variable
    # Secrets by reference only.
    assert {s["name"] for s in deployment["envSecrets"]} == {"stock-assets-env"}
    assert {"name": "STOCK_ASSETS_SENSOR_INTERVAL_SECONDS", "value": "15"} in deployment["env"]

    # Dagster's storage URL as the chart's instance template renders it (`scheme` only when
    # postgresqlScheme is set) loads with the image's driver, psycopg2.
    import sqlalchemy
    from dagster_postgres.utils import pg_url_from_config

    pg = values["postgresql"]
    postgres_db = {
        "username": pg["postgresqlUsername"], "password": "not-a-real-password",
        "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"], "params": pg["postgresqlParams"],
        **({"scheme": pg["postgresqlScheme"]} if pg.get("postgresqlScheme") else {}),
    }  # fmt: skip
    engine = sqlalchemy.create_engine(pg_url_from_config({"postgres_db": postgres_db}))
    assert engine.dialect.driver == "psycopg2"

    # One annotated service account for every pod: the chart creates it under
    # global.serviceAccountName, and the user-deployments subchart (the code location, and so
    # the runs' Jobs) uses that name instead of making an account without the IAM role.
    assert values["serviceAccount"]["create"] is True
    assert values["global"]["serviceAccountName"] == "stock-assets"
    assert "eks.amazonaws.com/role-arn" in values["serviceAccount"]["annotations"]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    launcher = _launcher(_chart_run_launcher(values, kubeconfig))
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.env_secrets == ["stock-assets-env"]
    assert launcher.image_pull_policy == "IfNotPresent"
    assert launcher.resources["limits"]["memory"] == "2Gi"
