"""`python -m vjepa_fast.collect`: the entry point of vjepa_fast.jobs.collect (see --help)."""
from vjepa_fast.jobs.collect import main

if __name__ == "__main__":
    main()
