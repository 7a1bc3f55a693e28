"""airflow-ha: load the stack config, build the cluster, export what operators need."""

import pulumi

from components.cluster import AirflowHaCluster
from components.config import load_config

cluster = AirflowHaCluster(load_config())
for name, value in cluster.outputs.items():
    pulumi.export(name, value)
