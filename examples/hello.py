"""A first program for the sandbox: where it runs and what it may do."""

import os
import platform
import sys

print(f"Hello from Python {platform.python_version()} in the sandbox")
print(f"user id {os.getuid()}, working folder {os.getcwd()}, arguments {sys.argv[1:]}")
with open("note.txt", "w") as note:
    note.write("files may be written under /work and /tmp\n")
with open("note.txt") as note:
    print(note.read().strip())
