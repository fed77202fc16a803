## HostProfile (operations/preflight/facts.py): OS, arch, kernel, NVIDIA PCI devices,
## Secure Boot, dpkg state and free disk space of @PATH@, as key=value lines.
# shellcheck disable=SC1091  # the host's own file, read on the host
. /etc/os-release 2>/dev/null
echo "os_id=${ID:-unknown}"
echo "os_version=${VERSION_ID:-unknown}"
echo "os_like=${ID_LIKE:-}"
echo "os_codename=${VERSION_CODENAME:-}"
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
for dev in /sys/bus/pci/devices/*; do
  [ "$(cat "$dev/vendor" 2>/dev/null)" = "@VENDOR@" ] || continue
  echo "pci=${dev##*/} $(cat "$dev/class") $(cat "$dev/device")"
done
if [ ! -d /sys/firmware/efi ]; then echo "secure_boot=not-efi"
else
  # shellcheck disable=SC2012  # efivars names are NAME-GUID: no blanks or newlines
  var=$(ls /sys/firmware/efi/efivars/SecureBoot-* 2>/dev/null | head -n 1)
  if [ -z "$var" ]; then echo "secure_boot=unknown"
  elif [ "$(od -An -t u1 -j 4 -N 1 "$var" | tr -d ' ')" = 1 ]; then echo "secure_boot=enabled"
  else echo "secure_boot=disabled"; fi
fi
if command -v dpkg >/dev/null && [ -n "$(dpkg --audit 2>/dev/null)" ]; then
  echo "dpkg_interrupted=yes"
fi
path=@PATH@
while [ ! -e "$path" ]; do path=$(dirname "$path"); done
df -Pk "$path" | awk 'NR == 2 { print "disk_free_kib=" $4 }'
