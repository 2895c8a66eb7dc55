# The pinned NGC release's root filesystem (x86_64) as a fixed-output derivation:
# `crane export IMAGE -` streams the flattened image as a tar; we unpack it into $out.
# The hash is the one a public flake pins for this image (NAR, recursive); it was NOT
# verified here (no registry access). If NVIDIA republishes the tag, the build fails with
# a hash mismatch instead of silently changing TensorRT-LLM under an engine.
{
  stdenvNoCC,
  crane,
  cacert,
  gnutar,
  image,
  hash ? "sha256-WvHGKXzu1oJk8RRorIDaF9Ii6AuK6eAD7SIWRxs0vkk=",
}:
stdenvNoCC.mkDerivation {
  name = "ngc-tritonserver-image";
  nativeBuildInputs = [
    crane
    gnutar
  ];
  inherit image;
  SSL_CERT_FILE = "${cacert}/etc/ssl/certs/ca-bundle.crt";
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
  outputHash = hash;
  buildCommand = ''
    mkdir -p "$out"
    crane export --platform linux/amd64 "$image" - \
      | tar -x -C "$out" --no-same-owner --no-same-permissions --exclude 'dev/*'
  '';
  passthru = {
    inherit image;
  };
}
