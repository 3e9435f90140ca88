"""For running the portal on one machine: the launcher behind ``make run``, a private Redis,
and the demo data (numpy and Pillow are needed only here).
"""
