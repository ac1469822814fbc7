#!/bin/bash
# A/B: pgbench -N -c 4 against a primary with pg_receivewal --synchronous as its synchronous
# standby, with and without a SCHED_IDLE busy loop (own session), alternating rounds.
set -e
D=${D:-/tmp/burner-ab}; PORT=54998
rm -rf $D; mkdir -p $D/wal; chown -R postgres $D
su postgres -c "initdb -D $D/data -A trust >/dev/null"
cat >> $D/data/postgresql.conf <<EOC
port=$PORT
unix_socket_directories='$D'
listen_addresses=''
max_wal_senders=4
wal_level=replica
EOC
su postgres -c "pg_ctl -D $D/data -l $D/log start -w >/dev/null"
su postgres -c "pgbench -h $D -p $PORT -i -s 10 postgres >/dev/null 2>&1"
su postgres -c "pg_receivewal -h $D -p $PORT -D $D/wal --synchronous --create-slot -S pgrw >/dev/null 2>&1 || true"
su postgres -c "cd $D && setsid pg_receivewal -h $D -p $PORT -D $D/wal --synchronous -S pgrw -d 'application_name=pgrw host=$D port=$PORT' >$D/rw.log 2>&1 &"
su postgres -c "psql -h $D -p $PORT -qc \"alter system set synchronous_standby_names='pgrw'\" -c 'select pg_reload_conf()' postgres" >/dev/null
for i in $(seq 50); do s=$(su postgres -c "psql -h $D -p $PORT -Atc \"select sync_state from pg_stat_replication where application_name='pgrw'\" postgres"); [ "$s" = sync ] && break; sleep 0.2; done
echo "standby: $s"
run() { # $1 label
  rm -f $D/pgbench_log.*
  su postgres -c "psql -h $D -p $PORT -qc checkpoint postgres"
  su postgres -c "cd $D && pgbench -h $D -p $PORT -N -c 4 -T ${SECS:-15} -l postgres 2>&1" | grep -o "tps = [0-9.]*" | head -1 > $D/tps
  python3 - "$1" $D <<'PY'
import sys,glob
lat=[]
for f in glob.glob(sys.argv[2]+'/pgbench_log.*'):
    for l in open(f):
        p=l.split(); lat.append(int(p[2]))
lat.sort(); n=len(lat)
tps=open(sys.argv[2]+'/tps').read().strip()
print(f"{sys.argv[1]:12s} {tps:16s} n={n} p50={lat[n//2]/1000:.2f} ms p99={lat[n*99//100]/1000:.2f} ms over5ms={sum(1 for x in lat if x>5000)}")
PY
}
SECS=5 run warmup-off
start_burner() {
  case $1 in
    idle) setsid chrt -i 0 ./burn 1000 1000 & ;;
    idle-ag19) setsid chrt -i 0 ./burn 1000 1000 & sleep 0.2; echo 19 > /proc/$(pgrep -f spin/burn)/autogroup ;;
    nice19-slice) setsid ./burn2 0 19 100000 2>/dev/null & ;;
    idle-samesession) chrt -i 0 ./burn 1000 1000 & ;;
    idle-short) setsid chrt -i 0 ./burn 0.2 1.2 & ;;
    idle-long) setsid chrt -i 0 ./burn 50 300 & ;;
  esac
  sleep 0.5
}
SIDES=${SIDES:-off idle}
for r in 1 2 3; do
  set -- $SIDES
  # rotate the order each round
  for i in $(seq $(( (r-1) % $# ))); do set -- "${@:2}" "$1"; done
  for side in "$@"; do
    [ $side != off ] && start_burner $side
    run "r$r-$side"
    [ $side != off ] && { pkill -f spin/burn; sleep 0.5; }
  done
done
pkill -f "pg_receivewal -h $D" || true
su postgres -c "pg_ctl -D $D/data stop -m fast >/dev/null"
