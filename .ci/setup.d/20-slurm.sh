#!/usr/bin/env bash
# CI: a real one-node Slurm (Debian slurm-wlm + munge, no systemd) for tests/slurm.
# Idempotent: installs only what is missing, rewrites the config only when it changed,
# restarts the daemons only when needed, and returns once the node is idle.
# Fake GPUs: gres `gpu` backed by /dev/null,/dev/zero, so `--gpus=1` is schedulable and
# jobs get CUDA_VISIBLE_DEVICES; the code still runs on the CPU.
# Recipe and pitfalls: ../shared/reference/infra_slurm_containers.md.
#
# Env: SLURM_CI_DIR  state/log/pid dir (default /var/lib/mtbench-slurm-ci)
#      SLURM_CI_GPUS fake GPUs on the node (default 2)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -n -E bash "$0" "$@"; fi
  echo "20-slurm.sh: must run as root (Slurm daemons, /etc/slurm)" >&2
  exit 1
fi

D=${SLURM_CI_DIR:-/var/lib/mtbench-slurm-ci}
NGPU=${SLURM_CI_GPUS:-2}
CONF=/etc/slurm/slurm.conf
MARK="# written by mtbench-job .ci/setup.d/20-slurm.sh"

log() { echo "20-slurm: $*"; }

dump_logs() {
  for f in "$D"/log/*.log; do
    [ -e "$f" ] || continue
    echo "--- $f (tail)" >&2
    tail -n 30 "$f" >&2
  done
}

# 1. packages (7-12 s on a fresh machine)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null ||
  ! command -v sbatch >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# a machine with its own Slurm config: leave it alone, just check it answers
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  log "$CONF was not written by this script; using the existing cluster"
  sinfo -h >/dev/null
  exit 0
fi

# 2. munge (postinst normally creates the key; make one if it did not)
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --force; else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge
chown munge:munge /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 1 40); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.25
  done
  munge -n | unmunge >/dev/null
fi

# 3. config for this host, from the node's real topology (slurmd -C)
host=$(hostname -s)
topo=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //')
# RealMemory a little below the measured value so a busy machine never reports less
mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$topo")
topo=$(sed -E "s/RealMemory=[0-9]+/RealMemory=$((mem * 9 / 10))/" <<<"$topo")
last=$((NGPU - 1))
files=""
for i in $(seq 0 "$last"); do
  # two character devices that exist everywhere; regular files are rejected by slurmd
  if [ $((i % 2)) -eq 0 ]; then dev=/dev/null; else dev=/dev/zero; fi
  files="${files:+$files,}$dev"
done
if [ "$NGPU" -gt 2 ]; then
  echo "20-slurm.sh: SLURM_CI_GPUS > 2 is not supported (two device files)" >&2
  exit 1
fi

mkdir -p "$D/state/ctld" "$D/state/d" "$D/run" "$D/log" /etc/slurm
new_conf=$(
  cat <<EOF
$MARK
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state/ctld
SlurmdSpoolDir=$D/state/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
SwitchType=switch/none
MailProg=/bin/true
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 $topo Gres=gpu:$NGPU State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
new_gres=$(printf '%s\nAutoDetect=off\nNodeName=%s Name=gpu File=%s\n' "$MARK" "$host" "$files")

restart=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$CONF"
  restart=1
fi
if [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$new_gres" ]; then
  printf '%s\n' "$new_gres" >/etc/slurm/gres.conf
  restart=1
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 4. daemons
if [ "$restart" = 1 ] || ! alive "$D/run/slurmctld.pid" || ! alive "$D/run/slurmd.pid"; then
  log "starting slurmctld and slurmd ($host, $NGPU fake GPUs)"
  for p in slurmd slurmctld; do
    if alive "$D/run/$p.pid"; then
      pid=$(cat "$D/run/$p.pid")
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  done
  # always from empty state: a drained node or stale job survives restarts otherwise
  rm -rf "${D:?}"/state/ctld/* "${D:?}"/state/d/*
  /usr/sbin/slurmctld -f "$CONF" || { dump_logs; exit 1; }
  /usr/sbin/slurmd -f "$CONF" || { dump_logs; exit 1; }
fi

# 5. wait until the node takes jobs (about 1 s)
state=""
for _ in $(seq 1 120); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  case "$state" in
    idle | mixed | allocated | completing) break ;;
    drain* | *drain | down*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.25
done
case "$state" in
  idle | mixed | allocated | completing) log "node $host is $state" ;;
  *)
    echo "20-slurm.sh: node $host did not become idle (state '$state')" >&2
    dump_logs
    exit 1
    ;;
esac
