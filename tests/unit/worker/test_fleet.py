"""The simulated fleet's make-up (names, shapes, pools, regions, spot) and `yard worker`'s options
for it."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from trainyard.cli.worker import WorkerOptions, _check_executor, fleet_spec
from trainyard.worker.config import WorkerConfig
from trainyard.worker.executors.sim import SimBehaviour
from trainyard.worker.fleet import (
    FleetSpec,
    Shape,
    agent_name,
    fleet_configs,
    is_spot,
    parse_shape,
    rotated,
)
from trainyard.worker.isolation import IsolationMode


def _base(tmp_path: Path, **kw: object) -> WorkerConfig:
    return WorkerConfig(server="127.0.0.1:1", token="t", name="sim", work_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_shapes_parse() -> None:
    assert parse_shape("8/32Gi") == Shape(8.0, 32 << 30)
    assert parse_shape(" 16 / 64Gi / 1 ") == Shape(16.0, 64 << 30, 1)
    assert parse_shape("96/1Ti/8xa100") == Shape(96.0, 1 << 40, 8, "a100")
    assert parse_shape("0.5/512Mi") == Shape(0.5, 512 << 20)
    for bad in ("8", "8/", "x/32Gi", "8/32Gi/a100", "0/1Gi", "8/32Gi/0xa100", "8/lots"):
        with pytest.raises(ValueError):
            parse_shape(bad)


def test_names_are_numbered_from_one_with_at_least_four_digits() -> None:
    assert agent_name("sim", 0, 500) == "sim-0001"
    assert agent_name("sim", 499, 500) == "sim-0500"
    assert agent_name("sim", 0, 20_000) == "sim-00001"


def test_spot_is_spread_evenly() -> None:
    assert [i for i in range(12) if is_spot(i, 0.25)] == [3, 7, 11]
    assert sum(is_spot(i, 0.1) for i in range(1000)) == 100
    assert not any(is_spot(i, 0.0) for i in range(100))
    assert all(is_spot(i, 1.0) for i in range(100))


def test_each_agent_gets_its_name_directory_and_the_declared_capacity(tmp_path: Path) -> None:
    base = _base(tmp_path, cpus=4.0, memory=8 << 30, gpus=2, gpu_type="h100", pool="p", region="r")
    cfgs = fleet_configs(FleetSpec(base=base, agents=3))
    assert [c.name for c in cfgs] == ["sim-0001", "sim-0002", "sim-0003"]
    assert [c.work_dir for c in cfgs] == [tmp_path / n for n in ("sim-0001", "sim-0002", "sim-0003")]
    assert len({c.data_cache for c in cfgs}) == 3
    for c in cfgs:
        assert (c.cpus, c.memory, c.gpus, c.gpu_type, c.pool, c.region) == (4.0, 8 << 30, 2, "h100", "p", "r")
        assert c.isolation is IsolationMode.OFF and c.spot_notice_url is None and c.docker_host is None


def test_undeclared_capacity_is_a_modest_node_not_this_machine(tmp_path: Path) -> None:
    (cfg,) = fleet_configs(FleetSpec(base=_base(tmp_path), agents=1))
    assert (cfg.cpus, cfg.memory, cfg.gpus, cfg.gpu_type) == (8.0, 32 << 30, 0, None)
    assert cfg.name == "sim" and cfg.work_dir == tmp_path  # one agent keeps its name


def test_lists_go_round_robin_so_lists_of_one_length_go_together(tmp_path: Path) -> None:
    spec = FleetSpec(
        base=_base(tmp_path, labels={"rack": "a"}),
        agents=8,
        shapes=(Shape(8, 32 << 30), Shape(32, 256 << 30, 4)),
        pools=("cpu", "gpu"),
        regions=("us-east-1", "eu-west-1", "ap-south-1"),
        spot_fraction=0.5,
    )
    cfgs = fleet_configs(spec)
    assert [c.pool for c in cfgs] == ["cpu", "gpu"] * 4
    assert all(bool(c.gpus) == (c.pool == "gpu") for c in cfgs)
    assert all(c.gpu_type == "sim" for c in cfgs if c.gpus)  # declared: no NVML lookup
    assert [c.region for c in cfgs][:4] == ["us-east-1", "eu-west-1", "ap-south-1", "us-east-1"]
    assert [c.labels.get("spot") for c in cfgs] == [None, "true"] * 4
    assert all(c.labels["rack"] == "a" for c in cfgs)


def test_a_spot_fraction_overrides_spot_for_all(tmp_path: Path) -> None:
    base = _base(tmp_path, labels={"spot": "true"})
    assert all(c.labels.get("spot") == "true" for c in fleet_configs(FleetSpec(base=base, agents=4)))
    cfgs = fleet_configs(FleetSpec(base=base, agents=4, spot_fraction=0.0))
    assert not any("spot" in c.labels for c in cfgs)


def test_channels_default_to_one_per_hundred_agents(tmp_path: Path) -> None:
    base = _base(tmp_path)
    assert FleetSpec(base=base, agents=1).channel_count() == 1
    assert FleetSpec(base=base, agents=100).channel_count() == 1
    assert FleetSpec(base=base, agents=2000).channel_count() == 20
    assert FleetSpec(base=base, agents=2000, channels=2000).channel_count() == 2000
    assert FleetSpec(base=base, agents=5, channels=50).channel_count() == 5


def test_channels_spread_over_the_replicas() -> None:
    assert rotated("127.0.0.1:1", 5) == "127.0.0.1:1"
    assert rotated("dns:///cp:50051", 1) == "dns:///cp:50051"
    servers = "10.0.0.1:1,10.0.0.2:1,10.0.0.3:1"
    assert rotated(servers, 0) == servers
    assert rotated(servers, 1) == "10.0.0.2:1,10.0.0.3:1,10.0.0.1:1"
    assert rotated(servers, 5) == "10.0.0.3:1,10.0.0.1:1,10.0.0.2:1"


# -- the command's options ---------------------------------------------------------------------


def _options(**kw: object) -> WorkerOptions:
    values: dict[str, object] = {f.name: None for f in fields(WorkerOptions) if f.default is MISSING}
    values.update(
        server="127.0.0.1:1",
        pool="default",
        spot=False,
        spot_notice_style="auto",
        spot_poll=2.0,
        preempt_grace=30.0,
        max_log_bytes="1Gi",
        isolation="best-effort",
        job_network=True,
        job_pids_limit=4096,
        workdir_unpacked_limit="10Gi",
        workdir_file_limit=100_000,
    )
    values.update(kw)
    return WorkerOptions(**values)  # type: ignore[arg-type]


def test_agents_and_sim_options_need_the_sim_executor(capsys: pytest.CaptureFixture[str]) -> None:
    _check_executor(_options())
    _check_executor(_options(executor="sim", agents=50, sim_ramp=2.0))
    for kw, flag in (
        ({"agents": 2}, "--agents"),
        ({"sim_shape": ["8/32Gi"]}, "--sim-shape"),
        ({"sim_pools": "a,b"}, "--sim-pools"),
        ({"sim_default": "duration=1s"}, "--sim-default"),
        ({"executor": "bogus"}, "--executor"),
    ):
        with pytest.raises(SystemExit) as e:
            _check_executor(_options(**kw))
        assert e.value.code == 2
        assert flag in capsys.readouterr().err


def test_fleet_spec_from_the_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _base(tmp_path)
    o = _options(
        executor="sim",
        agents=10,
        sim_shape=["8/32Gi", "96/1Ti/8xa100"],
        sim_pools=" cpu, gpu ,",
        sim_regions="us-east-1",
        sim_spot_fraction=0.2,
        sim_channels=3,
        sim_ramp=5.0,
        sim_default="duration=30s,log_rate=0",
    )
    spec = fleet_spec(o, base)
    assert spec.agents == 10 and spec.channels == 3 and spec.ramp_s == 5.0
    assert spec.shapes == (Shape(8, 32 << 30), Shape(96, 1 << 40, 8, "a100"))
    assert spec.pools == ("cpu", "gpu") and spec.regions == ("us-east-1",)
    assert spec.spot_fraction == 0.2
    assert spec.behaviour == SimBehaviour(duration=(30.0, 30.0), log_rate=0.0)
    for kw, needle in (({"sim_shape": ["lots"]}, "--sim-shape"), ({"sim_default": "x=1"}, "--sim-default")):
        with pytest.raises(SystemExit):
            fleet_spec(_options(executor="sim", **kw), base)
        assert needle in capsys.readouterr().err
