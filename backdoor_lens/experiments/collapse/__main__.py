"""`python -m backdoor_lens.experiments.collapse`: checks the command line (a second), then runs :func:`.study.main`."""

from ..common.cli import FolderLock
from .cli import parser

if __name__ == "__main__":
    checked = parser()
    args = checked.parse_args()  # a bad setting, or a folder in use, ends here before the study's slow imports
    with checked.check(FolderLock(args.out).acquire):
        from .study import main

        main()
