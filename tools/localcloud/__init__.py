"""localcloud: three local Debian 13 machines (systemd-nspawn) to deploy airflow-ha onto.

See ``python3 -m tools.localcloud --help``; names and addresses live in ``machines``.
"""
