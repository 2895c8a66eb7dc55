# NixOS module `services.trtllm-stack`: Triton for one engine (one MPI rank per GPU) and,
# optionally, the OpenAI proxy in front of it. Parsed here, NOT evaluated (no NixOS here).
{ self }:
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.trtllm-stack;
  packages = self.packages.${pkgs.stdenv.hostPlatform.system};
  apps = pkgs.extend self.overlays.default;
in
{
  options.services.trtllm-stack = {
    enable = lib.mkEnableOption "Triton + TensorRT-LLM serving a trtllm-stack engine";
    variant = lib.mkOption {
      type = lib.types.str;
      default = "qwen3-32b-engine";
      description = "Engine package name from the flake (e.g. qwen3-32b-engine-tp4).";
    };
    host = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      description = "Address Triton binds to (the proxy is the public face).";
    };
    httpPort = lib.mkOption {
      type = lib.types.port;
      default = 8000;
    };
    grpcPort = lib.mkOption {
      type = lib.types.port;
      default = 8001;
    };
    metricsPort = lib.mkOption {
      type = lib.types.port;
      default = 8002;
    };
    proxy = {
      enable = lib.mkEnableOption "the OpenAI-compatible proxy";
      port = lib.mkOption {
        type = lib.types.port;
        default = 9000;
      };
    };
  };

  config = lib.mkIf cfg.enable (
    let
      engine = packages.${cfg.variant};
      app = apps.callPackage ./tritonserver-app.nix {
        inherit engine;
        inherit (engine) variant;
      };
    in
    {
      systemd.services.trtllm-stack-triton = {
        description = "Triton + TensorRT-LLM (${engine.variant.name})";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        serviceConfig = {
          ExecStart = lib.escapeShellArgs [
            (lib.getExe app)
            "--host"
            cfg.host
            "--http-port"
            (toString cfg.httpPort)
            "--grpc-port"
            (toString cfg.grpcPort)
            "--metrics-port"
            (toString cfg.metricsPort)
          ];
          DynamicUser = true;
          SupplementaryGroups = [ "video" ];
          Restart = "on-failure";
        };
      };
      systemd.services.trtllm-stack-proxy = lib.mkIf cfg.proxy.enable {
        description = "OpenAI-compatible proxy for Triton";
        wantedBy = [ "multi-user.target" ];
        after = [ "trtllm-stack-triton.service" ];
        serviceConfig = {
          ExecStart = lib.escapeShellArgs [
            (lib.getExe packages.trtllm-stack)
            "proxy"
            "--triton-url"
            "localhost:${toString cfg.grpcPort}"
            "--tokenizer-dir"
            "${engine}"
            "--port"
            (toString cfg.proxy.port)
          ];
          DynamicUser = true;
          Restart = "on-failure";
        };
      };
    }
  );
}
