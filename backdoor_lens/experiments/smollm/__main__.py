"""`python -m backdoor_lens.experiments.smollm`: runs :func:`.study.main`."""

from .study import main

if __name__ == "__main__":
    main()
