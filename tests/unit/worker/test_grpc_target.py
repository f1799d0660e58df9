import pytest

from trainyard.worker.config import grpc_target


def test_one_address_passes_through() -> None:
    assert grpc_target("127.0.0.1:50051") == "127.0.0.1:50051"
    assert grpc_target("dns:///trainyard:50051") == "dns:///trainyard:50051"


def test_a_list_of_replicas_becomes_one_failover_target() -> None:
    assert grpc_target("10.0.0.1:50051, 10.0.0.2:50051") == "ipv4:10.0.0.1:50051,10.0.0.2:50051"


def test_a_list_of_host_names_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="dns:///"):
        grpc_target("a.example:50051,b.example:50051")
