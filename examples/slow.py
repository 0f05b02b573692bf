"""A program that outlives its time limit: `agent-sandbox run --timeout 1 examples/slow.py`."""

import time

print("working", flush=True)
with open("partial.csv", "w") as partial:
    partial.write("step,value\n1,42\n")
time.sleep(60)
print("never printed")
