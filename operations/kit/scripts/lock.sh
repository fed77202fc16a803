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
if ! { mkdir -p "$dir" 2>/dev/null && [ -d "$dir" ]; }; then say "error	cannot create $dir"; exit 0; fi
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
rm -f "$dir/deploy.fenced"
# Once the connection is gone, a fenced command of this run still running on the host (its
# process group and start time in deploy.fenced: a readiness wait that outlived a killed or
# given-up controller) is stopped before the lock is released: it must not act under the
# next run. TERM, then KILL after 10 s.
# shellcheck disable=SC2016  # expanded by the holder's own shell, from its arguments
keep='while [ -d "/proc/$1" ]; do sleep 1; done
f=$2/deploy.fenced
if read -r pg since <"$f" 2>/dev/null && [ "$pg" -gt 1 ] 2>/dev/null &&
   [ "$(cut -d" " -f22 "/proc/$pg/stat" 2>/dev/null)" = "$since" ]; then
  kill -TERM "-$pg" 2>/dev/null
  n=0
  while kill -0 "-$pg" 2>/dev/null && [ "$n" -lt 10 ]; do sleep 1; n=$((n + 1)); done
  kill -KILL "-$pg" 2>/dev/null
fi
rm -f "$f"'
if command -v setsid >/dev/null 2>&1; then
  setsid sh -c "$keep" gpufleet-lock-holder "$conn" "$dir" </dev/null >/dev/null 2>&1 &
else
  sh -c "$keep" gpufleet-lock-holder "$conn" "$dir" </dev/null >/dev/null 2>&1 &
fi
say "acquired	$waited	$held"
