# A small nixpkgs stand-in for the flake's own tests (nixpkgs cannot be fetched on the CI
# machine). The main flake does `import nixpkgs { ... }`, which reads default.nix here.
{
  description = "nixpkgs stand-in for trtllm-stack's flake tests";
  outputs = _: { };
}
