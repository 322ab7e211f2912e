"""`python -m backdoor_lens.experiments.collapse`: runs :func:`.study.main`."""

from .study import main

if __name__ == "__main__":
    main()
