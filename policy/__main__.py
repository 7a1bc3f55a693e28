"""The airflow-ha policy pack: `pulumi preview --policy-pack policy` (the pull-request workflow
runs it on every preview). The rules and why they are what they are: airflow_ha_policies.py."""

import sys
from pathlib import Path

from pulumi_policy import EnforcementLevel, PolicyPack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from airflow_ha_policies import PACK_NAME, POLICIES

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
