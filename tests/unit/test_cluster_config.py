"""The deployment files: ``cluster.yaml`` (for ``ray up``) and ``deploy/kuberay-rayjob.yaml``.

``cluster.yaml`` goes through what ``ray up`` does to a config before it talks to the cloud
(``ray.autoscaler._private.commands._bootstrap_config``): ``prepare_config`` merges the AWS defaults
and the setup commands, then ``validate_config`` checks it against Ray's ``ray-schema.json`` and
its cross-field rules. The steps that need AWS credentials and network (detecting node resources,
the AWS bootstrap of IAM roles, key pairs, subnets and AMIs) are left out; the EC2 parameters are
checked against botocore's offline RunInstances model instead. No Ray runtime, no network.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
RAYJOB_YAML = REPO / "deploy" / "kuberay-rayjob.yaml"
ENTRYPOINT_SCRIPT = "jobs/fraud_detection.py"
RAY_IMAGE = f"rayproject/ray:{ray.__version__}-py311"

Config = dict[str, Any]


def _load(path: Path) -> Config:
    with path.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), f"{path.name}: not a YAML mapping"
    return data


def ray_up_checks(config: Config) -> Config:
    """The config as ``ray up`` hands it to the node provider; raises what ``ray up`` raises."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cluster() -> Config:
    return _load(CLUSTER_YAML)


@pytest.fixture(scope="module")
def rayjob() -> Config:
    return _load(RAYJOB_YAML)


# ---- cluster.yaml --------------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_validation(cluster: Config) -> None:
    prepared = ray_up_checks(cluster)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    workers = [t for t in prepared["available_node_types"] if t != prepared["head_node_type"]]
    assert workers, "cluster.yaml: no worker node type"


def test_every_node_installs_raystream(cluster: Config) -> None:
    prepared = ray_up_checks(cluster)
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install" in cmd and "~/raystream" in cmd for cmd in prepared[key]), (
            f"{key}: no command installs raystream"
        )


def test_head_serves_the_dashboard_on_8265_and_workers_join_it(cluster: Config) -> None:
    head = [shlex.split(c) for c in cluster["head_start_ray_commands"] if "ray start" in c]
    assert len(head) == 1, "head_start_ray_commands: want exactly one `ray start`"
    assert "--head" in head[0]
    assert "--dashboard-host=0.0.0.0" in head[0]
    assert "--dashboard-port=8265" in head[0]
    port = next(a.split("=", 1)[1] for a in head[0] if a.startswith("--port="))
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert f"--address=$RAY_HEAD_IP:{port}" in workers


def test_cluster_image_runs_the_installed_ray(cluster: Config) -> None:
    # `ray up` and `ray job submit` talk to the cluster with the Ray installed here.
    assert cluster["docker"]["image"] == RAY_IMAGE, "bump the image with the Ray in pyproject"


def test_file_mounts_exist_from_the_repo_root(cluster: Config) -> None:
    # `ray up` (run from the repository root) asserts every local path exists.
    for remote, local in cluster.get("file_mounts", {}).items():
        assert (REPO / local).exists(), f"file_mounts[{remote!r}]: {local!r} is not in the repo"


def test_node_configs_are_valid_ec2_run_instances_parameters(cluster: Config) -> None:
    # The AWS provider passes node_config to EC2 RunInstances (SubnetIds turned into a SubnetId).
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    ec2 = botocore_session.get_session().get_service_model("ec2")
    shape = ec2.operation_model("RunInstances").input_shape
    for name, node_type in cluster["available_node_types"].items():
        params = dict(node_type["node_config"], MinCount=1, MaxCount=1)
        if params.pop("SubnetIds", None):
            params["SubnetId"] = "subnet-0123456789abcdef0"
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), f"{name}.node_config: {report.generate_report()}"


def _rename(path: tuple[str, ...], new: str) -> Callable[[Config], None]:
    def mutate(config: Config) -> None:
        *parents, key = path
        for p in parents:
            config = config[p]
        config[new] = config.pop(key)  # KeyError if cluster.yaml lost the key: update the case

    return mutate


