#!/usr/bin/env bash
# slurm-local.sh: a real single-node Slurm cluster on this machine, for trying
# `hubsweep run --executor slurm` on a laptop and for the test command.
# Debian/Ubuntu, as root, without systemd (the daemons detach by themselves).
#
#   scripts/slurm-local.sh start   install Slurm from apt if missing, write
#                                  /etc/slurm/slurm.conf, start slurmctld and
#                                  slurmd, wait until a job really runs.
#                                  Idempotent: a second start costs < 1 s.
#   scripts/slurm-local.sh stop    cancel jobs and stop ONLY the daemons this
#                                  script started (its PID files say which)
#   scripts/slurm-local.sh status  what of ours runs, and sinfo
#
# Settings (environment, optional):
#   SLURM_LOCAL_CPUS=N      CPUs to advertise (default: the real count; more
#                           lets more small jobs run at once)
#   SLURM_LOCAL_PARTITION   partition name (default: debug)
#   SLURM_LOCAL_TIMEOUT=60  seconds to wait for a daemon or the smoke job
#   SLURM_LOCAL_FORCE=1     overwrite a slurm.conf this script did not write
#
# Authentication is auth/none when the installed Slurm has it (Debian 12's
# 22.05 does): no daemon, no key, but any local user may claim any UID. Fine
# on a throw-away machine; a real cluster uses munge. Otherwise munged is
# started as the `munge` user.
set -Eeuo pipefail

CPUS=${SLURM_LOCAL_CPUS:-}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
FORCE=${SLURM_LOCAL_FORCE:-0}

NODE=localhost
CONF=/etc/slurm/slurm.conf
RUN_DIR=/run/slurm-local
LOG_DIR=/var/log/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
MARKER="# Written by hubsweep scripts/slurm-local.sh; rewritten on every start."
LOCK=/run/slurm-local.lock
export SLURM_CONF=$CONF

