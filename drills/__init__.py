"""The resilience suite: every failure a three-region cluster meets, drilled on the local
machines with a steady workload, nothing acknowledged lost, the figures written to
drills/results/. `python -m drills --help`; what each drill does: docs/resilience.md.
"""
