"""AirflowTier: Airflow 3 with the CeleryExecutor on every node, active-active.

Every node runs the six processes (api-server, scheduler, dag-processor, triggerer, Celery worker,
Flower) as systemd units under the `airflow` user, from a venv installed from a committed,
hash-pinned lock file (templates/airflow/requirements-<version>-py313.txt) so that every node
gets exactly the same packages. Each node reaches the metadata database through its own HAProxy
(the database tier's `airflow_db_url`) and the broker through the failover list of all RabbitMQ
nodes (the broker tier's `broker_url`), with quorum queues and publisher confirms.

Secrets that must be equal everywhere (Fernet key, [api] secret_key, [api_auth] jwt_secret, the
admin password) are generated once with pulumi_random and stay secret.

Auth: the FAB auth manager (provider apache-airflow-providers-fab, in the lock). Its users live
in the shared metadata database, so the one admin created once works on every node, and users
can be managed in the UI. The simpler SimpleAuthManager (users in airflow.cfg, passwords in a
file rendered on every node) would work too, but Airflow 3.3 documents it as development-only
and logs a warning on every start of a deployment shaped like this one.

Task logs: on the worker's disk, served to the UIs by its log server while the task runs. With
objectStorage, each task's log also goes to the stack's bucket at the task's end (Airflow's
remote logging, the amazon provider's S3 handler), and the UI on any node reads it there: a lost
worker's logs stay readable. The connection (the bucket's keys) is a secret in the env file.

Order: every node installs the venv (parallel) -> every node writes airflow.cfg, the env file
and the units once its database and broker are ready (parallel) -> `airflow db migrate` and the
admin user, once, from the first node -> node by node (a rolling restart), each starts (or,
when something changed, restarts) its units and waits until its api-server is healthy.
`ready[node]` is that last step.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_random as random

from .config import ConfigError, NodeSpec, ObjectStorage
from .layout import (
    AIRFLOW_ACCOUNT,
    AIRFLOW_HOME,
    AIRFLOW_USER,
    DAGS_DIR,
    OBJECT_STORAGE_CA,
    UI_PORT,
)
from .nodes import Node
from .remote import TEMPLATES_DIR, RemoteFile, content_digest, render, render_output, run_step
from .tier import TierArgs, generated_password

PYTHON_TAG = "py313"  # Debian 13's python3
# The units run from VENV, a symlink to one of VENVS_DIR/<version>-<lock digest>: a new
# version or lock is built beside the running venv and switched in the chained start step.
VENV = f"{AIRFLOW_HOME}/venv"
VENVS_DIR = f"{AIRFLOW_HOME}/venvs"
LOGS_DIR = f"{AIRFLOW_HOME}/logs"
PLUGINS_DIR = f"{AIRFLOW_HOME}/plugins"
CONFIG_DIR = "/etc/airflow"
AIRFLOW_CFG = f"{CONFIG_DIR}/airflow.cfg"
AIRFLOW_ENV = f"{CONFIG_DIR}/airflow.env"
LOG_FIREWALL = f"{CONFIG_DIR}/log-servers.nft"
# Warms each api-server worker's Execution API before it accepts connections (see the plugin).
WARMUP_PLUGIN = f"{PLUGINS_DIR}/airflow_ha_warmup.py"
WARMUP_PATH = "/execution/health"
# The Celery worker's gate: it starts taking tasks only once its node's api-server answers.
WAIT_API_SCRIPT = "/usr/local/sbin/airflow-ha-wait-execution-api"
WAIT_API_S = 300
# The scheduler, DAG processor and triggerer exit when the database fails over (Airflow does not
# reconnect their loops). Their launcher imports Airflow once and stays; each run is a forked
# child, started when the local HAProxy has a primary (polled twice a second): they are back
# seconds after writes are, not after a restart delay plus a new process's imports.
GATED_START = "/usr/local/sbin/airflow-ha-gated-start"
WAIT_DB_S = 300
GATED_MODULES = {
    "scheduler": [
        "airflow.cli.commands.scheduler_command",
        "airflow.jobs.scheduler_job_runner",
        "airflow.providers.celery.executors.celery_executor",
        # What a scheduler imported after its command started (sys.modules before and after
        # on a node: 322 modules, 1.2-1.8 s of a child's start at idle; 8 left with these).
        "airflow.utils.serve_logs",
        "airflow.utils.db",
        "alembic.command",
        "airflow.callbacks.database_callback_sink",
        "airflow.dag_processing.dagbag",
        "airflow.api_fastapi.auth.tokens",
    ],
    "dag-processor": [
        "airflow.cli.commands.dag_processor_command",
        "airflow.dag_processing.manager",
    ],
    "triggerer": [
        "airflow.cli.commands.triggerer_command",
        "airflow.jobs.triggerer_job_runner",
    ],
}
DB_GATED_UNITS = ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
CLI_WRAPPER = "/usr/local/bin/airflow"
UNIT_DIR = "/etc/systemd/system"
# Touched by a step that changed the venv, the config or a unit; the start step restarts the
# units once and removes it. A forced re-run changes nothing, so it restarts nothing.
RESTART_MARKER = "/var/lib/airflow-ha/airflow-restart-needed"

API_PORT = 8080
FLOWER_PORT = 5555
# The worker's and the triggerer's log servers: Airflow binds them to every address (no host
# option, airflow/utils/serve_logs/core.py), so a small nftables table admits them only on lo
# and the mesh interface. The api-server fetches task logs from them by hostname.
WORKER_LOG_PORT = 8793
TRIGGERER_LOG_PORT = 8794
MESH_INTERFACE = "wg0"

API_WORKERS = 2
# The task runners' calls to the Execution API ([workers] execution_api_*; Airflow's defaults
# 5 s / 5 attempts / 1-90 s wait, about 31 s in all). Warm, a call takes milliseconds; what
# they must outlast is their api-server busy or briefly away (a failover's database outage
# answers 5xx for up to ~25 s here), so: a longer per-call timeout, more attempts, and a
# bounded wait between them, about two minutes in all.
EXECUTION_API_TIMEOUT_S = 30
EXECUTION_API_RETRIES = 10
EXECUTION_API_RETRY_WAIT_MIN_S = 1
EXECUTION_API_RETRY_WAIT_MAX_S = 15
# Schedulers: a task whose worker vanished is failed (and retried) after this many seconds
# without a heartbeat (default 300), and tasks queued by a dead scheduler are adopted by the
# others after this check interval (default 300). Both bound the node-loss recovery time.
TASK_HEARTBEAT_TIMEOUT_S = 60
ORPHANED_TASKS_CHECK_S = 60
# How often the DAG processors list the DAG folder for new files (default 300 s): csync2 brings
# files within a minute, this keeps a new DAG's arrival in the UI within about two.
DAG_REFRESH_INTERVAL_S = 30
# How often an unchanged DAG file is parsed again (default 30 s). Each node's DAG processor
# parses every file, so at idle this was the largest Airflow CPU cost (3.5-3.8 % of a core per
# node here). A file that changed is parsed at once regardless (file_parsing_sort_mode
# modified_time, set explicitly because this relies on it): only DAGs built from outside state
# (a DAG generated from a database or an API) now see that state every two minutes.
DAG_MIN_FILE_PROCESS_INTERVAL_S = 120
# AMQP heartbeat: a worker or scheduler whose broker node vanished (no TCP reset when a whole
# machine dies) notices within about two heartbeats and fails over to the next URL.
BROKER_HEARTBEAT_S = 10
# Celery's result backend is the metadata database (db+postgresql): a worker stores STARTED
# before it runs a task and the outcome after. Without retries (Celery's database backend tries
# three times back to back), a failover's outage failed the Celery task before it ran, its
# message was acknowledged, and the task instance stayed queued (seen: 75 task instances stuck,
# 4 failed without running, in a burst during a primary crash). With these, the store waits
# with a backoff (10 ms doubling to 5 s, full jitter: on average half of that, 60 times: about
# two minutes) and the task then runs.
RESULT_BACKEND_RETRY = {
    "result_backend_always_retry": True,
    "result_backend_max_retries": 60,
    "result_backend_base_sleep_between_retries_ms": 10,
    "result_backend_max_sleep_between_retries_ms": 5000,
}
DB_POOL_SIZE = 5
DB_MAX_OVERFLOW = 5

# The watchdog restarts a scheduler, DAG processor or triggerer that hangs (its unit active, its
# job's heartbeat stale) instead of exiting; see templates/airflow/watchdog.py.j2.
WATCHDOG_SCRIPT = "/usr/local/sbin/airflow-ha-watchdog"
WATCHDOG_INTERVAL_S = 15
WATCHDOG_STALE_S = 60
WATCHDOG_GRACE_S = 90
WATCHDOG_CHECKS = 2

RESTART_SEC = 5
RESTART_MAX_DELAY_SEC = 60
RESTART_STEPS = 5
# The gated units restart after a flat second: their gate, not a growing delay, paces them
# (systemd never resets the step counter while the unit keeps running, so after a few failovers
# every restart would wait the maximum).
GATED_RESTART_SEC = 1
WORKER_STOP_TIMEOUT_S = 120
START_WAIT_S = 300

# Task logs in the object storage (objectStorage set). The connection is an environment variable
# of every unit (the env file, root:airflow 0640): the Celery worker's task supervisor finds it
# there when it uploads a log at the task's end, the api-servers when they read one.
REMOTE_LOG_CONN_ID = "airflow_ha_object_storage"
REMOTE_LOG_CONN_ENV = f"AIRFLOW_CONN_{REMOTE_LOG_CONN_ID.upper()}"
# Airflow's logging config with a remote read that fails soft (see the template); Airflow puts
# AIRFLOW_HOME/config on every process's sys.path.
LOG_CONFIG_MODULE = "airflow_ha_logging"
LOG_CONFIG = f"{AIRFLOW_HOME}/config/{LOG_CONFIG_MODULE}.py"
# Each S3 call bounded (botocore's defaults: 60 s to connect, 5 attempts): an unreachable
# endpoint holds a task's end (the upload) or a UI's log read for seconds, not minutes.
S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 10
S3_ATTEMPTS = 3

ADMIN_ROLE = "Admin"
AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
UI_TLS_UNIT = "airflow-ui-tls"


def lock_file(version: str) -> Path:
    """The committed lock file for an Airflow version; a ConfigError names it when missing."""
    path = TEMPLATES_DIR / "airflow" / f"requirements-{version}-{PYTHON_TAG}.txt"
    if not path.is_file():
        available = sorted(
            p.name.removeprefix("requirements-").removesuffix(f"-{PYTHON_TAG}.txt")
            for p in path.parent.glob(f"requirements-*-{PYTHON_TAG}.txt")
        )
        raise ConfigError(
            "airflowVersion",
            f"{version} has no lock file: templates/airflow/{path.name} is missing",
            f"use one of {', '.join(available) or 'none'} or generate the lock file as the "
            "header of templates/airflow/requirements-3.3.2-py313.txt says",
        )
    return path


def celery_extra_config() -> dict:
    """Merged into Celery's config by the provider ([celery] extra_celery_config).

    Quorum queues: the broker tier makes quorum the Airflow vhost's default queue type, so
    Celery's durable `default` queue is a quorum queue, replicated on every RabbitMQ node (a
    classic queue homed on one broker made every worker exit when that broker died). Celery's
    own `task_default_queue_type = "quorum"` is deliberately not set: it switches on Celery's
    native delayed delivery, whose setup runs on every consumer (re)connect against every broker
    URL and, with one machine down, blocked the consumer past its heartbeat again and again (seen
    in the node-loss drill); Airflow does not use ETA tasks.
    """
    return {
        "broker_failover_strategy": "round-robin",
        "broker_heartbeat": BROKER_HEARTBEAT_S,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        **RESULT_BACKEND_RETRY,
    }


def services(node: str) -> dict[str, dict]:
    """The six units of a node: name -> what the unit template needs."""
    base = f"{VENV}/bin/airflow"
    units = {
        "airflow-api-server": {
            "what": "api-server (UI, REST and Execution API)",
            "args": "api-server",
        },
        "airflow-scheduler": {"what": "scheduler (active-active)", "args": "scheduler"},
        "airflow-dag-processor": {"what": "DAG processor", "args": "dag-processor"},
        "airflow-triggerer": {"what": "triggerer", "args": "triggerer"},
        "airflow-worker": {
            "what": "Celery worker",
            # An explicit hostname: Celery's and Flower's name for this worker.
            "args": f"celery worker --celery-hostname {AIRFLOW_USER}@{node}",
            # After the api-server: its tasks call that api-server, so a restart of both stops
            # the worker first (running tasks end while their api-server still answers) and
            # starts it last, once the api-server answers (the gate).
            "after": ["airflow-api-server.service"],
            "extra": [
                f"ExecStartPre={WAIT_API_SCRIPT}",
                f"TimeoutStartSec={WAIT_API_S + 60}",
                # SIGTERM to the main process only (Celery's warm shutdown lets running tasks
                # end); what is still running after the timeout is killed, and with acks_late
                # its message goes back to the queue.
                "KillMode=mixed",
                f"TimeoutStopSec={WORKER_STOP_TIMEOUT_S}",
            ],
        },
        "airflow-flower": {"what": "Flower (Celery monitor)", "args": "celery flower"},
    }
    for name, unit in units.items():
        unit["exec_start"] = f"{base} {unit.pop('args')}"
        unit.setdefault("extra", [])
        unit.setdefault("after", [])
        if name in DB_GATED_UNITS:
            unit["exec_start"] = unit["exec_start"].replace(base, GATED_START, 1)
            unit["restart"] = [f"RestartSec={GATED_RESTART_SEC}"]
        else:
            unit["restart"] = [
                f"RestartSec={RESTART_SEC}",
                f"RestartSteps={RESTART_STEPS}",
                f"RestartMaxDelaySec={RESTART_MAX_DELAY_SEC}",
            ]
    return units


def unit_files(node: str) -> list[RemoteFile]:
    files = []
    for name, unit in services(node).items():
        context = {
            **unit,
            "user": AIRFLOW_USER,
            "home": AIRFLOW_HOME,
            "env_file": AIRFLOW_ENV,
            "mesh_interface": MESH_INTERFACE,
        }
        files.append(
            RemoteFile(f"{UNIT_DIR}/{name}.service", render("airflow/unit.service.j2", context))
        )
    return files


def gate_files(mesh_address: str, db_port: int) -> list[RemoteFile]:
    """The api-server's warm-up plugin, the worker's gate on its api-server and the scheduling
    units' gate on the database."""
    return [
        RemoteFile(
            GATED_START,
            render(
                "airflow/gated-start.py.j2",
                {"venv": VENV, "port": db_port, "seconds": WAIT_DB_S, "modules": GATED_MODULES},
            ),
            mode="0755",
        ),
        RemoteFile(
            WARMUP_PLUGIN,
            render("airflow/warmup_plugin.py.j2", {"path": WARMUP_PATH}),
            owner=f"root:{AIRFLOW_USER}",
        ),
        RemoteFile(
            WAIT_API_SCRIPT,
            render(
                "airflow/wait-execution-api.sh.j2",
                {"url": f"http://{mesh_address}:{API_PORT}{WARMUP_PATH}", "seconds": WAIT_API_S},
            ),
            mode="0755",
        ),
    ]


