"""`python -m idxr_pg` runs the idxr-pg command line."""

from idxr_pg.cli import main

main()
