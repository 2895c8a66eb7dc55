# NCCL settings for several PCIe GPUs without NVLink (the seeds' values), as data and as the
# shell lines the tritonserver apps run. Values the user already set win: `: "${VAR:=default}"`
# only assigns when VAR is unset or empty. (writeShellApplication's runtimeEnv would not do:
# it writes `VAR=value; export VAR`, overriding the user; see nix/README.md.)
# Python side: trtllm_stack.triton.launch_plan.NCCL_PCIE_DEFAULTS (tests compare).
let
  env = {
    NCCL_IB_DISABLE = "1"; # no InfiniBand
    NCCL_P2P_LEVEL = "PHB"; # PCIe peer-to-peer through the host bridge
    NCCL_SHM_DISABLE = "0"; # shared memory between ranks stays on
  };
in
{
  inherit env;
  shellDefaults = builtins.concatStringsSep "" (
    map (name: ''
      : "''${${name}:=${env.${name}}}"
      export ${name}
    '') (builtins.attrNames env)
  );
}