def watchdog_files() -> list[RemoteFile]:
    context = {
        "venv": VENV,
        "config": AIRFLOW_CFG,
        "script": WATCHDOG_SCRIPT,
        "interval": WATCHDOG_INTERVAL_S,
        "stale": WATCHDOG_STALE_S,
        "grace": WATCHDOG_GRACE_S,
        "checks": WATCHDOG_CHECKS,
    }
    return [
        RemoteFile(WATCHDOG_SCRIPT, render("airflow/watchdog.py.j2", context), mode="0755"),
        RemoteFile(
            f"{UNIT_DIR}/airflow-watchdog.service", render("airflow/watchdog.service.j2", context)
        ),
        RemoteFile(
            f"{UNIT_DIR}/airflow-watchdog.timer", render("airflow/watchdog.timer.j2", context)
        ),
    ]


@dataclass(frozen=True)
class TaskLogs:
    """Where the task logs go besides the worker's disk: the stack's object storage."""

    storage: ObjectStorage
    folder: str  # s3://<bucket>/<stack>/task-logs

    @staticmethod
    def of(storage: ObjectStorage | None, stack: str) -> TaskLogs | None:
        if storage is None:
            return None
        return TaskLogs(storage, f"s3://{storage.bucket}/{stack}/task-logs")


