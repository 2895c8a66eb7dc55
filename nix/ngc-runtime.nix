# Runs the NGC image's programs (tritonserver, mpirun, TensorRT-LLM's Python) on the host.
#
# Why bubblewrap and not buildFHSEnv: buildFHSEnv assembles its / from nixpkgs packages,
# while the NGC release is already a complete Ubuntu root whose CUDA, TensorRT, NCCL, HPC-X
# OpenMPI and Python 3.12 must be used unchanged (they are what the engines are built and
# served with). So we use the sandbox buildFHSEnv itself is built on, bubblewrap, with the
# image as /, and bind in what the host must provide: GPUs (/dev), the NVIDIA driver's user
# libraries (they must match the host kernel module, so they never come from an image; the
# NVIDIA container toolkit does the same), /nix/store (our package, engines), /tmp and $HOME.
#
# Commands:
#   ngc-run CMD ARGS...      run CMD inside the image root
#   mpirun / tritonserver    the image's programs, so `trtllm-stack triton` (run on the host)
#                            finds them on PATH and every rank runs inside the image
{
  lib,
  writeShellApplication,
  runCommand,
  bubblewrap,
  ngc-tritonserver-image,
  trtllm-stack,
  python3,
}:
let
  root = ngc-tritonserver-image;
  ngcRun = writeShellApplication {
    name = "ngc-run";
    runtimeInputs = [ bubblewrap ];
    text = ''
      if [ "$#" -eq 0 ]; then
        echo "usage: ngc-run COMMAND [ARGS...]  (runs COMMAND inside ${root.image or "the NGC image"})" >&2
        exit 2
      fi
      image=${root}
      # bwrap's new / is an empty tmpfs; it gets one read-only bind per top-level entry of the
      # image, not the image itself: a read-only image as / leaves bwrap unable to create the mount
      # points that are not in the image (/nix, the working directory): "bwrap: Can't mkdir
      # parents for ...: Read-only file system" (seen with bubblewrap 0.8, tests/integration/
      # nix/test_ngc_run_bwrap.py). buildFHSEnv lays out its root the same way.
      args=()
      for entry in "$image"/* "$image"/.[!.]*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        name="''${entry##*/}"
        case "$name" in dev | proc | tmp | run | nix) continue ;; esac
        if [ -L "$entry" ]; then
          args+=(--symlink "$(readlink "$entry")" "/$name")
        else
          args+=(--ro-bind "$entry" "/$name")
        fi
      done
      args+=(--dev-bind /dev /dev --proc /proc --tmpfs /run --bind /tmp /tmp --ro-bind /nix /nix)
      if [ -e "$image/etc/resolv.conf" ] && [ -e /etc/resolv.conf ]; then
        args+=(--ro-bind /etc/resolv.conf /etc/resolv.conf)
      fi
      # Host driver libraries: NixOS keeps them in /run/opengl-driver/lib; elsewhere ask
      # ldconfig where libcuda.so.1 lives. TRTLLM_STACK_DRIVER_LIB_DIR overrides both. They go
      # under /run (a tmpfs here: any path works) and first on LD_LIBRARY_PATH.
      driver_dir="''${TRTLLM_STACK_DRIVER_LIB_DIR:-}"
      if [ -z "$driver_dir" ] && [ -d /run/opengl-driver/lib ]; then
        driver_dir=/run/opengl-driver/lib
      fi
      if [ -z "$driver_dir" ] && command -v ldconfig >/dev/null 2>&1; then
        libcuda="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')"
        if [ -n "$libcuda" ]; then driver_dir="$(dirname "$(readlink -f "$libcuda")")"; fi
      fi
      if [ -n "$driver_dir" ]; then
        args+=(--ro-bind "$driver_dir" /run/ngc-host-driver/lib)
        export LD_LIBRARY_PATH="/run/ngc-host-driver/lib''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      else
        echo "ngc-run: no NVIDIA driver libraries found (set TRTLLM_STACK_DRIVER_LIB_DIR)" >&2
      fi
      if [ -n "''${HOME:-}" ] && [ -d "$HOME" ]; then args+=(--bind "$HOME" "$HOME"); fi
      if [ -n "''${XDG_RUNTIME_DIR:-}" ] && [ -d "$XDG_RUNTIME_DIR" ]; then
        args+=(--bind "$XDG_RUNTIME_DIR" "$XDG_RUNTIME_DIR")
      fi
      cwd="$(pwd)"
      args+=(--bind "$cwd" "$cwd" --chdir "$cwd")
      export PYTHONPATH="${trtllm-stack}/${python3.sitePackages}''${PYTHONPATH:+:$PYTHONPATH}"
      export PATH="/opt/tritonserver/bin:/opt/hpcx/ompi/bin:/usr/local/bin:/usr/bin:/bin"
      exec bwrap "''${args[@]}" --share-net --die-with-parent -- "$@"
    '';
  };
  inImage =
    name: path:
    writeShellApplication {
      inherit name;
      runtimeInputs = [ ngcRun ];
      text = ''exec ngc-run ${path} "$@"'';
    };
in
runCommand "ngc-runtime"
  {
    passthru = {
      inherit ngcRun;
      image = root;
    };
    meta.mainProgram = "ngc-run";
  }
  ''
    mkdir -p "$out/bin"
    ln -s ${ngcRun}/bin/ngc-run "$out/bin/ngc-run"
    ln -s ${inImage "mpirun" "/opt/hpcx/ompi/bin/mpirun"}/bin/mpirun "$out/bin/mpirun"
    ln -s ${inImage "tritonserver" "/opt/tritonserver/bin/tritonserver"}/bin/tritonserver "$out/bin/tritonserver"
  ''