T0=$SECONDS
log() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { printf 'slurm-local: error: %s\n' "$*" >&2; exit 1; }
tail_log() { [ -s "$1" ] && { printf -- '--- %s (last lines) ---\n' "$1" >&2; tail -n 20 "$1" >&2; }; return 0; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# A PID is ours and alive when the PID file names a process with that command
# name that is not a zombie (this sandbox's PID 1 reaps orphans late).
pid_of() { # name pidfile
  local pid state
  [ -r "$2" ] || return 1
  pid=$(tr -dc '0-9' < "$2")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  state=$(sed 's/.*) //; s/ .*//' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ] || return 1
  printf '%s\n' "$pid"
}

wait_for() { # what logfile command...
  local what=$1 logf=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { tail_log "$logf"; die "$what not ready after ${TIMEOUT}s (see $logf)"; }
    sleep 0.2
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

ensure_packages() {
  local p missing=() added_policy=0 rc=0
  for p in slurmctld slurmd slurm-client munge; do installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian and Ubuntu"
  log "installing ${missing[*]} from apt"
  local t=$SECONDS aptlog=/var/log/slurm-local-apt.log
  # Package scripts must not start services: we start our own daemons.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  {
    DEBIAN_FRONTEND=noninteractive apt-get -q update -o DPkg::Lock::Timeout=600 &&
      DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends \
        -o DPkg::Lock::Timeout=600 "${missing[@]}"
  } > "$aptlog" 2>&1 || rc=$?
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { tail_log "$aptlog"; die "apt-get failed (exit $rc); log: $aptlog"; }
  log "installed in $((SECONDS - t))s"
}

plugin_dir() {
  local d
  for d in /usr/lib/*/slurm-wlm /usr/lib/slurm-wlm /usr/lib64/slurm /usr/lib/slurm; do
    [ -e "$d/auth_munge.so" ] && { printf '%s\n' "$d"; return 0; }
  done
  return 1
}

slurm_conf() { # auth
  local probe real_cpus mem cpus
  probe=$(slurmd -C 2>/dev/null || true)
  real_cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<< "$probe" | head -n1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$probe" | head -n1)
  [ -n "$real_cpus" ] || real_cpus=$(nproc)
  [ -n "$mem" ] || mem=$(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo)
  # Advertise a little less memory than the probe, or the node drains ("Low RealMemory").
  mem=$((mem * 95 / 100))
  cpus=${CPUS:-$real_cpus}
  case $cpus in '' | *[!0-9]* | 0) die "SLURM_LOCAL_CPUS must be a positive integer (got '$cpus')" ;; esac
  cat <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/$1
CredType=cred/$1
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups here: track job processes through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# Consider a new batch job at once, not after the default 3 s delay.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
# Without DefMemPerCPU each job takes the whole node's memory: one job at a time.
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
EOF
  [ "$cpus" -gt "$real_cpus" ] && echo "SlurmdParameters=config_overrides"
  echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
  echo "PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"
}

ctld_up() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { timeout 5 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }
node_ready() { case $(node_state) in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac; }
munge_works() { timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }

start_munge() {
  pid_of munged "$RUN_DIR/munged.pid" >/dev/null && return 0
  munge_works && { log "using a munged this script did not start"; return 0; }
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 600 /etc/munge/munge.key
  # munged refuses root; 9>&- keeps our lock fd out of the daemon.
  runuser -u munge -- /usr/sbin/munged 9>&- || die "munged failed to start"
  wait_for munged /var/log/munge/munged.log munge_works
  cp /run/munge/munged.pid "$RUN_DIR/munged.pid"
}

start_daemon() { # name args...
  local name=$1
  shift
  pid_of "$name" "$RUN_DIR/$name.pid" >/dev/null && return 0
  local port=6817
  [ "$name" = slurmd ] && port=6818
  port_busy $port && die "port $port ($name) is taken by a process this script did not start; stop it first"
  "$name" "$@" 9>&- 2> "$RUN_DIR/$name.err" || { tail_log "$RUN_DIR/$name.err"; tail_log "$LOG_DIR/$name.log"; die "$name failed to start"; }
  log "started $name"
}

stop_ours() { # name...: SIGTERM our daemons, wait, SIGKILL stragglers
  local name pid pids=() deadline
  for name in "$@"; do
    if pid=$(pid_of "$name" "$RUN_DIR/$name.pid"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  deadline=$((SECONDS + TIMEOUT))
  for pid in "${pids[@]}"; do
    while [ -d "/proc/$pid" ] && [ "$(sed 's/.*) //; s/ .*//' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
      [ "$SECONDS" -lt "$deadline" ] || { kill -KILL "$pid" 2>/dev/null || true; break; }
      sleep 0.1
    done
  done
}

cmd_start() {
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR" /etc/slurm
  ensure_packages
  local plugins auth conf
  plugins=$(plugin_dir) || die "Slurm's plugin directory not found (is slurm-wlm-basic-plugins installed?)"
  if [ -e "$plugins/auth_none.so" ] && [ -e "$plugins/cred_none.so" ]; then auth=none; else auth=munge; fi
  [ "$auth" = munge ] && start_munge
  conf=$(slurm_conf "$auth")
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$conf" ]; then
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
      [ "$FORCE" = 1 ] || die "$CONF was not written by this script; set SLURM_LOCAL_FORCE=1 to replace it (a .bak copy is kept)"
      cp -p "$CONF" "$CONF.bak"
    fi
    printf '%s\n' "$conf" > "$CONF.tmp" && mv -f "$CONF.tmp" "$CONF"
    # Running daemons read the config only at start.
    stop_ours slurmd slurmctld
  fi
  start_daemon slurmctld
  wait_for slurmctld "$LOG_DIR/slurmctld.log" ctld_up
  start_daemon slurmd -N "$NODE"
  # A node left down or drained by an earlier crash never takes jobs: resume it.
  case $(node_state || true) in
    *drain* | down* | fail*) timeout 10 scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  wait_for "node $NODE" "$LOG_DIR/slurmd.log" node_ready
  if [ ! -e "$RUN_DIR/smoke-ok" ]; then
    (cd /tmp && timeout "$TIMEOUT" srun -N1 -n1 -t 1 -J slurm-local-smoke /bin/true) ||
      { tail_log "$LOG_DIR/slurmctld.log"; tail_log "$LOG_DIR/slurmd.log"; die "smoke job 'srun true' failed"; }
    touch "$RUN_DIR/smoke-ok"
  fi
  log "ready in $((SECONDS - T0))s: $(timeout 10 sinfo -h -o '%P %a %D %T %c CPUs' | head -n1)"
}

cmd_stop() {
  if pid_of slurmctld "$RUN_DIR/slurmctld.pid" >/dev/null && ctld_up; then
    local jobs
    jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ') || true
    # shellcheck disable=SC2086
    [ -n "${jobs// /}" ] && { log "cancelling jobs $jobs"; timeout 10 scancel $jobs 2>/dev/null || true; }
  fi
  stop_ours slurmd slurmctld
  stop_ours munged
  rm -f "$RUN_DIR/smoke-ok"
  log "stopped in $((SECONDS - T0))s"
}

cmd_status() {
  local name pid any=0
  for name in slurmctld slurmd munged; do
    if pid=$(pid_of "$name" "$RUN_DIR/$name.pid"); then log "$name running (pid $pid)"; any=1; fi
  done
  [ "$any" = 1 ] || { log "no daemon of ours is running"; return 3; }
  ctld_up && timeout 10 sinfo
}

mkdir -p "$(dirname "$LOCK")"
exec 9> "$LOCK"
flock -w 120 9 || die "another slurm-local.sh holds $LOCK"
case ${1:-start} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (start, stop or status)" ;;
esac
