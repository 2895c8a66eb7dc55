# nixpkgs stand-in: the same interface as `import nixpkgs { system; overlays; config; }` for the
# attributes nix/ uses, built with builtins.derivation and the host's /bin/sh, bash and Python.
# Everything it produces is really built and run by the tests. What it does NOT reproduce:
# nixpkgs' real Python package set (the host interpreter supplies every dependency) and the
# NGC image (replaced by a tiny stand-in root below, since the real one is a 20 GB download).
{
  system ? builtins.currentSystem,
  overlays ? [ ],
  config ? { },
  ...
}:
let
  lib = import ./lib.nix;
  hostFile = ./host.json;
  host =
    if builtins.pathExists hostFile then
      builtins.fromJSON (builtins.readFile hostFile)
    else
      throw "tests/nix/nixpkgs/host.json is missing: the tests write it (host python, ruff, bash)";

  # Attributes that become derivation environment variables (strings, paths, lists, bools).
  envOf =
    args:
    builtins.removeAttrs args [
      "name"
      "pname"
      "version"
      "passthru"
      "meta"
      "nativeBuildInputs"
      "buildInputs"
      "propagatedBuildInputs"
      "buildCommand"
      "env"
      "dependencies"
      "build-system"
      "optional-dependencies"
      "pythonImportsCheck"
      "pyproject"
      "doCheck"
      "shellHook"
      "packages"
    ];

  mkDerivation =
    args:
    let
      name = args.name or "${args.pname}-${args.version}";
      inputs =
        (args.nativeBuildInputs or [ ])
        ++ (args.buildInputs or [ ])
        ++ (args.propagatedBuildInputs or [ ])
        ++ (args.packages or [ ]);
      drv = derivation (
        envOf args
        // (args.env or { })
        // {
          inherit name system;
          builder = "/bin/sh";
          args = [
            "-c"
            ''
              set -e
              ${args.buildCommand or ((args.buildPhase or "") + (args.installPhase or ""))}
            ''
          ];
          PATH = lib.concatStringsSep ":" ((map (d: "${d}/bin") inputs) ++ [ "/usr/bin" "/bin" ]);
        }
      );
    in
    drv
    // (args.passthru or { })
    // {
      meta = args.meta or { };
    }
    // lib.optionalAttrs (args ? pname) { inherit (args) pname; }
    // lib.optionalAttrs (args ? version) { inherit (args) version; };

  # callPackage: fill a function's arguments from `scope`, with `.override` like nixpkgs'.
  callPackageWith =
    scope: fn: args:
    let
      f = if builtins.isFunction fn then fn else import fn;
      call =
        a:
        let
          r = f (builtins.intersectAttrs (builtins.functionArgs f) scope // a);
        in
        if builtins.isAttrs r then r // { override = more: call (a // more); } else r;
    in
    call args;

  base = final: {
    inherit lib system config;
    callPackage = callPackageWith final;
    stdenv = {
      inherit mkDerivation;
      shellDryRun = "${host.bash} -n -O extglob";
    };
    stdenvNoCC = final.stdenv;
    runtimeShell = host.bash;

    runCommand =
      name: env: buildCommand:
      mkDerivation (env // { inherit name buildCommand; });

    writeShellApplication =
      {
        name,
        text,
        runtimeInputs ? [ ],
        runtimeEnv ? null,
        passthru ? { },
        meta ? { },
        bashOptions ? [
          "errexit"
          "nounset"
          "pipefail"
        ],
        ...
      }:
      mkDerivation {
        inherit name passthru;
        meta = {
          mainProgram = name;
        } // meta;
        script =
          "#!${host.bash}\n"
          + lib.concatMapStringsSep "\n" (o: "set -o ${o}") bashOptions
          + "\n"
          + lib.optionalString (runtimeEnv != null) (
            lib.concatStrings (lib.mapAttrsToList (n: v: "${lib.toShellVar n v}\nexport ${n}\n") runtimeEnv)
          )
          + lib.optionalString (runtimeInputs != [ ]) ''

            export PATH="${lib.makeBinPath runtimeInputs}:$PATH"
          ''
          + "\n${text}\n";
        buildCommand = ''
          mkdir -p "$out/bin"
          printf '%s' "$script" > "$out/bin/${name}"
          chmod +x "$out/bin/${name}"
          ${host.bash} -n "$out/bin/${name}"
        '';
      };

    mkShell =
      args:
      mkDerivation (
        args
        // {
          name = args.name or "nix-shell";
          buildCommand = ''echo "stand-in mkShell" > "$out"'';
        }
      );

    # A formatter stub: the real one is nixfmt-rfc-style from nixpkgs.
    nixfmt-rfc-style = stub "nixfmt" "stand-in nixfmt: formats nothing";
    ruff = mkDerivation {
      name = "ruff-host";
      buildCommand = ''
        mkdir -p "$out/bin"
        ln -s ${host.ruff} "$out/bin/ruff"
      '';
    };
    # The stand-in bwrap runs the command after `--` on the host (no namespaces).
    bubblewrap = mkDerivation {
      name = "bubblewrap-stand-in";
      buildCommand = ''
        mkdir -p "$out/bin"
        cat > "$out/bin/bwrap" <<'SH'
        #!/bin/sh
        while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
        [ "$#" -gt 0 ] && shift
        exec "$@"
        SH
        chmod +x "$out/bin/bwrap"
      '';
    };
    crane = stub "crane" "stand-in crane: no registry access in tests";
    cacert = stub "cacert" "stand-in cacert";
    gnutar = stub "tar" "stand-in tar";

    python3 = {
      interpreter = host.python;
      sitePackages = "lib/python3/site-packages";
      pkgs = final.python3Packages;
      withPackages =
        select:
        mkDerivation {
          name = "python3-env";
          pythonpath = lib.concatStringsSep ":" (
            map (p: "${p}/lib/python3/site-packages") (
              builtins.filter (p: p.isStandInPythonModule or false) (select final.python3Packages)
            )
          );
          buildCommand = ''
            mkdir -p "$out/bin"
            for exe in python python3; do
              printf '#!/bin/sh\nPYTHONPATH=%s${"$"}{PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' \
                "$pythonpath" ${host.python} > "$out/bin/$exe"
              chmod +x "$out/bin/$exe"
            done
          '';
        };
    };

    python3Packages =
      let
        # Dependencies come from the host interpreter; these names only have to exist.
        hostProvided = lib.genAttrs [
          "hatchling"
          "numpy"
          "pydantic"
          "fastapi"
          "uvicorn"
          "pydantic-settings"
          "tritonclient"
          "hpack"
          "transformers"
          "tokenizers"
          "jinja2"
          "orjson"
          "jsonschema"
          "prometheus-client"
          "httpx"
          "aiohttp"
          "matplotlib"
          "huggingface-hub"
          "pytest"
          "pytest-asyncio"
          "hypothesis"
          "h2"
          "openai"
          "mypy"
        ] (n: stub "python-${n}" "host-provided ${n}");
      in
      hostProvided
      // {
        callPackage = callPackageWith (final // final.python3Packages);
        python = final.python3;
        buildPythonPackage = buildPythonPackage;
      };
  };

  stub =
    exe: msg:
    mkDerivation {
      name = "${exe}-stand-in";
      buildCommand = ''
        mkdir -p "$out/bin"
        printf '#!/bin/sh\necho "%s" >&2\n' "${msg}" > "$out/bin/${exe}"
        chmod +x "$out/bin/${exe}"
      '';
    };

  # Installs the packages a pyproject's hatch wheel target names and its [project.scripts],
  # run with the host interpreter.
  buildPythonPackage =
    {
      pname,
      version,
      src,
      pythonImportsCheck ? [ ],
      passthru ? { },
      meta ? { },
      dependencies ? [ ],
      propagatedBuildInputs ? [ ],
      ...
    }:
    let
      project = builtins.fromTOML (builtins.readFile (src + "/pyproject.toml"));
      wheelPackages = project.tool.hatch.build.targets.wheel.packages;
      scripts = project.project.scripts or { };
      writeScript =
        exe: entry:
        let
          parts = builtins.match "([^:]+):(.+)" entry;
        in
        ''
          printf '#!/bin/sh\nPYTHONPATH=%s${"$"}{PYTHONPATH:+:$PYTHONPATH} exec %s -c "import sys; from %s import %s; sys.exit(%s())" "$@"\n' \
            "$site" ${host.python} ${builtins.elemAt parts 0} ${builtins.elemAt parts 1} ${builtins.elemAt parts 1} \
            > "$out/bin/${exe}"
          chmod +x "$out/bin/${exe}"
        '';
    in
    mkDerivation {
      inherit pname version src meta;
      passthru = passthru // {
        isStandInPythonModule = true;
        # As nixpkgs' mk-python-derivation.nix: the dependencies propagate.
        propagatedBuildInputs = dependencies ++ propagatedBuildInputs;
      };
      buildCommand = ''
        site="$out/lib/python3/site-packages"
        mkdir -p "$site" "$out/bin"
        ${lib.concatMapStringsSep "\n" (p: ''cp -r "$src/${p}" "$site/"'') wheelPackages}
        chmod -R u+w "$site"
        ${lib.concatStrings (lib.mapAttrsToList writeScript scripts)}
        ${lib.concatMapStringsSep "\n" (
          m: ''PYTHONPATH="$site" ${host.python} -c "import ${m}"''
        ) pythonImportsCheck}
      '';
    };

  # An engine directory in TensorRT-LLM's layout (config.json + one rank file per GPU), so
  # the apps have something to serve here. The real derivation stays reachable as
  # `realEngine` (the tests evaluate its drvPath and attributes).
  standInEngine =
    real:
    let
      v = real.variant;
      config = builtins.toJSON {
        version = "1.1.0";
        pretrained_config = {
          architecture = "Qwen3ForCausalLM";
          mapping = {
            world_size = v.worldSize;
            tp_size = v.tp;
            pp_size = 1;
          };
          quantization.quant_algo = v.quantization;
        };
        build_config = {
          max_batch_size = v.maxBatchSize;
          max_seq_len = v.maxSeqLen;
          max_num_tokens = v.maxNumTokens;
        };
      };
    in
    mkDerivation {
      name = "${real.name}-stand-in";
      inherit config;
      passthru = {
        inherit (real) variant;
        realEngine = real;
      };
      buildCommand = ''
        mkdir -p "$out"
        printf '%s' "$config" > "$out/config.json"
        i=0
        while [ "$i" -lt ${toString v.worldSize} ]; do : > "$out/rank$i.engine"; i=$((i + 1)); done
      '';
    };

  # The tests' own overlay, applied last: a tiny root in place of the 20 GB NGC image export,
  # stand-in engines in place of GPU builds.
  standInImage = final: prev: {
    trtllm-stack-engines = builtins.mapAttrs (_: standInEngine) prev.trtllm-stack-engines;
    ngc-tritonserver-image = mkDerivation {
      name = "ngc-tritonserver-image-stand-in";
      buildCommand = ''
        mkdir -p "$out/opt/tritonserver/bin"
        printf '#!/bin/sh\necho "stand-in tritonserver $*"\n' > "$out/opt/tritonserver/bin/tritonserver"
        chmod +x "$out/opt/tritonserver/bin/tritonserver"
      '';
    };
  };
in
lib.fix (builtins.foldl' (f: o: lib.extends o f) base (overlays ++ [ standInImage ]))
