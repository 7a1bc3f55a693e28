"""ObjectStorageBucket: the stack's S3 bucket and its two scoped keys (objectStorage.create).

AWS S3 only: config.py refuses create elsewhere (Hetzner's Object Storage makes keys in its
Console only, and buckets through the S3 API of such a key).

The bucket, named `objectStorage.bucket`, in `objectStorage.region`:
- server-side encryption by default (SSE-S3, AES256), every public-access block on, ACLs off
  (object ownership BucketOwnerEnforced);
- versioning not enabled: pgBackRest expires its own backups and WAL (backup.retentionFull),
  and with versioning every object it expires would stay as a noncurrent version, kept and
  billed until a lifecycle rule removed it: the retention would free nothing;
- `protect`ed with protectServers, as the servers are (it holds the backups), and never
  force_destroy: not even an unprotected `pulumi destroy` deletes it while it holds objects.

Two IAM users, each with one access key and one inline policy that reaches only its own prefix:
the backups' (pgBackRest, run as postgres) lists, reads, writes and deletes under
`<stack>/pgbackrest`; the task logs' (Airflow's remote logging, whose connection every task can
read) lists, reads and writes under `<stack>/task-logs`, and so cannot read or delete a backup.
The keys are secret Outputs that also carry the bucket, its settings and the key's policy as
dependencies: no step gets a key before the bucket is ready and the key may use it.

The bucket has its own aws.Provider in its region, not a node's: removing or replacing a node
never moves the bucket to another provider.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from .config import created_user_name

# pgBackRest: its repository's files (GetObject, PutObject; a large file goes up in parts, and
# an upload that fails is aborted) and the expiry of old backups and WAL (DeleteObject).
BACKUP_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
# Airflow's S3 task handler (the amazon provider's S3RemoteLogIO): a HEAD and a read of the log
# it appends to, the upload; the UI's read lists the attempt's keys and reads them. It deletes
# nothing in the bucket.
TASK_LOG_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload")
SSE_ALGORITHM = "AES256"  # SSE-S3: the keys are AWS's, no KMS key to manage or pay for
IAM_PATH = "/airflow-ha/"


def backup_prefix(stack: str) -> str:
    """Where pgBackRest's repository lives in the bucket (BackupArgs.repo_path, no slash)."""
    return f"{stack}/pgbackrest"


def task_log_prefix(stack: str) -> str:
    """Where Airflow's task logs live in the bucket (TaskLogs.folder)."""
    return f"{stack}/task-logs"


def partition(region: str) -> str:
    """The ARN partition of an AWS region (GovCloud has its own)."""
    return "aws-us-gov" if region.startswith("us-gov-") else "aws"


def prefix_policy(bucket: str, region: str, prefix: str, actions: Sequence[str]) -> str:
    """An IAM policy (JSON text) that reaches `prefix` of `bucket` and nothing else.

    ListBucket only with a prefix under it: both clients list only there, and S3 then answers
    a HEAD of a key not there yet under the prefix with 404 rather than 403 (Airflow's append
    check, pgBackRest's info files). No HeadBucket (which would need ListBucket on the whole
    bucket): neither client calls it."""
    bucket_arn = f"arn:{partition(region)}:s3:::{bucket}"
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ListOwnPrefix",
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": bucket_arn,
                    "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
                },
                {
                    "Sid": "ObjectsUnderOwnPrefix",
                    "Effect": "Allow",
                    "Action": list(actions),
                    "Resource": f"{bucket_arn}/{prefix}/*",
                },
            ],
        },
        indent=2,
    )


@dataclass(frozen=True)
class BucketArgs:
    """What the bucket needs from the stack config."""

    cluster: str  # "airflow-ha-<stack>": tags
    stack: str
    bucket: str
    region: str
    protect: bool  # protectServers


@dataclass(frozen=True)
class Keys:
    """One access key: both halves secret Outputs (see the module's docstring)."""

    access_key: pulumi.Output[str]
    secret_key: pulumi.Output[str]


class ObjectStorageBucket(pulumi.ComponentResource):
    """The bucket and its settings, the backups' key (`backup_keys`) and the task logs' key
    (`task_log_keys`)."""

    def __init__(self, name: str, args: BucketArgs, opts: pulumi.ResourceOptions | None = None):
        import pulumi_aws as aws

        super().__init__("airflow-ha:bucket:ObjectStorageBucket", name, None, opts)
        self._args = args
        self._provider = aws.Provider(
            f"object-storage-aws-{args.region}",
            region=args.region,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.bucket = aws.s3.Bucket(
            "bucket",
            bucket=args.bucket,
            force_destroy=False,
            tags={"cluster": args.cluster},
            opts=self._opts(protect=args.protect),
        )
        settings = self._settings()
        self.backup_keys = self._key(
            "backup", backup_prefix(args.stack), BACKUP_ACTIONS, settings
        )
        self.task_log_keys = self._key(
            "task-logs", task_log_prefix(args.stack), TASK_LOG_ACTIONS, settings
        )
        self.register_outputs({"bucket": self.bucket.bucket})

    def _opts(self, **more: object) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, provider=self._provider, **more)

    def _settings(self) -> list[pulumi.Resource]:
        """Public access blocked, ACLs off, encryption by default: one after the other, as S3
        refuses two changes to one bucket's settings at once (OperationAborted)."""
        import pulumi_aws as aws

        bucket = self.bucket.bucket  # the name, as the settings take it
        public = aws.s3.BucketPublicAccessBlock(
            "bucket-public-access-block",
            bucket=bucket,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=self._opts(),
        )
        ownership = aws.s3.BucketOwnershipControls(
            "bucket-ownership",
            bucket=bucket,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=self._opts(depends_on=[public]),
        )
        encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            "bucket-encryption",
            bucket=bucket,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": SSE_ALGORITHM}}],
            opts=self._opts(depends_on=[ownership]),
        )
        return [public, ownership, encryption]

    def _key(
        self, role: str, prefix: str, actions: Sequence[str], settings: list[pulumi.Resource]
    ) -> Keys:
        """An IAM user of its own, its policy (the prefix only) and its access key."""
        import pulumi_aws as aws

        a = self._args
        user = aws.iam.User(
            f"{role}-user",
            name=created_user_name(a.stack, role),
            path=IAM_PATH,
            tags={"cluster": a.cluster},
            opts=self._opts(),
        )
        policy = aws.iam.UserPolicy(
            f"{role}-policy",
            user=user.name,
            name=f"{role}-prefix-only",
            policy=prefix_policy(a.bucket, a.region, prefix, actions),
            opts=self._opts(),
        )
        key = aws.iam.AccessKey(f"{role}-access-key", user=user.name, opts=self._opts())
        # What a step must not run before: the bucket ready, the key allowed into it.
        ready = [self.bucket.id, *(s.id for s in settings), policy.id]

        def carried(value: pulumi.Output[str]) -> pulumi.Output[str]:
            return pulumi.Output.secret(pulumi.Output.all(value, *ready).apply(lambda v: v[0]))

        return Keys(access_key=carried(key.id), secret_key=carried(key.secret))
