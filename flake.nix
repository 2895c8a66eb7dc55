{
  description = "TensorRT-LLM engines for Qwen3-32B as store paths, Triton and an OpenAI proxy as apps";

  # Pinned in flake.lock (see nix/README.md for where the revision comes from).
  inputs.nixpkgs.url = "github:nixos/nixpkgs/nixos-unstable-small";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      };
      app = drv: {
        type = "app";
        program = "${drv}/bin/${drv.meta.mainProgram}";
      };
    in
    {
      overlays.default = import ./nix/overlay.nix { src = ./.; };

      packages.${system} = pkgs.trtllm-stack-engines // {
        inherit (pkgs) trtllm-stack ngc-runtime;
        default = pkgs.trtllm-stack;
      };

      apps.${system} = builtins.mapAttrs (_: app) pkgs.trtllm-stack-apps // {
        default = app pkgs.trtllm-stack-apps.demo;
      };

      checks.${system} = import ./nix/checks.nix {
        inherit pkgs;
        src = ./.;
      };

      devShells.${system}.default = pkgs.callPackage ./nix/devshell.nix { };

      formatter.${system} = pkgs.nixfmt-rfc-style;

      nixosModules.default = import ./nix/module.nix { inherit self; };
    };
}
