## Sets $lib to the libnvidia-ml.so.1 userspace loads and $installed to its driver version
## (empty where none): the dynamic loader's cache first (ldconfig -p: what pynvml's dlopen
## finds, wherever the driver put it: /usr/lib, /usr/lib64, a cloud image's /usr/local/nvidia),
## then the usual directories for hosts whose cache lacks it.
lib=$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null \
  | awk '$1 == "libnvidia-ml.so.1" { print $NF; exit }')
if [ -z "$lib" ]; then
  for lib in /usr/lib/*/libnvidia-ml.so.1 /usr/lib64/libnvidia-ml.so.1 \
    /usr/local/nvidia/lib64/libnvidia-ml.so.1 ""; do
    [ -e "$lib" ] && break
  done
fi
installed=
if [ -n "$lib" ]; then installed=$(readlink -f "$lib"); installed=${installed##*libnvidia-ml.so.}; fi
