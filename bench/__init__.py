"""Benchmarks of jitbot that print their figures: ``python -m bench`` runs them all.

They run only on 127.0.0.1, against servers they start themselves (the bot, the ARM and
Slack stand-ins, a bare Bolt app) and stop when they are done; every load loop is
bounded in time. See docs/benchmarks.md for what each measures and the last figures.
"""
