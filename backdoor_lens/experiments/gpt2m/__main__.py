"""`python -m backdoor_lens.experiments.gpt2m`: checks the command line (a second), then runs :func:`.study.main`."""

from .cli import parser

if __name__ == "__main__":
    parser().parse_args()  # a bad setting ends here, before the study's slow imports
    from .study import main

    main()
