from slmtrain.cli import main

raise SystemExit(main())
