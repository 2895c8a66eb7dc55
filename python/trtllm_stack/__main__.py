from trtllm_stack.cli import main

raise SystemExit(main())
