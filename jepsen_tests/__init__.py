"""Consistency tests of the store, and the tools they share.

    checker/             the linearizability checker and its models (standard library only)
    simulator.py         the deterministic simulator of a replica group, its planted bugs
    simulation_oracle.py what the simulator checks after every step
    processes.py, nodes.py  real server processes: a node, a replica group, a chat instance
    nemesis.py, runner.py, workloads.py, checks.py  the real-process fault suite

`python -m jepsen_tests` runs the fault suite and checks histories;
`python -m jepsen_tests.simulator` runs the simulator. docs/jepsen.md,
docs/replication.md and docs/checker.md explain each.
"""
