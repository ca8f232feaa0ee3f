"""The simulator's parts on their own: partitions, the network, the workload's settings."""

from __future__ import annotations

import random

import pytest

from jepsen_tests.simulator import Faults, Workload
from jepsen_tests.simulator.clock import Clock
from jepsen_tests.simulator.faults import PARTITION_SHAPES, draw_partition
from jepsen_tests.simulator.network import Network

MEMBERS = (1, 2, 3, 4, 5)


@pytest.mark.parametrize("shape", PARTITION_SHAPES)
def test_a_partition_cuts_two_sides_and_leaves_a_bridge_linked(shape):
    for seed in range(50):
        (one, other), bridge = draw_partition(random.Random(seed), MEMBERS, shape)
        assert one and other and not set(one) & set(other)
        assert (bridge is not None) == (shape == "bridge")
        assert sorted(one + other + ([bridge] if bridge else [])) == list(MEMBERS)
        if shape == "isolate":
            assert len(one) == 1


def test_an_unknown_partition_shape_is_refused():
    with pytest.raises(ValueError, match="unknown partition shape"):
        draw_partition(random.Random(0), MEMBERS, "ring")


def _network(**faults) -> tuple[Network, Clock]:
    clock = Clock()
    return Network(random.Random(0), Faults(**faults), clock), clock


def _deliver(network: Network, clock: Clock, ticks: int) -> list:
    delivered = []
    for _ in range(ticks):
        clock.advance()
        delivered.extend(network.due())
    return delivered


def test_a_node_hears_itself_at_once_even_where_every_message_is_dropped():
    network, clock = _network(drop_probability=1.0)
    network.send(1, 1, "self")
    network.send(1, 2, "other")
    assert list(network.due()) == [(1, 1, "self")]
    assert _deliver(network, clock, 20) == []


def test_no_message_crosses_a_partition_until_it_heals():
    network, clock = _network(drop_probability=0.0, duplicate_probability=0.0,
                              partition_duration_ticks=(1000, 1000))
    network.partition("isolate", (1, 2, 3))
    isolated = next(node for node in (1, 2, 3)
                    if all(network.is_cut(node, other) for other in (1, 2, 3) if other != node))
    others = [node for node in (1, 2, 3) if node != isolated]
    network.send(isolated, others[0], "lost")
    network.send(others[0], others[1], "kept")
    assert _deliver(network, clock, 20) == [(others[0], others[1], "kept")]
    network.heal()
    network.send(isolated, others[0], "after healing")
    assert _deliver(network, clock, 20) == [(isolated, others[0], "after healing")]


def test_messages_are_delivered_in_order_of_their_drawn_delay():
    network, clock = _network(drop_probability=0.0, duplicate_probability=0.0,
                              consensus_delay_ticks=(1, 5))
    for index in range(40):
        network.send(1, 2, index)
    delivered = [message for _, _, message in _deliver(network, clock, 10)]
    assert sorted(delivered) == list(range(40))
    assert delivered != list(range(40))  # reordered by their delays


def test_an_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="unknown workload"):
        Workload(model="queue")
