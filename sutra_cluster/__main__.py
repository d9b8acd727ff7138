from sutra_cluster.cli import main

raise SystemExit(main())
