from vitcompress.cli import main

raise SystemExit(main())
