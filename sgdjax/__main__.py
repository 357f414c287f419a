import sys

from sgdjax.host import reexec_with_huge_pages

reexec_with_huge_pages()  # before anything else: the process is replaced

from sgdjax.run import main  # noqa: E402

sys.exit(main())
