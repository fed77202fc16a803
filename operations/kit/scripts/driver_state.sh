## DriverState (operations/driver/facts.py): the driver stack's state as key=value lines.
## @LIBRARY@ (driver_library.sh) sets $lib and $installed; @DPKG@: a shell fragment of
## operations/driver/facts.py; @PROBE@: the NVML probe (operations/driver/nvml.py), one JSON
## line; @EL_GLOBS@, @UNITS@: lists of words, each already quoted.
# shellcheck disable=SC2154  # $lib and $installed are set by @LIBRARY@
@LIBRARY@
case "$installed" in [0-9]*.*) echo "nvml_version=$installed" ;; esac
if [ -n "$lib" ]; then
  real=$(readlink -f "$lib")
  echo "library=$real"
  if command -v dpkg-query >/dev/null; then
    owner=$(dpkg -S "$real" 2>/dev/null | sed -n '/^diversion/!{s/[:,].*//p;q;}')
  elif command -v rpm >/dev/null; then
    owner=$(rpm -qf --qf '%{NAME}\n' "$real" 2>/dev/null | grep -v ' ' | head -n 1)
  fi
  echo "library_owner=${owner:-none}"
fi
[ -r /sys/module/nvidia/version ] && echo "module_loaded=$(cat /sys/module/nvidia/version)"
if [ -r /proc/driver/nvidia/version ]; then
  awk '/^NVRM version:/ {
    for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9]+(\.[0-9]+)?$/) { print "proc_version=" $i; break }
    print "proc_flavour=" (/Open Kernel Module/ ? "open" : "proprietary") }' /proc/driver/nvidia/version
fi
command -v modinfo >/dev/null && echo "module_on_disk=$(modinfo -F version nvidia 2>/dev/null)"
[ -d /sys/module/nouveau ] && echo "nouveau_loaded=yes"
grep -lsE '^[[:space:]]*blacklist[[:space:]]+nouveau' /etc/modprobe.d/*.conf \
  /usr/lib/modprobe.d/*.conf | sed 's/^/nouveau_blacklist=/'
if command -v dpkg-query >/dev/null; then
  @DPKG@
  apt-mark showhold 2>/dev/null | sed 's/^/held=/'
elif command -v rpm >/dev/null; then
  rpm -qa --qf 'package=%{NAME} %{VERSION}-%{RELEASE}\n' @EL_GLOBS@ \
    | grep -vE @NOT_DRIVER_PACKAGE@

  dnf -q versionlock list 2>/dev/null | sed -E 's/-([0-9]+:)?[^-]+-[^-]+$//; s/^/held=/'
fi
## A fabric manager no package manager installed (runfile, cloud image) names its version:
## "Fabric Manager version is : 535.161.08".
command -v nv-fabricmanager >/dev/null && nv-fabricmanager --version 2>/dev/null \
  | sed -n 's/^.*Fabric Manager version is[[:space:]]*:[[:space:]]*\([0-9][0-9.]*\).*$/fabricmanager_version=\1/p' \
  | head -n 1
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  echo "init=systemd"
  # shellcheck disable=SC2043  # @UNITS@ is a list of words once rendered
  for unit in @UNITS@; do
    enabled=$(systemctl is-enabled "$unit" 2>/dev/null)
    active=$(systemctl is-active "$unit" 2>/dev/null)
    echo "unit=$unit ${enabled:-missing} ${active:-unknown}"
  done
else
  echo "init=other"
fi
if command -v update-initramfs >/dev/null; then echo "initramfs=update-initramfs -u"
elif command -v dracut >/dev/null; then echo "initramfs=dracut -f"; fi
{ [ -e /var/run/reboot-required ] || { command -v needs-restarting >/dev/null \
  && ! needs-restarting -r >/dev/null 2>&1; }; } && echo "reboot_required=yes"
if [ -n "$installed" ] || [ -r /sys/module/nvidia/version ] || [ -r /proc/driver/nvidia/version ]
then
  probe=$(@PROBE@)
  echo "nvml=$probe"
  case "$probe" in
    *'"probe": "none"'*)
      if command -v nvidia-smi >/dev/null; then
        csv=$(nvidia-smi --query-gpu=@QUERY@ --format=csv,noheader 2>&1)
        rc=$?
        printf '%s\n' "$csv" | sed 's/^/gpu=/'
        echo "nvidia_smi_rc=$rc"
      fi ;;
  esac
fi
{ journalctl -k -b -q -o cat --no-pager 2>/dev/null; dmesg 2>/dev/null; } \
  | sed -n 's/^\[[^]]*\] *//; /NVRM: Xid/p' | sort -u | tail -n 200 | sed 's/^/xid=/'
