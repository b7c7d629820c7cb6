"""`python -m stoker <command>`; see `python -m stoker --help`."""

from stoker._cli import app

if __name__ == "__main__":
    app(prog_name="stoker")
