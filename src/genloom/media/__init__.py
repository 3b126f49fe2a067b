"""Local media work: the vision stage and the PyAV renderer."""
