#!/bin/bash
# The drills' monitor; runs ON a node:  monitor.sh MESH_ADDRESS LOG
# It appends what this node itself sees, so that a node cut off from the host
# (tools.localcloud partition) still leaves a record to read after healing. Two loops:
#   every second:  UNIX_TIME amqp=listening|closed patroni=ROLE/STATE etcd=healthy|unhealthy
#   back to back:  UNIX_TIME diag=running|stopped
# amqp: RabbitMQ's AMQP listener (closed while pause_minority has paused the node); diag:
# `rabbitmq-diagnostics is_running` (slow: an Erlang VM per call); patroni: its REST API's
# role and state; etcd: the local member's `endpoint health` (needs a quorum).
# Stops on SIGTERM (the drills kill its process group).
set -u
mesh=$1
log=$2

diag_loop() {
    while :; do
        t=$(date +%s.%N)
        if timeout 15 rabbitmq-diagnostics -q is_running 2>/dev/null |
            grep -q 'fully booted and running'; then state=running; else state=stopped; fi
        printf '%.3f diag=%s\n' "$t" "$state" >>"$log"
        sleep 1
    done
}

diag_loop &
trap 'kill $! 2>/dev/null; exit 0' TERM
while :; do
    t=$(date +%s.%N)
    if [ -n "$(ss -Hltn "sport = :5672")" ]; then amqp=listening; else amqp=closed; fi
    patroni=$(curl -s -m 2 "http://$mesh:8008/patroni" | python3 -c \
        'import json, sys; d = json.load(sys.stdin); print(d.get("role"), d.get("state"), sep="/")' \
        2>/dev/null) || patroni=unreachable
    if ETCDCTL_API=3 timeout 3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health \
        >/dev/null 2>&1; then etcd=healthy; else etcd=unhealthy; fi
    printf '%.3f amqp=%s patroni=%s etcd=%s\n' "$t" "$amqp" "${patroni:-unreachable}" "$etcd" \
        >>"$log"
    sleep 1 &
    wait $!
done
