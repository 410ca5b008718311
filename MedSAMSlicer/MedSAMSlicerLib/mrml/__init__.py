"""MRML bridge: volume geometry (IJK <-> RAS with parent transforms), markups -> prompts, segment writing with undo, image I/O, the headless scene."""
