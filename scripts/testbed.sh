#!/usr/bin/env bash
# The real infrastructure the test suite talks to, on one Debian 12 machine (root, no GPU,
# no container registry):
#
#   docker   a Docker engine without a bridge network (only `none` and `host` exist, so no
#            172.17/16 address appears on the machine), with a stand-in NVIDIA hook so that
#            `docker run --gpus ...` is accepted and each request is logged
#   image    the runner's base image (Debian bookworm + Python), built from Debian packages
#            because nothing can be pulled
#   ssh      two SSH test hosts: one on 127.0.0.1:$RUNNER_TESTBED_SSH_PORT, one alone in a
#            network namespace (only `lo`), reached through a ProxyCommand; and a third sshd on
#            127.0.0.1:$RUNNER_TESTBED_PW_PORT that takes passwords, for one unprivileged local
#            user ($RUNNER_TESTBED_PW_USER, not in the docker group) whose password is random
#            per `up`: it is set through chpasswd's stdin and kept only in a 0600 file whose
#            path (never the password) the env file gives
#   ray      a Ray head bound to 127.0.0.1 (only when the project venv has ray)
#   slurm    a one-node Slurm cluster on 127.0.0.1 (munged, slurmctld, slurmd from Debian's
#            slurm-wlm packages) whose node offers fake GPUs as gres (character devices made
#            with mknod, so `--gres=gpu:1` is scheduled and sets CUDA_VISIBLE_DEVICES without
#            hardware); its config is $RUNNER_TESTBED_DIR/slurm/slurm.conf (SLURM_CONF).
#            With accounting (the default): slurmdbd on 127.0.0.1:$RUNNER_TESTBED_SLURM_PORT+2
#            and its own MariaDB server (datadir and socket in $RUNNER_TESTBED_DIR/slurm/db,
#            127.0.0.1:$RUNNER_TESTBED_SLURM_PORT+3); accounting is enforced
#            (associations,limits,qos), with account `ml` (root's default account, QOS
#            `normal` and `short`), so `sacct` answers and an unknown account or QOS is
#            refused. The DB user's password is random per `up` and kept only in the 0600
#            slurmdbd.conf
#
# usage: scripts/testbed.sh up|down|status
#
# `up` is idempotent and reuses what is already there: an engine that already answers is used
# as it is (and left running by `down`). Every daemon this script starts has its PID recorded
# under $RUNNER_TESTBED_DIR; `down` stops exactly those PIDs. Nothing in ~/.ssh is touched: the
# SSH client settings go to $RUNNER_TESTBED_DIR/ssh/ssh_config and .../known_hosts.
# Tests read $RUNNER_TESTBED_DIR/env (shell `export` lines) to find what was started.
#
# settings (environment variables):
#   RUNNER_TESTBED_DIR        state directory                     (/tmp/runner-testbed)
#   RUNNER_BASE_IMAGE         base image to build                 (runner-base:bookworm)
#   RUNNER_TESTBED_SSH_PORT   loopback port of the first SSH host (2322)
#   RUNNER_TESTBED_NETNS      network namespace of the second     (runner-remote1)
#   RUNNER_TESTBED_PW_PORT    loopback port of the password host  (2323)
#   RUNNER_TESTBED_PW_USER    its only login user (created)       (runnerpw)
#   RUNNER_TESTBED_VENV       venv whose `ray` starts the head    (the repository's .venv)
#   RUNNER_TESTBED_RAY_PORT   Ray GCS port; dashboard is +1886    (6381)
#   RUNNER_TESTBED_SLURM_PORT slurmctld's loopback port; slurmd +1, (16817)
#                             slurmdbd +2, MariaDB +3
#   RUNNER_TESTBED_SLURM_ACCT 1: the cluster keeps accounting; 0: none (1)
#   RUNNER_TESTBED_SLURM_GPUS fake GPUs the Slurm node offers      (2)
#   RUNNER_TESTBED_SKIP       space-separated parts to skip: apt docker image ssh ray slurm
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
D=${RUNNER_TESTBED_DIR:-/tmp/runner-testbed}
IMAGE=${RUNNER_BASE_IMAGE:-runner-base:bookworm}
SSH_PORT=${RUNNER_TESTBED_SSH_PORT:-2322}
NETNS=${RUNNER_TESTBED_NETNS:-runner-remote1}
PW_PORT=${RUNNER_TESTBED_PW_PORT:-2323}
PW_USER=${RUNNER_TESTBED_PW_USER:-runnerpw}
VENV=${RUNNER_TESTBED_VENV:-$REPO/.venv}
RAY_PORT=${RUNNER_TESTBED_RAY_PORT:-6381}
RAY_DASH_PORT=$((RAY_PORT + 1886))
SLURM_PORT=${RUNNER_TESTBED_SLURM_PORT:-16817}
SLURM_GPUS=${RUNNER_TESTBED_SLURM_GPUS:-2}
SLURM_ACCT=${RUNNER_TESTBED_SLURM_ACCT:-1}
case $SLURM_ACCT in 0|1) ;; *) echo "RUNNER_TESTBED_SLURM_ACCT must be 0 or 1, not '$SLURM_ACCT'" >&2; exit 2 ;; esac
DBD_PORT=$((SLURM_PORT + 2))
DB_PORT=$((SLURM_PORT + 3))
DB_PW=
SL="$D/slurm"
SKIP=" ${RUNNER_TESTBED_SKIP:-} "
T0=$(date +%s%N)

say() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[testbed %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
skip() { [[ "$SKIP" == *" $1 "* ]]; }
# A PID is alive when /proc has it and it is not a zombie (PID 1 here reaps late).
pid_alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
pidfile_alive() { [ -f "$1" ] && pid_alive "$(cat "$1")"; }
stop_pidfile() {  # $1 pidfile, $2 seconds between SIGTERM and SIGKILL
  [ -f "$1" ] || return 0
  local p; p=$(cat "$1")
  if pid_alive "$p"; then
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 $(( $2 * 10 ))); do pid_alive "$p" || break; sleep 0.1; done
    if pid_alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  fi
  rm -f "$1"
}
envline() { printf 'export %s=%q\n' "$1" "$2" >>"$D/env.new"; }

# ---------------------------------------------------------------------------------------------
apt_packages() {
  local want=(docker.io debootstrap openssh-server socat busybox-static iproute2 util-linux curl ca-certificates)
  local missing=()
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  say "packages ready"
}

fake_gpu_hook() {
  # dockerd offers its "nvidia" device driver (what --gpus needs) only when an executable of
  # this name is on its PATH; runc then runs it as a prestart hook with the OCI state on stdin.
  mkdir -p "$D/fakegpu/bin"
  cat >"$D/fakegpu/bin/nvidia-container-runtime-hook" <<EOF
#!/bin/sh
# stand-in for the NVIDIA container toolkit: log what the container asked for, inject nothing
state=\$(cat)
bundle=\$(printf '%s' "\$state" | sed -n 's/.*"bundle":"\([^"]*\)".*/\1/p')
id=\$(printf '%s' "\$state" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
vis=\$(grep -o 'NVIDIA_VISIBLE_DEVICES=[^"]*' "\$bundle/config.json" 2>/dev/null)
echo "\$(date +%s) \$1 \$id \${vis:-NVIDIA_VISIBLE_DEVICES=unset}" >> "$D/fakegpu/hook.log"
exit 0
EOF
  chmod +x "$D/fakegpu/bin/nvidia-container-runtime-hook"
  touch "$D/fakegpu/hook.log"
}

# The hook log of an engine that was already running: follow its PATH to the hook and read the
# log path out of it (works for hooks written like ours; empty otherwise).
existing_hook_log() {
  local pid path dir
  pid=$(cat /var/run/docker.pid 2>/dev/null) || return 0
  path=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^PATH=//p') || return 0
  IFS=: read -ra dirs <<<"$path"
  for dir in "${dirs[@]}"; do
    if [ -x "$dir/nvidia-container-runtime-hook" ]; then
      grep -o '>> *"[^"]*"' "$dir/nvidia-container-runtime-hook" | head -1 | sed 's/^>> *"//; s/"$//'
      return 0
    fi
  done
}

docker_up() {
  if docker info >/dev/null 2>&1; then
    if pidfile_alive "$D/dockerd.pid"; then
      HOOK_LOG="$D/fakegpu/hook.log"
      say "dockerd up (started by this testbed, pid $(cat "$D/dockerd.pid"))"
    else
      HOOK_LOG=$(existing_hook_log)
      say "dockerd already running (not started here: left running by 'down')"
    fi
  else
    fake_gpu_hook
    PATH="$D/fakegpu/bin:$PATH" nohup dockerd --bridge=none --iptables=false --ip6tables=false \
        --add-runtime nvidia=/usr/sbin/runc -H unix:///var/run/docker.sock \
        >"$D/dockerd.log" 2>&1 </dev/null &
    echo $! >"$D/dockerd.pid"
    for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null || { tail -n 20 "$D/dockerd.log" >&2; exit 1; }
    HOOK_LOG="$D/fakegpu/hook.log"
    say "dockerd started (pid $(cat "$D/dockerd.pid"))"
  fi
  envline RUNNER_DOCKER_HOST_GPUS "$(docker info --format '{{json .Runtimes}}' | grep -q nvidia && echo fake || echo none)"
  [ -n "${HOOK_LOG:-}" ] && envline RUNNER_FAKE_GPU_HOOK_LOG "$HOOK_LOG"
  return 0
}

base_image() {
  if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    local root="$D/rootfs"
    rm -rf "$root"
    say "building $IMAGE with debootstrap (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" >"$D/debootstrap.log" 2>&1 || { tail -n 20 "$D/debootstrap.log" >&2; exit 1; }
    # pip in a container must trust what this machine trusts (e.g. a proxy's CA)
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
      chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    tar -C "$root" -c . | docker import \
        -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        -c 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["python3"]' - "$IMAGE" >/dev/null
    rm -rf "$root"
  fi
  envline RUNNER_BASE_IMAGE "$IMAGE"
  say "base image $IMAGE ready ($(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19))"
}

ssh_up() {
  local S="$D/ssh"
  mkdir -p "$S" /run/sshd; chmod 700 "$S"
  [ -f "$S/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C runner-testbed-host -f "$S/host_ed25519"
  [ -f "$S/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C runner-testbed-client -f "$S/client_ed25519"
  cp "$S/client_ed25519.pub" "$S/authorized_keys"; chmod 600 "$S/authorized_keys"
  sshd_conf() {  # $1 port, $2 sshd's own pidfile
    cat <<EOF
Port $1
ListenAddress 127.0.0.1
HostKey $S/host_ed25519
PidFile $2
AuthorizedKeysFile $S/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
  }
  sshd_conf "$SSH_PORT" "$S/sshd.own.pid" >"$S/sshd_config"
  sshd_conf 22 "$S/sshd-netns.own.pid" >"$S/sshd_netns_config"
  /usr/sbin/sshd -t -f "$S/sshd_config"
  if ! pidfile_alive "$D/sshd.pid"; then
    nohup /usr/sbin/sshd -D -e -f "$S/sshd_config" >"$S/sshd.log" 2>&1 </dev/null &
    echo $! >"$D/sshd.pid"
  fi
  # the second host: its own network stack (only lo) and hostname; same filesystem and engine
  if ! ip netns list | grep -qw "$NETNS"; then
    ip netns add "$NETNS"
    ip netns exec "$NETNS" ip link set lo up
  fi
  if ! pidfile_alive "$D/sshd-netns.pid"; then
    nohup ip netns exec "$NETNS" unshare --uts sh -c \
        "hostname $NETNS; exec /usr/sbin/sshd -D -e -f $S/sshd_netns_config" \
        >"$S/sshd-netns.log" 2>&1 </dev/null &
    echo $! >"$D/sshd-netns.pid"
  fi
  local key; key=$(cut -d' ' -f1,2 "$S/host_ed25519.pub")
  printf '[127.0.0.1]:%s %s\n%s %s\n' "$SSH_PORT" "$key" "$NETNS" "$key" >"$S/known_hosts"
  cat >"$S/ssh_config" <<EOF
Host runner-remote
  HostName 127.0.0.1
  Port $SSH_PORT
  User root
  IdentityFile $S/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
Host $NETNS
  HostName $NETNS
  User root
  IdentityFile $S/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $S/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ProxyCommand ip netns exec $NETNS socat STDIO TCP:127.0.0.1:22
EOF
  for _ in $(seq 1 50); do ssh -F "$S/ssh_config" runner-remote true 2>/dev/null && break; sleep 0.1; done
  ssh -F "$S/ssh_config" runner-remote true
  ssh -F "$S/ssh_config" "$NETNS" true
  envline RUNNER_TEST_SSH_CONFIG "$S/ssh_config"
  envline RUNNER_TEST_KNOWN_HOSTS "$S/known_hosts"
  envline RUNNER_TEST_SSH_KEY "$S/client_ed25519"
  envline RUNNER_TEST_SSH_HOSTS "runner-remote $NETNS"
  envline RUNNER_TEST_SSH_PORT "$SSH_PORT"
  say "ssh hosts up: runner-remote (127.0.0.1:$SSH_PORT), $NETNS (netns, via ProxyCommand)"
}

# The password host: sshd with password login for one dedicated user, so that installing a key
# with a one-time password prompt can be tested. The password never appears on a command line:
# it is made and handed on by shell builtins (printf) only.
ssh_password_up() {
  local S="$D/ssh" pwfile="$D/ssh/$PW_USER.password" pw
  id -u "$PW_USER" >/dev/null 2>&1 || useradd -m -s /bin/sh "$PW_USER"
  pw=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
  printf '%s:%s\n' "$PW_USER" "$pw" | chpasswd
  ( umask 077; printf '%s\n' "$pw" >"$pwfile" )
  chmod 600 "$pwfile"
  pw=
  cat >"$S/sshd_pw_config" <<EOF
Port $PW_PORT
ListenAddress 127.0.0.1
HostKey $S/host_ed25519
PidFile $S/sshd-pw.own.pid
AllowUsers $PW_USER
PermitRootLogin no
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
EOF
  /usr/sbin/sshd -t -f "$S/sshd_pw_config"
  if ! pidfile_alive "$D/sshd-pw.pid"; then
    nohup /usr/sbin/sshd -D -e -f "$S/sshd_pw_config" >"$S/sshd-pw.log" 2>&1 </dev/null &
    echo $! >"$D/sshd-pw.pid"
  fi
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PW_PORT") 2>/dev/null && break; sleep 0.1; done
  (exec 3<>"/dev/tcp/127.0.0.1/$PW_PORT") || { tail -n 20 "$S/sshd-pw.log" >&2; exit 1; }
  envline RUNNER_TEST_PW_PORT "$PW_PORT"
  envline RUNNER_TEST_PW_USER "$PW_USER"
  envline RUNNER_TEST_PW_FILE "$pwfile"
  say "password ssh host up: $PW_USER@127.0.0.1:$PW_PORT (password in $pwfile, new each up)"
}

ray_up() {
  if [ ! -x "$VENV/bin/ray" ]; then say "ray: not installed in $VENV, skipped"; return 0; fi
  local addr="http://127.0.0.1:$RAY_DASH_PORT"
  if ! pidfile_alive "$D/ray.pid"; then
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray on 127.0.0.1 instead of the external address
    RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PATH="$VENV/bin:$PATH" \
      nohup "$VENV/bin/ray" start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
        --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASH_PORT" --num-cpus=2 \
        --object-store-memory=500000000 --temp-dir="$D/ray" --disable-usage-stats \
        >"$D/ray.log" 2>&1 </dev/null &
    echo $! >"$D/ray.pid"
    for _ in $(seq 1 300); do curl -sf "$addr/api/version" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -sf "$addr/api/version" >/dev/null || { tail -n 20 "$D/ray.log" >&2; exit 1; }
  fi
  envline RUNNER_TEST_RAY_ADDRESS "$addr"
  say "ray head up ($addr)"
}

# ---------------------------------------------------------------------------------------------
# Slurm: one node (NodeName=localhost) on 127.0.0.1, every daemon in the foreground under setsid
# with its PID recorded in $SL; authentication through our own munged and socket. No cgroups are
# used (proctrack/linuxproc, task/none), so nothing outside $SL is written.
slurm_packages() {
  local want=(slurmctld slurmd slurm-client munge procps) missing=() p policy=/usr/sbin/policy-rc.d
  [ "$SLURM_ACCT" = 1 ] && want+=(slurmdbd mariadb-server)
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # apt must start no service (slurm_up starts its own daemons): where no policy-rc.d says
    # so already, one that refuses every start is in place while the packages install
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { rm -f "$policy"; exit 1; }
      rm -f "$policy"
    else
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
  fi
}

sq() { SLURM_CONF="$SL/slurm.conf" timeout 10 "$@"; }  # a client call that cannot hang `up`

slurm_node_ready() {  # the node is registered and schedulable; resume it once if it drained
  local st; st=$(sq sinfo -h -N -n localhost -o '%T' 2>/dev/null) || return 1
  case $st in
    idle*|mixed*|allocated*) return 0 ;;
    *drain*|*inval*) sq scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  return 1
}

slurm_start() {  # $1 name, $2 readiness command, rest: the daemon's argv; 30 s to be ready
  local name=$1 ready=$2 end=$((SECONDS + 30)); shift 2
  setsid "$@" </dev/null >>"$SL/$name.out" 2>&1 &
  echo $! >"$SL/$name.pid"
  while [ "$SECONDS" -lt "$end" ]; do
    if eval "$ready" >/dev/null 2>&1; then return 0; fi
    pid_alive "$(cat "$SL/$name.pid")" || break
    sleep 0.1
  done
  tail -n 20 "$SL/$name.out" "$SL/$name.log" >&2 2>/dev/null || true
  echo "slurm: $name did not come up (logs above)" >&2
  exit 1
}

slurm_write_conf() {
  local hw get cpus mem i
  hw=$(slurmd -C | head -1)  # what this machine has: CPUs=... RealMemory=...
  get() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  cpus=$(get CPUs); mem=$(get RealMemory)
  {
    echo "# written by scripts/testbed.sh: one node on loopback"
    echo "ClusterName=runnertest"
    echo "SlurmctldHost=localhost(127.0.0.1)"
    echo "SlurmctldPort=$SLURM_PORT"
    echo "SlurmdPort=$((SLURM_PORT + 1))"
    echo "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"  # bind 127.0.0.1, not 0.0.0.0
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$SL/munge.socket"
    echo "StateSaveLocation=$SL/state"
    echo "SlurmdSpoolDir=$SL/spool"
    echo "SlurmctldPidFile=$SL/slurmctld.own.pid"
    echo "SlurmdPidFile=$SL/slurmd.own.pid"
    echo "SlurmctldLogFile=$SL/slurmctld.log"
    echo "SlurmdLogFile=$SL/slurmd.log"
    echo "MailProg=/bin/true"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "MpiDefault=none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    echo "DefMemPerCPU=$((mem / cpus))"  # else each job takes all the memory and runs alone
    echo "SchedulerType=sched/backfill"
    echo "SchedulerParameters=batch_sched_delay=0"  # start jobs within a second, not three
    if [ "$SLURM_ACCT" = 1 ]; then
      echo "AccountingStorageType=accounting_storage/slurmdbd"
      echo "AccountingStorageHost=localhost"
      echo "AccountingStoragePort=$DBD_PORT"
      echo "AccountingStoragePass=$SL/munge.socket"  # the munged that slurmdbd trusts: ours
      echo "AccountingStorageEnforce=associations,limits,qos"
      echo "JobAcctGatherType=jobacct_gather/linux"  # reads /proc: no cgroups needed
    else
      echo "JobAcctGatherType=jobacct_gather/none"
      echo "AccountingStorageType=accounting_storage/none"
    fi
    echo "MinJobAge=300"
    echo "KillWait=5"
    echo "ReturnToService=2"
    [ "$SLURM_GPUS" -gt 0 ] && echo "GresTypes=gpu"
    echo "NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost $(sed 's/^NodeName=[^ ]* //; s/ UpTime=.*//' <<<"$hw")$([ "$SLURM_GPUS" -gt 0 ] && echo " Gres=gpu:$SLURM_GPUS")"
    echo "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=short Nodes=localhost MaxTime=00:10:00 State=UP"
  } >"$SL/slurm.conf"
  # a GPU gres needs a character device per GPU; these fake ones (NVIDIA's major number) are
  # never opened, they only let slurmd count the GPUs and hand out their indexes
  : >"$SL/gres.conf"
  if [ "$SLURM_GPUS" -gt 0 ]; then
    mkdir -p "$SL/dev"
    for ((i = 0; i < SLURM_GPUS; i++)); do [ -e "$SL/dev/nvidia$i" ] || mknod "$SL/dev/nvidia$i" c 195 "$i"; done
    printf 'AutoDetect=off\nNodeName=localhost Name=gpu File=%s/dev/nvidia[0-%d]\n' "$SL" $((SLURM_GPUS - 1)) >"$SL/gres.conf"
  fi
}

slurm_write_dbd_conf() {
  ( umask 077  # it holds the DB user's password; slurmdbd also refuses a readable one
    cat >"$SL/slurmdbd.conf" <<EOF
# written by scripts/testbed.sh: slurmdbd on loopback, storing into the testbed's MariaDB
AuthType=auth/munge
AuthInfo=socket=$SL/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$SL/slurmdbd.log
PidFile=$SL/slurmdbd.own.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PW
StorageLoc=slurm_acct_db
EOF
  )
}

# MariaDB for slurmdbd: its own datadir, socket and PID under $SL/db, TCP on 127.0.0.1 only;
# the DB user `slurm` gets a random password (handed over on stdin, never on a command line)
acct_db_up() {
  local db="$SL/db"
  mkdir -p "$db"; chmod 700 "$db"
  mariadb-install-db --no-defaults --user=root --datadir="$db/data" --skip-test-db \
      --auth-root-authentication-method=socket >"$SL/mariadb-install.log" 2>&1 \
    || { tail -n 20 "$SL/mariadb-install.log" >&2; echo "slurm: mariadb-install-db failed (log above)" >&2; exit 1; }
  slurm_start mariadb "mariadb-admin --no-defaults --socket=$db/mysqld.sock -u root ping" \
    mariadbd --no-defaults --user=root --datadir="$db/data" --socket="$db/mysqld.sock" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
      --pid-file="$db/mariadb.own.pid" --log-error="$SL/mariadb.log" \
      --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
      --innodb-use-native-aio=0 --innodb-flush-method=fsync --innodb-flush-log-at-trx-commit=2
  mariadb --no-defaults --socket="$db/mysqld.sock" -u root <<EOF
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PW';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

# slurmdbd, then what the cluster accounts for: the cluster, QOS `short` (besides `normal`),
# account `ml` allowed both, root in it with `ml` as default account
acct_dbd_up() {
  SLURM_CONF="$SL/slurm.conf" slurm_start slurmdbd "sq sacctmgr -n show cluster" slurmdbd -D
  local step
  for step in "add cluster runnertest" \
              "add qos short MaxWall=00:10:00" \
              "add account ml Description=testbed Organization=runner" \
              "modify account ml set qos=normal,short defaultqos=normal" \
              "add user root account=ml" \
              "modify user root set defaultaccount=ml"; do
    # shellcheck disable=SC2086
    sq sacctmgr -i $step >>"$SL/sacctmgr.out" 2>&1 \
      || { tail -n 20 "$SL/sacctmgr.out" "$SL/slurmdbd.log" >&2; echo "slurm: sacctmgr $step failed (logs above)" >&2; exit 1; }
  done
}

slurm_up() {
  skip apt || slurm_packages
  local c
  for c in munged slurmctld slurmd sbatch pgrep; do
    command -v "$c" >/dev/null || { echo "slurm: $c is not installed (up installs it unless RUNNER_TESTBED_SKIP has apt; or skip this part: RUNNER_TESTBED_SKIP=slurm)" >&2; exit 1; }
  done
  local acct_alive=0
  pidfile_alive "$SL/slurmdbd.pid" && pidfile_alive "$SL/mariadb.pid" && acct_alive=1
  if pidfile_alive "$SL/slurmctld.pid" && pidfile_alive "$SL/slurmd.pid" && pidfile_alive "$SL/munged.pid" \
     && [ "$acct_alive" = "$SLURM_ACCT" ] && sq scontrol ping 2>/dev/null | grep -q UP; then
    say "slurm up (started by this testbed)"
  else
    slurm_down  # whatever is left of an earlier up
    local port
    for port in "$SLURM_PORT" $((SLURM_PORT + 1)) $( [ "$SLURM_ACCT" = 1 ] && echo "$DBD_PORT $DB_PORT"); do
      if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
        echo "slurm: port $port on this machine is taken (another Slurm?); set RUNNER_TESTBED_SLURM_PORT" >&2
        exit 1
      fi
    done
    mkdir -p "$SL/state" "$SL/spool" "$SL/munge"
    chmod 755 "$SL"      # munged: every folder on its socket's path must be o+x
    chmod 700 "$SL/munge"
    head -c 1024 /dev/urandom >"$SL/munge/munge.key"
    chmod 400 "$SL/munge/munge.key"
    DB_PW=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
    slurm_write_conf
    [ "$SLURM_ACCT" = 1 ] && slurm_write_dbd_conf
    slurm_start munged "munge -S $SL/munge.socket -n | unmunge -S $SL/munge.socket" \
      munged -F --key-file="$SL/munge/munge.key" --socket="$SL/munge.socket" \
      --pid-file="$SL/munged.own.pid" --log-file="$SL/munged.log" --seed-file="$SL/munge/seed"
    if [ "$SLURM_ACCT" = 1 ]; then
      local t1; t1=$(date +%s%N)
      acct_db_up
      acct_dbd_up
      DB_PW=
      say "slurm accounting up in $(( ($(date +%s%N) - t1) / 1000000 )) ms: slurmdbd 127.0.0.1:$DBD_PORT, MariaDB 127.0.0.1:$DB_PORT"
    fi
    slurm_start slurmctld "sq scontrol ping | grep -q UP" slurmctld -D -i -f "$SL/slurm.conf"
    # -N: the node's name in slurm.conf, which is not this machine's hostname
    SLURM_CONF="$SL/slurm.conf" slurm_start slurmd slurm_node_ready slurmd -D -N localhost -f "$SL/slurm.conf"
    # sbatch jobs pend until slurmctld's first scheduling pass (~3 s after it starts)
    for _ in $(seq 1 100); do grep -q 'SchedulerParameters=' "$SL/slurmctld.log" 2>/dev/null && break; sleep 0.1; done
    say "slurm up: slurmctld 127.0.0.1:$SLURM_PORT, node localhost with $SLURM_GPUS fake GPUs"
  fi
  envline SLURM_CONF "$SL/slurm.conf"
  envline RUNNER_TEST_SLURM_CONF "$SL/slurm.conf"
  envline RUNNER_TEST_SLURM_GPUS "$SLURM_GPUS"
  envline RUNNER_TEST_SLURM_ACCOUNTING "$SLURM_ACCT"
}

slurm_down() {
  [ -d "$SL" ] || return 0
  local jobs p kids
  if pidfile_alive "$SL/slurmctld.pid" && jobs=$(sq squeue -h -o %F 2>/dev/null | sort -u) && [ -n "$jobs" ]; then
    sq scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 150); do [ -z "$(sq squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  stop_pidfile "$SL/slurmd.pid" 10
  stop_pidfile "$SL/slurmctld.pid" 10
  stop_pidfile "$SL/slurmdbd.pid" 10
  stop_pidfile "$SL/mariadb.pid" 30
  stop_pidfile "$SL/munged.pid" 10
  # a job step's slurmstepd outlives slurmd by design; ours keep our slurmd.log open
  for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
    if ls -l "/proc/$p/fd" 2>/dev/null | grep -qF -- "$SL/"; then
      kids=$(pgrep -P "$p" 2>/dev/null | tr '\n' ' ' || true)
      kill -KILL "$p" $kids 2>/dev/null || true
    fi
  done
  rm -rf -- "$SL"
  say "slurm stopped"
}

up() {
  mkdir -p "$D"
  : >"$D/env.new"
  envline RUNNER_TESTBED_DIR "$D"
  skip apt || apt_packages
  skip docker || docker_up
  skip docker || skip image || base_image
  skip ssh || ssh_up
  skip ssh || ssh_password_up
  skip ray || ray_up
  skip slurm || slurm_up
  mv "$D/env.new" "$D/env"
  say "ready: . $D/env"
}

down() {
  slurm_down
  stop_pidfile "$D/ray.pid" 40   # `ray start --block` stops its own processes on SIGTERM
  stop_pidfile "$D/sshd-pw.pid" 5
  stop_pidfile "$D/sshd-netns.pid" 5
  stop_pidfile "$D/sshd.pid" 5
  if ip netns list 2>/dev/null | grep -qw "$NETNS"; then ip netns del "$NETNS"; fi
  if [ -f "$D/dockerd.pid" ]; then
    stop_pidfile "$D/dockerd.pid" 20
    say "dockerd stopped"
  fi
  rm -f "$D/env"
  say "down (packages and images stay)"
}

status() {
  for f in dockerd sshd sshd-netns sshd-pw ray; do
    if pidfile_alive "$D/$f.pid"; then echo "$f: running (pid $(cat "$D/$f.pid"))"
    else echo "$f: not started here"; fi
  done
  docker info >/dev/null 2>&1 && echo "docker: answers" || echo "docker: no engine"
  for f in munged mariadb slurmdbd slurmctld slurmd; do
    if pidfile_alive "$SL/$f.pid"; then echo "slurm $f: running (pid $(cat "$SL/$f.pid"))"
    else echo "slurm $f: not started here"; fi
  done
  if [ -f "$SL/slurm.conf" ] && pidfile_alive "$SL/slurmctld.pid"; then
    SLURM_CONF="$SL/slurm.conf" timeout 10 sinfo -o '%P %a %D %T %G' || true
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
