## Finish an interrupted dpkg run (operations/kit/packages.py, finish_dpkg_command): dpkg
## itself does not wait for its lock, so retry every 2 s while another process holds it, as
## apt would, until @TIMEOUT@ s have passed. Any other failure (a dependency problem, which
## never clears) fails at once, quoting dpkg.
timeout=@TIMEOUT@
deadline=$(( $(date +%s) + timeout ))
until out=$(DEBIAN_FRONTEND=noninteractive dpkg --configure -a 2>&1); do
  case $out in
    *"is locked by another process"*|*"lock was locked"*) ;;
    *) printf '%s\n' "$out" >&2; exit 1;;
  esac
  [ "$(date +%s)" -lt "$deadline" ] || { printf '%s\n' "$out" >&2; exit 1; }
  sleep 2
done
printf '%s\n' "$out"
