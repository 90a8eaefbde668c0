from vemviz.cli import main

raise SystemExit(main())
