"""`python -m laplace_cli` runs the CLI (also under torchrun)."""

from laplace_cli.cli.app import main

if __name__ == "__main__":
    main()
