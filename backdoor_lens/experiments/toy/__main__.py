"""`python -m backdoor_lens.experiments.toy`: runs :func:`.study.main`."""

from .study import main

if __name__ == "__main__":
    main()
