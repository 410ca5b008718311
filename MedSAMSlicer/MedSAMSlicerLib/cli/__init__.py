"""The `medsam-slicer` command line (main.py parses, commands.py and demo.py run) on a headless scene."""
