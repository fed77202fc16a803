# Take this host's deploy lock for the SSH connection that runs this script (POSIX sh).
#
#   sh -c "$(cat lock.sh)" gpufleet-lock DIR WAIT_S OWNER [PID]
#
# The lock is flock(1) on DIR/deploy.lock, held by a small background process that keeps the
# lock's file descriptor open for as long as this connection's sshd process lives: the
# deploy's connection closes at the end of the run, whatever ended it (success, failure,
# Ctrl-C, a killed controller: its kernel closes the socket), and the lock goes with it
# within a second. A crashed run leaves nothing that blocks: the kernel drops a flock when
# its last holder is gone. DIR/deploy.owner names the holder (OWNER) for the next run.
# PID (tests): hold the lock while that process lives instead.
#
# Prints one line: gpufleet-lock<TAB>acquired<TAB>SECONDS_WAITED<TAB>HOLDER_WAITED_FOR
#              or: gpufleet-lock<TAB>busy<TAB>HOLDER     (still held after WAIT_S seconds)
#              or: gpufleet-lock<TAB>error<TAB>WHY
# and exits 0 in every case: the deploy reads the line.
dir=$1 wait=$2 owner=$3
lock=$dir/deploy.lock info=$dir/deploy.owner
say() { printf 'gpufleet-lock\t%s\n' "$1"; }
holder() { head -c 300 "$info" 2>/dev/null | tr -d '\t\r\n'; }
command -v flock >/dev/null 2>&1 || { say 'error	flock (util-linux) is not installed'; exit 0; }
mkdir -p "$dir" 2>/dev/null && [ -d "$dir" ] || { say "error	cannot create $dir"; exit 0; }
# The process whose end releases the lock: this connection's sshd (sshd-session since
# OpenSSH 9.8), found up the process tree; without SSH (@local) the shell that ran us.
conn=${4:-$$}
while [ -z "${4:-}" ] && [ "${conn:-1}" -gt 1 ]; do
  case $(cat "/proc/$conn/comm" 2>/dev/null) in sshd*) break ;; esac
  conn=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$conn/status" 2>/dev/null)
done
[ "${conn:-1}" -gt 1 ] || conn=$PPID
exec 9>>"$lock" || { say "error	cannot open $lock"; exit 0; }
waited=0 held=
if ! flock -n 9; then
  held=$(holder)
  start=$(date +%s)
  if [ "$wait" -eq 0 ] || ! flock -w "$wait" 9; then
    now=$(holder)
    say "busy	${now:-${held:-an unknown holder}}"
    exit 0
  fi
  waited=$(($(date +%s) - start))
fi
printf '%s\n' "$owner" >"$info.$$" && mv -f "$info.$$" "$info"
keep='while [ -d "/proc/$1" ]; do sleep 1; done'
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c "$keep" gpufleet-lock-holder "$conn" </dev/null >/dev/null 2>&1 &
else
  sh -c "$keep" gpufleet-lock-holder "$conn" </dev/null >/dev/null 2>&1 &
fi
say "acquired	$waited	$held"