def _set(path: tuple[str, ...], value: Any) -> Callable[[Config], None]:
    def mutate(config: Config) -> None:
        *parents, key = path
        for p in parents:
            config = config[p]
        assert key in config, f"{path}: not in cluster.yaml; update the case"
        config[key] = value

    return mutate


def _drop(path: tuple[str, ...]) -> Callable[[Config], None]:
    def mutate(config: Config) -> None:
        *parents, key = path
        for p in parents:
            config = config[p]
        del config[key]

    return mutate


BROKEN = [
    pytest.param(
        _rename(("setup_commands",), "setup_comands"),
        jsonschema.ValidationError,
        "setup_comands",
        id="misspelled-top-level-key",
    ),
    pytest.param(
        _rename(("available_node_types", "worker", "min_workers"), "min_worker"),
        jsonschema.ValidationError,
        "min_worker",
        id="misspelled-node-type-key",
    ),
    pytest.param(
        _rename(("docker", "pull_before_run"), "pull_befor_run"),
        jsonschema.ValidationError,
        "pull_befor_run",
        id="misspelled-docker-key",
    ),
    pytest.param(
        _drop(("available_node_types", "worker", "resources")),
        jsonschema.ValidationError,
        "'resources' is a required property",
        id="node-type-without-resources",
    ),
    pytest.param(
        _set(("max_workers",), "10"),
        jsonschema.ValidationError,
        "is not of type 'integer'",
        id="max-workers-not-an-int",
    ),
    pytest.param(
        _set(("head_node_type",), "hed"),
        ValueError,
        "head_node_type",
        id="unknown-head-node-type",
    ),
    pytest.param(
        _set(("max_workers",), 1),
        ValueError,
        "smaller than the sum of `min_workers`",
        id="min-workers-above-max-workers",
    ),
]


@pytest.mark.parametrize(("mutate", "error", "match"), BROKEN)
def test_rays_validation_rejects_a_broken_cluster_yaml(
    cluster: Config, mutate: Callable[[Config], None], error: type[Exception], match: str
) -> None:
    broken = copy.deepcopy(cluster)
    mutate(broken)
    with pytest.raises(error, match=match):
        ray_up_checks(broken)


def test_rays_schema_requires_a_provider(cluster: Config) -> None:
    prepared = ray_up_checks(cluster)
    del prepared["provider"]
    with pytest.raises(jsonschema.ValidationError, match="'provider' is a required property"):
        validate_config(prepared)


# ---- deploy/kuberay-rayjob.yaml ------------------------------------------------------------------


def _containers(group: Config) -> list[Config]:
    containers = group["template"]["spec"]["containers"]
    assert isinstance(containers, list) and containers, "a group without containers"
    return containers


def test_rayjob_has_the_structure_kuberay_needs(rayjob: Config) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"]
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["rayVersion"] == ray.__version__
    head = cluster_spec["headGroupSpec"]
    groups = cluster_spec["workerGroupSpecs"]
    assert isinstance(groups, list) and groups, "rayClusterSpec: no workerGroupSpecs"
    for group in [head, *groups]:
        # The CRD types rayStartParams as map[string]string: `num-cpus: 0` is rejected.
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"rayStartParams: {params}"
        assert all(c["image"] == RAY_IMAGE for c in _containers(group))
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for group in groups:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_rayjob_runtime_env_installs_raystream_and_names_the_brokers(rayjob: Config) -> None:
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)  # Ray's own checks of working_dir, pip and env_vars
    assert runtime_env["working_dir"]
    assert any("raystream" in p for p in runtime_env["pip"])
    assert runtime_env["env_vars"]["RAYSTREAM_BROKERS"]


def test_rayjob_entrypoint_runs_fraud_detection(rayjob: Config) -> None:
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["python", ENTRYPOINT_SCRIPT]
    assert argv[argv.index("--workers") + 1].isdigit()


def test_rayjob_entrypoint_script_is_in_the_repo(rayjob: Config) -> None:
    script = REPO / shlex.split(rayjob["spec"]["entrypoint"])[1]
    if not script.exists():
        pytest.skip(f"{ENTRYPOINT_SCRIPT} is not written yet (issue 7)")
    assert script.is_file()
    assert "--workers" in script.read_text(), f"{ENTRYPOINT_SCRIPT}: takes no --workers"
