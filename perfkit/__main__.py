from perfkit import lifeline

if lifeline.is_torchrun_rank():  # before any heavy import: a rank must not outlive torchrun's agent
    lifeline.die_with_parent()

from perfkit.cli import main  # noqa: E402

raise SystemExit(main())
