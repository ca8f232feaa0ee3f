"""Consistency tests of the store, and the tools they share.

    checker/             the linearizability checker and its models (standard library only)
    simulator/           the deterministic simulator of a replica group: network, faults,
                         workload, invariant oracle, planted bugs
    processes.py, nodes.py  real server processes: a node, a replica group, a chat instance
    nemesis.py, runner.py, workloads.py, checks.py  the real-process fault suite

`python -m jepsen_tests` runs the fault suite and checks histories;
`python -m jepsen_tests.simulator` runs the simulator. docs/jepsen.md,
docs/replication.md and docs/checker.md explain each.
"""
