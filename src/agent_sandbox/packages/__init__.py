"""Third-party packages for a run, without network in the sandbox: the host checks the
requirements against policy (``requirements``, ``policy``), resolves and downloads them as wheels
for the sandbox's platform (``resolver``, ``target``; never source distributions), keeps them by
hash (``cache``), and hands the sandbox a read-only folder of exactly the wheels it needs."""
