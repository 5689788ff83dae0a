from telemetry.entrypoints.cli import main

raise SystemExit(main())
