"""The drills and the resilience suite, on the local machines (tools.localcloud).

The suite: `python -m drills` (every failure a three-region cluster meets, with a steady
workload, nothing acknowledged lost; docs/resilience.md), its load drill `python -m drills.load`
and the idle footprint `python -m drills.footprint`. The single drills the suite builds on:
`python3 -m drills.failover`, `drills.broker`, `drills.airflow`. agents/ holds what they copy to
the nodes, results/ the committed figures (the docs' tables: `python -m drills.docs`).
"""
