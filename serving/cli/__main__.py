"""`python -m serving.cli` runs the `sensorcast` command (used by tests and supervisors without the script)."""

from serving.cli import main

main()
