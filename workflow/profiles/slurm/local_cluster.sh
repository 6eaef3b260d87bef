#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on THIS machine, to try the Snakemake SLURM profile
# (workflow/profiles/slurm) without a real cluster; tests/test_slurm.py runs it.
#
#   workflow/profiles/slurm/local_cluster.sh      # as root (or with sudo), on Debian or Ubuntu
#
# What it does, each step skipped when already done (a second run on a cluster that is up,
# with this machine's configuration, returns in a fraction of a second):
#   1. apt-get installs slurm-wlm (slurmctld, slurmd, the client commands) and munge;
#   2. writes /etc/slurm/slurm.conf: one node, this machine, with the CPUs and memory that
#      `slurmd -C` reports, SelectType cons_tres (CPUs and memory are the consumable
#      resources, so --cpus-per-task/--mem requests are honoured and checked), no
#      accounting (no slurmdbd: `sacct` has nothing to read, job states come from
#      `squeue`, which keeps a finished job for MinJobAge seconds);
#   3. starts munged (authentication), slurmctld (the controller) and slurmd (the node);
#   4. waits until `sinfo` shows the node idle.
# Exit status: 0 when the node is idle; 2 when this machine cannot run it (not root, not
# Linux, no apt-get); 3 when apt-get cannot download the packages (no network or no
# mirror); 1 on any other failure (the daemons' logs are in /var/log/slurm/).
#
# A test cluster, not a production one: the daemons run as root, jobs are pinned to their
# CPUs but their memory is not enforced (no cgroups, which containers often lack), no GPUs
# are configured (a job requesting one is rejected), and it stays up until the machine
# stops or `scontrol shutdown` (munged: `kill $(cat /run/munge/munged.pid)`).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
WAIT_S=${SLURM_BRINGUP_WAIT_S:-90}      # how long the node may take to become idle

say() { echo "local_cluster: $*" >&2; }
fail() { local code=$1; shift; say "$*"; exit "$code"; }

[ "$(uname -s)" = Linux ] || fail 2 "needs Linux (this is $(uname -s))"
[ "$(id -u)" = 0 ] || fail 2 "needs root (apt-get, /etc/slurm, the daemons); run it with sudo"
command -v apt-get >/dev/null || fail 2 "needs apt-get (Debian or Ubuntu)"

node_state() { sinfo --noheader --Node --format=%T 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }
running() { pgrep -x "$1" >/dev/null; }

# 1. Packages. --no-install-recommends: the daemons and client commands are all we need.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    packages=(slurm-wlm munge)
    apt-get update -qq || fail 3 "apt-get update failed (no network or no package mirror?)"
    # Download first, then install from apt's cache: a failed download (no network) exits
    # 3, a failed installation 1, so a caller can tell "cannot reach the mirror" apart.
    apt-get install -y -qq --no-install-recommends --download-only "${packages[@]}" >/dev/null \
        || fail 3 "apt-get could not download ${packages[*]} (no network or no package mirror?)"
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
        || fail 1 "apt-get install ${packages[*]} failed"
fi

# 2. munge: every SLURM message is signed with this machine's key. The Debian package
# creates the key on install; make one if it is missing (e.g. a package from elsewhere).
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! running munged; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || fail 1 "munged does not answer (see /var/log/munge/munged.log)"

# 3. slurm.conf. The node's line comes from `slurmd -C` (its CPUs, sockets, cores,
# threads and RealMemory as slurmd itself will measure them: a node that claims more
# than it has is set DRAINED). The node and the controller are this machine at
# 127.0.0.1, so nothing depends on the hostname resolving.
host=$(hostname -s)
node=$(slurmd -C | head -n1)
case "$node" in NodeName=*) ;; *) fail 1 "slurmd -C printed no node line: $node" ;; esac
node="NodeName=$host NodeAddr=127.0.0.1 ${node#NodeName=* } State=UNKNOWN"
install -d "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
new_conf=$(cat <<EOF
# One-node test cluster written by workflow/profiles/slurm/local_cluster.sh
# (re-running the script rewrites this file when the machine changed).
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Processes are tracked by parent pid, and a job's tasks are pinned to its CPUs by
# sched_setaffinity: no cgroups needed (containers often lack them).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
# CPUs and memory are consumed by jobs: --cpus-per-task and --mem are checked and summed.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No accounting: no slurmdbd, no job completion log. Job states are read with squeue,
# which lists a finished job for MinJobAge seconds (the profile polls far more often).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
# A node that was down (e.g. this machine rebooted) rejoins when its slurmd registers.
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
$node
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" > "$CONF"
    changed=1
fi

# 4. Daemons. A changed configuration (another machine size, an older file) restarts the
# running ones through SLURM itself; `scontrol shutdown` stops slurmctld and slurmd.
if [ "$changed" = 1 ] && { running slurmctld || running slurmd; }; then
    say "configuration changed: restarting slurmctld and slurmd"
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 100); do { running slurmctld || running slurmd; } || break; sleep 0.2; done
    if running slurmctld || running slurmd; then
        fail 1 "slurmctld/slurmd did not stop after scontrol shutdown"
    fi
fi
started=0
if ! running slurmctld; then say "starting slurmctld"; slurmctld; started=1; fi
if ! running slurmd; then say "starting slurmd"; slurmd; started=1; fi

deadline=$((SECONDS + WAIT_S))
while :; do
    state=$(node_state)
    case "$state" in
        idle|mixed|allocated|completing)
            if [ "$started" = 1 ]; then say "node $host is $state"; else say "already up (node $host is $state)"; fi
            exit 0 ;;
        down|drained|draining|fail|failing)
            # e.g. left down by an earlier run's state files: put it back in service
            scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ $SECONDS -lt $deadline ] || break
    sleep 1
done
sinfo --Node --long >&2 || true
tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
fail 1 "node $host not idle after ${WAIT_S}s (state: ${state:-none})"
