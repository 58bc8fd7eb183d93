"""The benchmark suite: the project against its peers on the local stack, as ratios of one run.

``scripts/bench`` runs ``bench.suite``; ``bench.peer`` (a PostgreSQL SKIP LOCKED poller) and
``bench.ceiling`` (a bare aiokafka consume → transactional produce loop) are the peers it
runs as subprocesses; ``bench.workload`` makes the events and rows both sides consume;
``bench.harness`` holds the process, waiting and profiling plumbing. ``bench/tick_cost.py``
stays a stand-alone script. Nothing here is product code: speed figures live here, never in
timed tests (docs/performance.md).
"""
