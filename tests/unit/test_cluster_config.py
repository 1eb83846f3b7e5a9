"""cluster.yaml passes Ray's own cluster-config validation and pins the GPU host."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from actors.groups import GPU_HOST_LABEL

CLUSTER_YAML = Path(__file__).parents[2] / "cluster.yaml"


def load() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return config


def test_cluster_yaml_passes_rays_validator() -> None:
    validate_config(prepare_config(load()))


def test_gpu_host_node_type_carries_the_label_local_servers_are_pinned_by() -> None:
    gpu = load()["available_node_types"]["gpu_a"]

    assert gpu["labels"] == {GPU_HOST_LABEL: "a"}
    assert gpu["min_workers"] == gpu["max_workers"] == 1


def test_the_validator_refuses_a_broken_copy() -> None:
    broken = copy.deepcopy(load())
    broken["available_node_types"]["gpu_a"]["lables"] = {GPU_HOST_LABEL: "a"}

    with pytest.raises(jsonschema.ValidationError, match="lables"):
        validate_config(prepare_config(broken))
