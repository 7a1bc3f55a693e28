"""objectStorage.create (issue 14): the bucket the program makes on AWS S3, and its two keys,
each reaching only its own prefix: pgBackRest gets the backups' key, Airflow's task-log
connection the task logs' (which every task can read). Bad stack configs for it stop with one
error naming the key and the fix, before any resource exists."""

from __future__ import annotations

import asyncio
import configparser
import json
from typing import Any

import pulumi
import pytest

from components import airflow, backup
from components.bucket import BucketArgs, ObjectStorageBucket
from components.config import ConfigError, parse_config
from tools.engine import COMMAND, Engine, Registered, run_program, unwrap_secrets

BUCKET = "example-airflow-ha-prod"
CREATE = {"endpoint": "s3.eu-central-1.amazonaws.com", "region": "eu-central-1",
          "bucket": BUCKET, "create": True}
ARN = f"arn:aws:s3:::{BUCKET}"
KEYS = {"objectStorageAccessKey": "AKIAIOSFODNN7EXAMPLE",
        "objectStorageSecretKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
PROVIDER = "pulumi:providers:aws::object-storage-aws-eu-central-1"


def _created(values: Any, **overrides: Any) -> dict[str, Any]:
    """The prod stack (AWS nodes) with create, and none of the keys create makes."""
    config = values("prod", objectStorage=CREATE)
    for key in KEYS:
        config.pop(key, None)
    return {**config, **overrides}


@pytest.fixture(scope="module")
def engine() -> Engine:
    from tests.conftest import stack_values

    config = {k: v for k, v in stack_values("prod").items() if k not in KEYS}
    engine = Engine()
    run_program({**config, "objectStorage": CREATE}, engine, "prod")
    return engine


def _one(engine: Engine, typ: str, name: str | None = None) -> Registered:
    found = [r for r in engine.of_type(typ) if name is None or r.name == name]
    assert len(found) == 1, (typ, name, [r.name for r in found])
    return found[0]


def _file(engine: Engine, step: str, path: str, node: str = "fra") -> str:
    (command,) = [r for r in engine.of_type(COMMAND) if r.name == f"{node}-{step}"]
    (text,) = [c for p, _, _, c in _steps_files(command) if p == path]
    return text


def _steps_files(command: Registered) -> list[tuple[str, str, str, str]]:
    from tools.engine import parse_step

    return parse_step(command.inputs["stdin"]).files


def _key(engine: Engine, role: str) -> tuple[str, str]:
    """(access key ID, secret) the engine gave the role's AccessKey."""
    key = _one(engine, "aws:iam/accessKey:AccessKey", f"{role}-access-key")
    key_id = engine.secret_value(f"{key.name}-id", "password", {"length": 16})
    return key_id, unwrap_secrets(key.outputs["secret"])[0]


# --- the bucket -------------------------------------------------------------------------------


def test_the_bucket_is_encrypted_private_unversioned_and_protected(engine: Engine) -> None:
    bucket = _one(engine, "aws:s3/bucket:Bucket")
    assert bucket.inputs["bucket"] == BUCKET
    assert bucket.inputs["forceDestroy"] is False
    assert engine.options_of(bucket).protect is True  # protectServers: true in prod
    assert "versioning" not in bucket.inputs
    assert not [r for r in engine.resources if "ersioning" in r.type]
    block = _one(engine, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert block.inputs["bucket"] == BUCKET
    for setting in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                    "restrictPublicBuckets"):
        assert block.inputs[setting] is True, setting
    ownership = _one(engine, "aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert ownership.inputs["bucket"] == BUCKET
    assert ownership.inputs["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    sse = _one(engine, "aws:s3/bucketServerSideEncryptionConfiguration:"
                       "BucketServerSideEncryptionConfiguration")
    (rule,) = sse.inputs["rules"]
    assert rule == {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}
    assert sse.inputs["bucket"] == BUCKET
    # S3 takes one settings change of a bucket at a time: they are chained.
    assert f"{block.type}::{block.name}" in engine.dependencies[(ownership.type, ownership.name)]
    assert f"{ownership.type}::{ownership.name}" in engine.dependencies[(sse.type, sse.name)]


def test_everything_of_the_bucket_uses_its_own_provider_in_its_region(
    values: Any, deploy: Any
) -> None:
    # A region none of the nodes is in (prod's are eu-central-1, eu-west-1, eu-north-1).
    storage = {**CREATE, "endpoint": "s3.us-east-2.amazonaws.com", "region": "us-east-2"}
    engine, _ = deploy(_created(values, objectStorage=storage), stack="prod")
    (provider,) = [p for p in engine.of_type("pulumi:providers:aws")
                   if p.name.startswith("object-storage")]
    assert provider.inputs["region"] == "us-east-2"
    made = [r for r in engine.resources if r.type.startswith(("aws:s3", "aws:iam"))]
    assert len(made) == 10  # bucket, 3 settings, 2 x (user, policy, key)
    for r in made:
        assert engine.options_of(r).provider == f"{provider.type}::{provider.name}", r.name


def test_protect_servers_false_leaves_the_bucket_unprotected(values: Any, deploy: Any) -> None:
    engine, _ = deploy(_created(values, protectServers=False), stack="prod")
    assert engine.options_of(_one(engine, "aws:s3/bucket:Bucket")).protect is False


# --- the two keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "prefix", "other", "actions"),
    [("backup", "prod/pgbackrest", "prod/task-logs",
      {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}),
     ("task-logs", "prod/task-logs", "prod/pgbackrest",
      {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"})],
)
def test_each_key_reaches_only_its_own_prefix(
    engine: Engine, role: str, prefix: str, other: str, actions: set[str]
) -> None:
    user = _one(engine, "aws:iam/user:User", f"{role}-user")
    assert user.inputs["name"] == f"airflow-ha-prod-{role}"
    policy = _one(engine, "aws:iam/userPolicy:UserPolicy", f"{role}-policy")
    assert policy.inputs["user"] == user.inputs["name"]
    assert _one(engine, "aws:iam/accessKey:AccessKey", f"{role}-access-key").inputs == {
        "user": user.inputs["name"]
    }
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    (listing,) = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert listing["Resource"] == ARN
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    (objects,) = [s for s in statements if s is not listing]
    assert objects["Resource"] == f"{ARN}/{prefix}/*"
    assert set(objects["Action"]) == actions  # no wildcard, nothing on the bucket itself
    assert other not in policy.inputs["policy"]


def test_the_backups_get_their_key_and_the_task_logs_the_other(engine: Engine) -> None:
    backup_key, task_log_key = _key(engine, "backup"), _key(engine, "task-logs")
    assert backup_key[0] != task_log_key[0] and backup_key[1] != task_log_key[1]
    for node in ("fra", "dub", "sto"):
        # strict=False: pgBackRest repeats a hash option's key (tls-server-auth).
        conf = configparser.ConfigParser(interpolation=None, strict=False)
        conf.read_string(unwrap_secrets(_file(engine, "backup-install", backup.CONFIG, node))[0])
        assert (conf["global"]["repo1-s3-key"], conf["global"]["repo1-s3-key-secret"]) == (
            backup_key
        )
        env = _file(engine, "airflow-config", airflow.AIRFLOW_ENV, node)
        (line,) = [x for x in env.splitlines() if x.startswith(airflow.REMOTE_LOG_CONN_ENV)]
        conn = json.loads(line.split("=", 1)[1].strip("'"))
        assert (conn["login"], conn["password"]) == task_log_key
        assert backup_key[1] not in env and backup_key[0] not in env


def test_steps_wait_for_the_bucket_and_their_own_keys_policy(engine: Engine) -> None:
    bucket_parts = {
        "aws:s3/bucket:Bucket::bucket",
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock::bucket-public-access-block",
        "aws:s3/bucketOwnershipControls:BucketOwnershipControls::bucket-ownership",
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
        "::bucket-encryption",
    }
    policy = "aws:iam/userPolicy:UserPolicy::{}-policy"
    key = "aws:iam/accessKey:AccessKey::{}-access-key"
    install = engine.dependencies[(COMMAND, "fra-backup-install")]
    assert bucket_parts | {policy.format("backup"), key.format("backup")} <= install
    config = engine.dependencies[(COMMAND, "fra-airflow-config")]
    assert bucket_parts | {policy.format("task-logs"), key.format("task-logs")} <= config
    assert key.format("backup") not in config  # the backups' key never reaches Airflow


def test_the_keys_are_secret_and_only_in_secret_inputs(engine: Engine) -> None:
    secrets = [text for role in ("backup", "task-logs") for text in _key(engine, role)]
    for role in ("backup", "task-logs"):
        key = _one(engine, "aws:iam/accessKey:AccessKey", f"{role}-access-key")
        assert "secret" in unwrap_secrets(key.outputs)[1]
    for r in engine.resources:
        if r.type != COMMAND:
            continue
        assert not any(s in r.inputs["create"] for s in secrets), r.name
        if any(s in r.inputs["stdin"] for s in secrets):
            assert "stdin" in r.secret_inputs, r.name


def test_both_halves_of_both_keys_are_secret_outputs() -> None:
    """What the tiers get: the access key ID too is a secret (it names the IAM user)."""
    found: dict[str, bool] = {}
    pulumi.runtime.set_mocks(Engine(), project="airflow-ha", stack="prod", preview=False)

    def program() -> Any:
        made = ObjectStorageBucket(
            "object-storage", BucketArgs("airflow-ha-prod", "prod", BUCKET, "eu-central-1", True)
        )
        outputs = {f"{role}.{half}": getattr(keys, half)
                   for role, keys in (("backup", made.backup_keys),
                                      ("task-logs", made.task_log_keys))
                   for half in ("access_key", "secret_key")}

        async def check() -> None:
            for name, output in outputs.items():
                found[name] = await output.is_secret()

        return asyncio.ensure_future(check())

    pulumi.runtime.test(program)()
    assert found == dict.fromkeys(
        ["backup.access_key", "backup.secret_key", "task-logs.access_key", "task-logs.secret_key"],
        True,
    )


def test_without_create_the_program_makes_no_bucket(values: Any, deploy: Any) -> None:
    engine, _ = deploy(values("staging"), stack="staging")
    assert not [r for r in engine.resources if r.type.startswith(("aws:s3", "aws:iam"))]
    assert not [r for r in engine.resources if r.type.startswith("airflow-ha:bucket")]


# --- the stack configs create refuses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objectStorage": {**CREATE, "endpoint": "fsn1.your-objectstorage.com"}},
         r"objectStorage\.endpoint: 'fsn1\.your-objectstorage\.com' is not AWS S3's endpoint "
         r"in eu-central-1.*Fix: set endpoint: s3\.eu-central-1\.amazonaws\.com"),
        ({"objectStorage": {**CREATE, "endpoint": "s3.eu-west-1.amazonaws.com"}},
         r"objectStorage\.endpoint: .* Fix: set endpoint: s3\.eu-central-1\.amazonaws\.com"),
        ({"objectStorage": {**CREATE, "region": "fsn1", "endpoint": "s3.fsn1.amazonaws.com"}},
         r"objectStorage\.region: 'fsn1' is not an AWS region"),
        ({"objectStorage": {**CREATE, "port": 9000}}, r"objectStorage\.port: 9000 is not AWS"),
        ({"objectStorage": {**CREATE, "create": "yes"}},
         r"objectStorage\.create: the text 'yes' is not true or false"),
        ({"objectStorageAccessKey": KEYS["objectStorageAccessKey"]},
         r"objectStorageAccessKey: is set, but objectStorage\.create makes the bucket's keys.*"
         r"Fix: remove it: pulumi config rm objectStorageAccessKey"),
        ({"objectStorageSecretKey": "s"}, r"objectStorageSecretKey: is set, but"),
        ({"taskLogAccessKey": "AKIA2", "taskLogSecretKey": "s"}, r"taskLogAccessKey: is set, but"),
    ],
    ids=["hetzner-endpoint", "other-region", "not-aws-region", "port", "not-boolean",
         "access-key-set", "secret-key-set", "task-log-key-set"],
)
def test_create_refuses_what_it_cannot_make_or_would_override(
    values: Any, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_created(values, **overrides), stack="prod")


def test_create_needs_an_aws_stack(values: Any) -> None:
    config = values("dev", objectStorage=CREATE)  # Hetzner nodes only
    for key in KEYS:
        config.pop(key, None)
    with pytest.raises(ConfigError, match=r"^airflow-ha:objectStorage\.create: is true, but no "
                       r"node runs on AWS.*Fix: make the bucket yourself"):
        parse_config(config, stack="dev")


def test_create_keeps_the_iam_user_names_within_64_characters(values: Any) -> None:
    assert parse_config(_created(values), stack="s" * 43).object_storage.create is True
    with pytest.raises(ConfigError, match=r"objectStorage\.create: the stack name .* longer"):
        parse_config(_created(values), stack="s" * 44)


def test_a_refused_create_stops_before_any_resource(values: Any) -> None:
    engine = Engine()
    storage = {**CREATE, "endpoint": "fsn1.your-objectstorage.com"}
    with pytest.raises(ConfigError, match=r"objectStorage\.endpoint: "):
        run_program(_created(values, objectStorage=storage), engine, "prod")
    assert engine.resources == []


def test_create_needs_no_keys_and_gets_no_placeholders(values: Any) -> None:
    from tools.engine import config_for_engine

    config, _ = config_for_engine(_created(values))
    assert not [k for k in config if k.endswith(("AccessKey", "SecretKey"))]
    storage = parse_config(_created(values), stack="prod").object_storage
    assert (storage.access_key, storage.task_log_access_key) == (None, None)  # made later


# --- a second key for the task logs without create ---------------------------------------------


def _existing(values: Any, **keys: Any) -> dict[str, Any]:
    storage = {k: v for k, v in CREATE.items() if k != "create"}
    return values("prod", objectStorage=storage, **KEYS, **keys)


@pytest.mark.parametrize(("given", "missing"), [("taskLogAccessKey", "taskLogSecretKey"),
                                                ("taskLogSecretKey", "taskLogAccessKey")])
def test_half_a_task_log_key_is_refused(values: Any, given: str, missing: str) -> None:
    with pytest.raises(ConfigError, match=rf"^airflow-ha:{missing}: is missing: {given} is set.*"
                       rf"Fix: pulumi config set --secret {missing} <value>, or remove {given}"):
        parse_config(_existing(values, **{given: "AKIA-or-secret"}), stack="prod")


def test_task_log_keys_without_object_storage_are_refused(values: Any) -> None:
    config = values("dev", taskLogAccessKey="AKIA2", taskLogSecretKey="s")
    with pytest.raises(ConfigError, match=r"taskLogAccessKey: is set, but objectStorage is not"):
        parse_config(config, stack="dev")


def test_without_a_task_log_key_the_task_logs_use_the_backups_key(values: Any) -> None:
    storage = parse_config(_existing(values), stack="prod").object_storage
    assert storage.task_log_keys == (KEYS["objectStorageAccessKey"],
                                     KEYS["objectStorageSecretKey"])
    given = parse_config(_existing(values, taskLogAccessKey="AKIA2", taskLogSecretKey="s2"),
                         stack="prod").object_storage
    assert given.task_log_keys == ("AKIA2", "s2")
    assert (given.access_key, given.secret_key) == tuple(KEYS.values())  # the backups' stay