def object_storage_extra(storage: ObjectStorage) -> dict:
    """The aws connection's extra (the amazon provider's AwsConnectionWrapper reads it).

    The addressing style is explicit: with an endpoint_url botocore's `auto` means path style,
    so uriStyle host (bucket.endpoint, as the backups address it) needs `virtual`."""
    extra: dict = {
        "endpoint_url": storage.url,
        "region_name": storage.region,
        "config_kwargs": {
            "s3": {"addressing_style": "path" if storage.uri_style == "path" else "virtual"},
            "connect_timeout": S3_CONNECT_TIMEOUT_S,
            "read_timeout": S3_READ_TIMEOUT_S,
            "retries": {"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
        },
    }
    if storage.ca_certificate is not None:
        extra["verify"] = OBJECT_STORAGE_CA  # boto3's CA bundle for this endpoint
    return extra


def connection_value(login: str, password: str, extra: dict) -> str:
    """An Airflow connection as the JSON an AIRFLOW_CONN_* variable takes.

    It lands single-quoted in the env file, which systemd reads and the CLI wrapper sources as
    shell: there a value is literal up to the next quote. JSON may write any character as a
    \\u escape, so a ' (or a $) in a key becomes one and cannot end the quoting."""
    text = json.dumps(
        {"conn_type": "aws", "login": login, "password": password, "extra": extra},
        sort_keys=True,
    )
    return text.replace("'", "\\u0027").replace("$", "\\u0024")


def object_storage_connection(storage: ObjectStorage) -> pulumi.Output[str]:
    """The task logs' connection, secret end to end. Its key is the task logs' own where the
    stack has one (taskLogAccessKey, or the one objectStorage.create makes), else the backups':
    every task can read this connection."""
    extra = object_storage_extra(storage)
    return pulumi.Output.secret(
        pulumi.Output.all(*storage.task_log_keys).apply(
            lambda keys: connection_value(keys[0], keys[1], extra)
        )
    )


def task_log_files(task_logs: TaskLogs | None) -> list[RemoteFile]:
    """With objectStorage: the logging config module and the endpoint's CA (caCertificate)."""
    if task_logs is None:
        return []
    files = [RemoteFile(LOG_CONFIG, render("airflow/airflow_ha_logging.py.j2", {}))]
    if task_logs.storage.ca_certificate is not None:
        files.append(RemoteFile(OBJECT_STORAGE_CA, task_logs.storage.ca_certificate))
    return files


def fernet_key(random_base64: str) -> str:
    """A Fernet key is 32 bytes in URL-safe base64; RandomBytes gives standard base64.

    The offline render's placeholder (not base64) passes through unchanged.
    """
    try:
        raw = base64.b64decode(random_base64, validate=True)
    except (binascii.Error, ValueError):
        return random_base64
    return base64.urlsafe_b64encode(raw).decode()


@dataclass(frozen=True)
class AirflowArgs(TierArgs):
    """The Airflow tier's nodes, the stack's settings for it, and per node what the database
    and broker tiers give it: the URLs it connects with and the steps after which they are
    ready there."""

    version: str
    admin_user: str
    worker_concurrency: int
    public_ui: bool
    database_url: pulumi.Output[str]  # secret; through the node's own HAProxy
    database_port: int  # that HAProxy's port to the primary (the scheduling units' gate)
    database_ready: Mapping[str, pulumi.Resource]
    broker_urls: Mapping[str, pulumi.Output[str]]  # secret; each node's own broker first
    broker_ready: Mapping[str, pulumi.Resource]
    task_logs: TaskLogs | None = None  # None: task logs stay on the worker that ran the task


@dataclass(frozen=True)
class Secrets:
    """Equal on every node: generated once with pulumi_random, secret end to end."""

    fernet_key: pulumi.Output[str]
    api_secret_key: pulumi.Output[str]
    jwt_secret: pulumi.Output[str]
    admin_password: pulumi.Output[str]
    # Flower's basic auth, its own: airflow.cfg is readable by the airflow user (every task),
    # and the admin's password must not be.
    flower_password: pulumi.Output[str]

    @staticmethod
    def generate(parent: pulumi.Resource) -> Secrets:
        fernet = random.RandomBytes(
            "airflow-fernet-key", length=32, opts=pulumi.ResourceOptions(parent=parent)
        )
        return Secrets(
            fernet_key=pulumi.Output.secret(fernet.base64.apply(fernet_key)),
            api_secret_key=generated_password("airflow-api-secret-key", 48, parent),
            jwt_secret=generated_password("airflow-jwt-secret", 64, parent),
            admin_password=generated_password("airflow-admin-password", 24, parent),
            flower_password=generated_password("airflow-flower-password", 24, parent),
        )


def cfg_context(args: AirflowArgs, spec: NodeSpec, secrets: Secrets) -> dict:
    """What airflow.cfg is rendered from: plain values plus secret Outputs."""
    mesh = spec.mesh_address
    database_url = args.database_url
    return {
        "node": spec.name,
        "mesh_address": mesh,
        "home": AIRFLOW_HOME,
        "dags_dir": DAGS_DIR,
        "logs_dir": LOGS_DIR,
        "plugins_dir": PLUGINS_DIR,
        "auth_manager": AUTH_MANAGER,
        "api_port": API_PORT,
        "api_workers": API_WORKERS,
        "execution_api_url": f"http://{mesh}:{API_PORT}/execution/",
        "flower_port": FLOWER_PORT,
        "worker_log_port": WORKER_LOG_PORT,
        "triggerer_log_port": TRIGGERER_LOG_PORT,
        "worker_concurrency": args.worker_concurrency,
        "execution_api_timeout": EXECUTION_API_TIMEOUT_S,
        "execution_api_retries": EXECUTION_API_RETRIES,
        "execution_api_retry_wait_min": EXECUTION_API_RETRY_WAIT_MIN_S,
        "execution_api_retry_wait_max": EXECUTION_API_RETRY_WAIT_MAX_S,
        "task_heartbeat_timeout": TASK_HEARTBEAT_TIMEOUT_S,
        "orphaned_tasks_check": ORPHANED_TASKS_CHECK_S,
        "dag_refresh_interval": DAG_REFRESH_INTERVAL_S,
        "dag_min_file_process_interval": DAG_MIN_FILE_PROCESS_INTERVAL_S,
        "pool_size": DB_POOL_SIZE,
        "max_overflow": DB_MAX_OVERFLOW,
        "extra_celery_config": json.dumps(celery_extra_config(), sort_keys=True),
        "database_url": database_url,
        "result_backend": pulumi.Output.from_input(database_url).apply(lambda url: f"db+{url}"),
        "broker_url": args.broker_urls[spec.name],
        "flower_basic_auth": pulumi.Output.concat(args.admin_user, ":", secrets.flower_password),
        "fernet_key": secrets.fernet_key,
        "api_secret_key": secrets.api_secret_key,
        "jwt_secret": secrets.jwt_secret,
        "remote_logging": remote_logging_context(args.task_logs),
    }


def remote_logging_context(task_logs: TaskLogs | None) -> dict | None:
    """airflow.cfg's remote logging options; None: none (the task logs stay local)."""
    if task_logs is None:
        return None
    return {
        "folder": task_logs.folder,
        "conn_id": REMOTE_LOG_CONN_ID,
        "config_class": f"{LOG_CONFIG_MODULE}.LOGGING_CONFIG",
    }


def env_file(task_logs: TaskLogs | None) -> pulumi.Input[str]:
    """The environment of every unit and of the CLI; with objectStorage it holds the task logs'
    connection (a secret Output then)."""
    env = {"home": AIRFLOW_HOME, "config": AIRFLOW_CFG, "venv": VENV, "connection": None}
    if task_logs is None:
        return render("airflow/airflow.env.j2", env)
    env["connection"] = {
        "name": REMOTE_LOG_CONN_ENV,
        "value": object_storage_connection(task_logs.storage),
    }
    return render_output("airflow/airflow.env.j2", env)


def config_files(args: AirflowArgs, spec: NodeSpec, secrets: Secrets) -> list[RemoteFile]:
    """Everything the units run with: airflow.cfg, the env file, the log servers' firewall,
    the units, the gates, the watchdog and (publicUi) the TLS front."""
    owned = {"mode": "0640", "owner": f"root:{AIRFLOW_USER}"}
    rules = {"ports": [WORKER_LOG_PORT, TRIGGERER_LOG_PORT], "mesh_interface": MESH_INTERFACE}
    files = [
        RemoteFile(
            AIRFLOW_CFG,
            render_output("airflow/airflow.cfg.j2", cfg_context(args, spec, secrets)),
            **owned,
        ),
        RemoteFile(AIRFLOW_ENV, env_file(args.task_logs), **owned),
        *task_log_files(args.task_logs),
        RemoteFile(LOG_FIREWALL, render("airflow/log-servers.nft.j2", rules)),
        RemoteFile(
            f"{UNIT_DIR}/airflow-log-firewall.service",
            render("airflow/log-firewall.service.j2", {"rules": LOG_FIREWALL}),
        ),
        *unit_files(spec.name),
        *gate_files(spec.mesh_address, args.database_port),
        *watchdog_files(),
    ]
    if args.public_ui:
        files.append(ui_tls_file(spec.mesh_address))
    return files


def ui_tls_file(mesh_address: str) -> RemoteFile:
    context = {
        "port": UI_PORT,
        "mesh_address": mesh_address,
        "api_port": API_PORT,
        "cert": f"{CONFIG_DIR}/ui-tls.crt",
        "key": f"{CONFIG_DIR}/ui-tls.key",
    }
    return RemoteFile(
        f"{UNIT_DIR}/{UI_TLS_UNIT}.service", render("airflow/ui-tls.service.j2", context)
    )


class AirflowTier(pulumi.ComponentResource):
    def __init__(self, name: str, args: AirflowArgs, opts: pulumi.ResourceOptions | None = None):
        lock = lock_file(args.version)  # a missing lock fails before any resource
        super().__init__("airflow-ha:airflow:AirflowTier", name, None, opts)
        self._args = args
        self._lock_text = lock.read_text()
        self._lock_path = f"{AIRFLOW_HOME}/requirements-{args.version}-{PYTHON_TAG}.txt"
        self._target = f"{VENVS_DIR}/{args.version}-{content_digest(self._lock_text)[:16]}"
        self._secrets = Secrets.generate(self)
        self.fernet_key: pulumi.Output[str] = self._secrets.fernet_key
        self.jwt_secret: pulumi.Output[str] = pulumi.Output.secret(self._secrets.jwt_secret)
        self.admin_user = args.admin_user
        self.admin_password: pulumi.Output[str] = pulumi.Output.secret(
            self._secrets.admin_password
        )
        self.flower_password: pulumi.Output[str] = pulumi.Output.secret(
            self._secrets.flower_password
        )
        self._unit_names = [
            *services(args.nodes[0].spec.name),
            *([UI_TLS_UNIT] if args.public_ui else []),
        ]

        configured: dict[str, pulumi.Resource] = {}
        digests: dict[str, pulumi.Output[str]] = {}
        for node in args.nodes:
            installed = self._install(node)
            files = config_files(args, node.spec, self._secrets)
            # The start step carries a digest of everything the units run with, so that a
            # changed lock, config or unit re-runs it (and it restarts the units once).
            digests[node.spec.name] = pulumi.Output.all(
                self._lock_text, *[f.content for f in files]
            ).apply(lambda parts: content_digest(*parts))
            configured[node.spec.name] = self._configure(node, installed, files)

        first = min(args.nodes, key=lambda n: n.spec.mesh_index)  # lowest meshIndex, not order
        migrated = self._migrate(first, configured[first.spec.name])
        self.ready: dict[str, pulumi.Resource] = self._rolling_start(
            migrated, configured, digests
        )
        self._outputs(first)

    def _install(self, node: Node) -> pulumi.Resource:
        """The account, the directories and the venv from the committed lock (parallel)."""
        context = {
            "node": node.spec.name,
            "version": self._args.version,
            "venv": VENV,
            "target": self._target,
            "lock": self._lock_path,
            "dirs": [DAGS_DIR, LOGS_DIR, PLUGINS_DIR],
            "marker": RESTART_MARKER,
            **AIRFLOW_ACCOUNT.context(),
        }
        wrapper = {
            "env_file": AIRFLOW_ENV, "venv": VENV, "user": AIRFLOW_USER, "home": AIRFLOW_HOME
        }
        return run_step(
            "airflow-install",
            node.access,
            render("airflow/install.sh.j2", context),
            files=[
                RemoteFile(self._lock_path, self._lock_text),
                RemoteFile(
                    CLI_WRAPPER, render("airflow/airflow-cli.sh.j2", wrapper), mode="0755"
                ),
            ],
            parent=self,
            depends_on=[self._args.after[node.spec.name]],
            timeout_minutes=30,
        )

    def _configure(
        self, node: Node, installed: pulumi.Resource, files: list[RemoteFile]
    ) -> pulumi.Resource:
        """The config and the units, once the node's database and broker are ready (parallel);
        a changed file leaves the restart marker for the start step."""
        name = node.spec.name
        context = {
            "node": name,
            "marker": RESTART_MARKER,
            "units": [f.path for f in files if f.path.startswith(UNIT_DIR)],
            "restart_files": [
                AIRFLOW_CFG,
                AIRFLOW_ENV,
                WARMUP_PLUGIN,
                WAIT_API_SCRIPT,
                GATED_START,
                *(f.path for f in task_log_files(self._args.task_logs)),
                *(f"{UNIT_DIR}/{unit}.service" for unit in self._unit_names),
            ],
            "rules": LOG_FIREWALL,
            "public_ui": self._args.public_ui,
            "target": self._target,
            "config_dir": CONFIG_DIR,
            "user": AIRFLOW_USER,
        }
        return run_step(
            "airflow-config",
            node.access,
            render("airflow/config.sh.j2", context),
            files=files,
            parent=self,
            depends_on=[installed, self._args.database_ready[name], self._args.broker_ready[name]],
        )

    def _migrate(self, first: Node, configured: pulumi.Resource) -> pulumi.Resource:
        """The schema (and FAB's tables) and the admin user: once, from the first node.
        Airflow's `db migrate` holds a global lock in the database, so a concurrent or repeated
        run is safe; `users create` leaves an existing user alone."""
        context = {
            "version": self._args.version,
            "lock_digest": content_digest(self._lock_text),
            "target": self._target,
            "admin_user": self._args.admin_user,
            "admin_password": self._secrets.admin_password,
            "admin_role": ADMIN_ROLE,
        }
        return run_step(
            "airflow-db-migrate",
            first.access,
            render_output("airflow/migrate.sh.j2", context),
            parent=self,
            depends_on=[configured],
            timeout_minutes=20,
        )

    def _rolling_start(
        self,
        migrated: pulumi.Resource,
        configured: Mapping[str, pulumi.Resource],
        digests: Mapping[str, pulumi.Output[str]],
    ) -> dict[str, pulumi.Resource]:
        """One node after the other: a changed config or venv restarts the units of one node at
        a time, so the other two keep scheduling and running tasks meanwhile."""
        started: dict[str, pulumi.Resource] = {}
        previous: list[pulumi.Resource] = []
        for node in self._args.nodes:
            name = node.spec.name
            context = {
                "node": name,
                "digest": digests[name],
                "units": self._unit_names,
                "worker_unit": "airflow-worker",
                "marker": RESTART_MARKER,
                "venv": VENV,
                "target": self._target,
                "venvs_dir": VENVS_DIR,
                "mesh_address": node.spec.mesh_address,
                "api_port": API_PORT,
                "flower_port": FLOWER_PORT,
                "wait_seconds": START_WAIT_S,
            }
            started[name] = run_step(
                "airflow-start",
                node.access,
                render_output("airflow/start.sh.j2", context),
                parent=self,
                depends_on=[migrated, configured[name], *previous],
                timeout_minutes=15,
            )
            previous = [started[name]]
        return started

    def _outputs(self, first: Node) -> None:
        self.ui_urls: dict[str, pulumi.Output[str]] = {}
        self.ui_tunnels: dict[str, pulumi.Output[str]] = {}
        for node in self._args.nodes:
            spec = node.spec
            if self._args.public_ui:
                self.ui_urls[spec.name] = pulumi.Output.concat("https://", node.public_address, "/")
            else:
                self.ui_urls[spec.name] = pulumi.Output.from_input(
                    f"http://{spec.mesh_address}:{API_PORT}/"
                )
            self.ui_tunnels[spec.name] = _tunnel(node, API_PORT, API_PORT)
        self.flower_tunnel = _tunnel(first, FLOWER_PORT, FLOWER_PORT)
        self.register_outputs(
            {
                "uiUrls": self.ui_urls,
                "uiTunnels": self.ui_tunnels,
                "flowerTunnel": self.flower_tunnel,
                "adminUser": self.admin_user,
                "adminPassword": self.admin_password,
                "flowerPassword": self.flower_password,
            }
        )


def _tunnel(node: Node, local_port: int, remote_port: int) -> pulumi.Output[str]:
    spec = node.spec
    return pulumi.Output.concat(
        f"ssh -N -L {local_port}:{spec.mesh_address}:{remote_port} -p {spec.port} {spec.user}@",
        node.public_address,
        f"  # then open http://localhost:{local_port}/",
    )
