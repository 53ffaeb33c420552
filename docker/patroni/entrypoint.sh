#!/bin/sh
# Entrypoint of the Lenkwerk Patroni image (docker/patroni): writes
# /etc/patroni/patroni.yml from environment variables and runs Patroni.
# Anything but no arguments or "patroni" is executed as is.
#
#   PATRONI_NAME            member name (hostname)
#   PATRONI_SCOPE           cluster name (lenkwerk)
#   PATRONI_ETCD3_HOSTS     etcd v3 members, host:port,… (etcd:2379)
#   LENKWERK_PATRONI_HOST   name other members and clients reach this one by (hostname)
#   LENKWERK_DATABASE       database created at bootstrap (lenkwerk)
#   LENKWERK_SLOT           the agent's slot name (lw_agent): ignored by Patroni
#                           until declared permanent (docs: README, "Highly available")
#   LENKWERK_PATRONI_TTL, LENKWERK_PATRONI_LOOP_WAIT, LENKWERK_PATRONI_RETRY_TIMEOUT
#                           leader lock TTL and loop timings in seconds (20, 2, 5)
#   LENKWERK_PATRONI_SYNCHRONOUS  "on": synchronous_mode (off)
#   PATRONI_SUPERUSER_PASSWORD   password of postgres; without it, host
#                           access is by trust (TESTS ONLY)
#   LENKWERK_PG_PARAMETERS  extra postgresql.conf settings, "name=value …"
#
# Patroni reads PATRONI_* variables itself as well; those named above mean
# what Patroni's documentation says.
#
# "permanent-slot": a one-shot job for after "lenkwerk migrate up": declares
# LENKWERK_SLOT (in LENKWERK_DATABASE, plugin pgoutput) one of Patroni's
# permanent slots (PATCH /config) through the first member of
# LENKWERK_PATRONI_API ("pg0:8008,pg1:8008") that answers, retrying for a
# minute.
set -eu
if [ "${1:-}" = permanent-slot ]; then
	exec python3 - <<'PY'
import json, os, sys, time, urllib.request
slot = os.environ.get("LENKWERK_SLOT", "lw_agent")
body = json.dumps({"slots": {slot: {"type": "logical", "plugin": "pgoutput",
                                    "database": os.environ.get("LENKWERK_DATABASE", "lenkwerk")}}}).encode()
apis = os.environ.get("LENKWERK_PATRONI_API", "pg0:8008,pg1:8008").split(",")
deadline = time.time() + 60
while True:
    for api in apis:
        try:
            req = urllib.request.Request("http://%s/config" % api.strip(), data=body, method="PATCH")
            with urllib.request.urlopen(req, timeout=5) as r:
                print("permanent slot %s declared through %s (%d)" % (slot, api, r.status))
                sys.exit(0)
        except Exception as e:
            err = "%s: %s" % (api, e)
    if time.time() > deadline:
        sys.exit("permanent slot %s: no Patroni member answered: %s" % (slot, err))
    time.sleep(2)
PY
fi
if [ $# -gt 0 ] && [ "$1" != patroni ]; then
	exec "$@"
fi
host=${LENKWERK_PATRONI_HOST:-$(hostname)}
name=${PATRONI_NAME:-$host}
db=${LENKWERK_DATABASE:-lenkwerk}
slot=${LENKWERK_SLOT:-lw_agent}
sync=false
[ "${LENKWERK_PATRONI_SYNCHRONOUS:-off}" = on ] && sync=true
auth=trust
pw=
if [ -n "${PATRONI_SUPERUSER_PASSWORD:-}" ]; then
	auth=scram-sha-256
	pw="password: '$(printf %s "$PATRONI_SUPERUSER_PASSWORD" | sed "s/'/''/g")'"
fi
extra=
for kv in ${LENKWERK_PG_PARAMETERS:-}; do
	extra="$extra
        ${kv%%=*}: '${kv#*=}'"
done
cat >/etc/patroni/post-bootstrap.sh <<SH
#!/bin/sh
# Patroni passes a libpq URL of the new primary.
exec psql -v ON_ERROR_STOP=1 -qAt "\$1" -c 'CREATE DATABASE "$db"'
SH
chmod 755 /etc/patroni/post-bootstrap.sh
cat >/etc/patroni/patroni.yml <<YAML
scope: ${PATRONI_SCOPE:-lenkwerk}
name: $name
restapi:
  listen: 0.0.0.0:8008
  connect_address: $host:8008
etcd3:
  hosts: ${PATRONI_ETCD3_HOSTS:-etcd:2379}
bootstrap:
  # Dynamic configuration: written to etcd by the first member only.
  dcs:
    ttl: ${LENKWERK_PATRONI_TTL:-20}
    loop_wait: ${LENKWERK_PATRONI_LOOP_WAIT:-2}
    retry_timeout: ${LENKWERK_PATRONI_RETRY_TIMEOUT:-5}
    maximum_lag_on_failover: 1048576
    synchronous_mode: $sync
    # Patroni drops every inactive slot it does not know. The agent's slot,
    # created by "lenkwerk migrate up", must survive until it is declared
    # permanent ("slots:"), which cannot come first: Patroni would create
    # it as soon as the database exists and migration 7 refuses a slot it
    # did not create.
    ignore_slots:
      - name: $slot
        type: logical
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: logical
        hot_standby_feedback: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        max_slot_wal_keep_size: ${LENKWERK_MAX_SLOT_WAL_KEEP_SIZE:-'-1'}
        jit: 'off'$extra
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
  post_bootstrap: /etc/patroni/post-bootstrap.sh
postgresql:
  listen: 0.0.0.0:5432
  connect_address: $host:5432
  data_dir: $PGDATA
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: /tmp/pgpass
  # A replica's base backup should not wait for a spread checkpoint
  # (checkpoint_timeout × completion target: minutes).
  basebackup:
    - checkpoint: fast
  authentication:
    superuser:
      username: postgres
      $pw
    replication:
      username: postgres
      $pw
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host all all all $auth
    - host replication all all $auth
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
YAML
exec patroni /etc/patroni/patroni.yml
