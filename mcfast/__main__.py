from mcfast.cli import main

raise SystemExit(main())
