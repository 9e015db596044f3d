"""`python -m dataisland`: the same as the `dataisland` command."""

from dataisland.cli import main

main()
